"""Run directories, packed bits and the MaskSet (see store/run.py for the directory layout)."""

from masklab.store.bits import BIT_ORDER, MaskSet
from masklab.store.integrity import verify
from masklab.store.run import Run, list_runs, open_run

__all__ = ["BIT_ORDER", "MaskSet", "Run", "list_runs", "open_run", "verify"]
