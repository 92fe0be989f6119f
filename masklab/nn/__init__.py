"""Mask selection, subnet layers, initialisation and models."""

from masklab.keep import n_keep
from masklab.nn.init import init_model, init_scores, init_weight
from masklab.nn.layers import MaskedConv2d, MaskedLayer, MaskedLinear, masked_layers
from masklab.nn.models import MODELS, build_model
from masklab.nn.select import topk_mask

__all__ = ["MODELS", "MaskedConv2d", "MaskedLayer", "MaskedLinear", "build_model", "init_model", "init_scores",
           "init_weight", "masked_layers", "n_keep", "topk_mask"]
