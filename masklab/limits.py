"""Memory: what this process may use, and whether a model (`check_fits`) or a synthetic dataset
(`check_synthetic_fits`) fits in it, checked before any of it is allocated. Refusing up front beats a
MemoryError after the run directory exists. (The sizes a config may ask for at all: masklab/config.py.)"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from masklab.config import MAX_INPUT_ELEMENTS, RunConfig
from masklab.errors import UserError
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model

MAX_WEIGHTS = 2**30  # prunable weights of one network: 4 GiB of float32 weights, 128 MiB per packed mask


def memory_bytes() -> int | None:
    """The memory this process may use: physical memory, or the cgroup's limit where that is lower; None if
    unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
        break
    return total


def check_fits(config: RunConfig, input_shape: tuple[int, ...], n_classes: int) -> int:
    """Refuse a model too large to train, before any of it is allocated; returns its prunable weights.

    The model is built on torch's meta device (shapes only, no memory), so the count is exact and cheap.
    Refused: more than MAX_WEIGHTS prunable weights, or more memory than this machine has for the least a
    training step needs: the shared float32 weights once plus, per mask trained together (`stack`, at most
    `masks`; 1 for auto and dense), its scores, their gradients and momentum.
    """
    with torch.device("meta"):
        model = build_model(config.model, tuple(input_shape), n_classes, config.width, config.method,
                            config.sparsity)
    weights = sum(m.weight.numel() for _, m in masked_layers(model))
    what = (f"model {config.model} (width {config.width:g}) on samples of shape "
            f"{'x'.join(map(str, input_shape))} has {weights:,} prunable weights")
    if weights > MAX_WEIGHTS:
        raise UserError(f"{what}, more than the limit of {MAX_WEIGHTS:,}; use a smaller --width or smaller inputs")
    together = 1 if config.method == "dense" or config.stack == 0 else min(config.stack, config.masks)
    need = 4 * weights * (1 + 3 * together)
    have = memory_bytes()
    if have is not None and need > have:
        raise UserError(f"{what}: training {together} mask(s) at once needs at least {need / 2**30:,.1f} GiB "
                        f"but this machine has {have / 2**30:,.1f} GiB; use a smaller --stack, --width or inputs")
    return weights


def check_synthetic_fits(shape: tuple[int, ...], n_samples: int, n_classes: int) -> None:
    """Refuse synthetic data too large to make, before it is allocated: more than MAX_INPUT_ELEMENTS values
    per sample, or more memory than this machine has for `n_samples` samples (and their copies into the
    splits) and the teacher's weights."""
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise UserError(f"synthetic: input_shape {'x'.join(map(str, shape))} has {elements:,} values per sample, "
                        f"more than the limit of {MAX_INPUT_ELEMENTS:,} (e.g. 3x512x512 fits)")
    need, have = 4 * elements * (2 * n_samples + n_classes), memory_bytes()
    if have is not None and need > have:
        raise UserError(f"synthetic: {n_samples:,} samples of shape {'x'.join(map(str, shape))} need "
                        f"{need / 2**30:,.1f} GiB but this machine has {have / 2**30:,.1f} GiB; use a smaller "
                        "--input-shape")
