"""Run directories, packed bits and the MaskSet."""

from masklab.store.bits import BIT_ORDER, MaskSet

__all__ = ["BIT_ORDER", "MaskSet"]
