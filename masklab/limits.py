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
from masklab.nn.layers import MaskedConv2d, MaskedLinear, masked_layers
from masklab.nn.models import build_model

MAX_WEIGHTS = 2**30  # prunable weights of one network: 4 GiB of float32 weights, 128 MiB per packed mask


# What training allocates beyond the data (bench/bench_memory.py measures it against `training_bytes`): per
# prunable weight, the shared float32 weights once, and per mask trained together its float32 scores, their
# gradient and momentum, the top-k selection (sorted values and int64 indices), the mask and the masked weights
# with their gradient: about 44 bytes per weight measured for edge-popup on MLPs (peaks of mlp widths 8, 16, 24 on
# digits, one epoch: 371, 858 and 1,786 MiB for 4.3, 17.1 and 38.2 M weights: ~190 MiB plus ~44 bytes a weight;
# Biprop at width 16: 1,041 MiB, ~52 bytes a weight: its gains' gradients pass through whole-layer temporaries).
# Dense training keeps weights, gradient, momentum and the update's temporaries.
# Recycling (IWR, IteRand) adds its int64 index maps and the rebuilt weights. Activations: every layer's output
# per sample (`activation_values`), saved for backward and its gradient, per sample of a batch and per mask
# trained together. FIXED_BYTES: torch's kernels and thread pools, batches, the checkpoint's
# buffers (measured ~190 MiB beyond the model).
SHARED_BYTES = 4
MASK_BYTES = {"edge-popup": 44, "biprop": 52, "dense": 28}
RECYCLE_BYTES = 24
ACTIVATION_BYTES = 16
FIXED_BYTES = 256 << 20


def memory_bytes() -> int | None:
    """The memory this process may still allocate: the system's available memory (MemAvailable: free plus
    what the kernel can reclaim), or what is left below the cgroup's limit where that is lower; None if
    unknown. (Not the physical total: on a shared machine other processes hold part of it.)"""
    have = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        have = None
    if have is None:
        try:
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            have = None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 2**60:
            left = max(0, int(limit) - int(usage))
            have = left if have is None else min(have, left)
        break
    return have


def _meta_model(config: RunConfig, input_shape: tuple[int, ...], n_classes: int, what: str):
    """The config's network on torch's meta device (shapes only, no memory); a size torch cannot even
    describe (`--width 1e9` overflows its storage size) is a UserError."""
    try:
        with torch.device("meta"):
            return build_model(config.model, tuple(input_shape), n_classes, config.width, config.method,
                               config.sparsity)
    except (RuntimeError, OverflowError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{what} is too large to build ({str(e).splitlines()[0][:120]}); use a smaller --width or "
                        "smaller inputs") from None


def _together(config: RunConfig) -> int:
    """Masks trained at once: `stack`, at most `masks`; 1 for auto (0) and dense."""
    return 1 if config.method == "dense" or config.stack == 0 else min(config.stack, config.masks)


def activation_values(model, input_shape: tuple[int, ...]) -> int:
    """The values every leaf module outputs for one sample, counted by a forward pass over a batch of no
    samples: the layers with weights (on the meta device, never allocated) give only their output's shape,
    every other leaf (ReLU, pooling, Flatten, an identity shortcut) and the models' own code run for real
    on the empty batch, which costs nothing. A forward pass on the meta device counts the same, but torch's
    first meta operation imports its compiler stack: 2.4 s of every `masklab generate` (measured).

    Examples
    --------
    >>> with torch.device("meta"):
    ...     model = build_model("lenet-300-100", (1, 28, 28), 10)
    >>> activation_values(model, (1, 28, 28))  # 784 (flatten) + 300 + 300 + 100 + 100 + 10
    1594
    """
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor) and output.dim() > 0:
            total += output.shape[1:].numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    unknown = [type(m).__name__ for m in leaves if not isinstance(m, _SHAPED)
               and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))]
    if unknown:
        raise TypeError(f"activation_values knows no output shape for the layers {sorted(set(unknown))}")
    hooks = [m.register_forward_hook(count) for m in leaves]
    shaped = [m for m in leaves if isinstance(m, _SHAPED)]
    model.eval()
    try:
        for m in shaped:
            _shape_only(m)
        with torch.no_grad():
            model(torch.empty(0, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        for m in shaped:
            m.__dict__.pop("forward", None)  # the class's forward again
    return total


_SHAPED = (MaskedLinear, MaskedConv2d, torch.nn.modules.batchnorm._BatchNorm)


def _shape_only(module) -> None:
    """Give a layer with weights or statistics (`_SHAPED`) a forward that makes only its output's shape (an
    instance attribute over the class's forward, removed again by `activation_values`)."""
    if isinstance(module, MaskedLinear):
        def forward(x: torch.Tensor) -> torch.Tensor:
            return x.new_empty(*x.shape[:-1], module.weight.shape[0])
    elif isinstance(module, MaskedConv2d):
        def forward(x: torch.Tensor) -> torch.Tensor:
            out_channels, _, kernel, _ = module.weight.shape
            h, w = ((n + 2 * module.padding - kernel) // module.stride + 1 for n in x.shape[2:])
            return x.new_empty(x.shape[0], out_channels, h, w)
    else:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return x.new_empty(x.shape)
    module.__dict__["forward"] = forward


def training_bytes(config: RunConfig, input_shape: tuple[int, ...], n_classes: int) -> int:
    """What training `config` on samples of `input_shape` allocates at its peak beyond the loaded data, in
    bytes: FIXED_BYTES, the shared weights (SHARED_BYTES per prunable weight), per mask trained together
    (`stack`) MASK_BYTES of its method per weight (+ RECYCLE_BYTES when recycling) and ACTIVATION_BYTES per
    activation value of a batch. Measured against real peaks by bench/bench_memory.py and
    tests/test_limits.py (the estimate covers the measured peak, by at most 2x + 64 MiB)."""
    what = f"model {config.model} (width {config.width:g})"
    model = _meta_model(config, input_shape, n_classes, what)
    weights = sum(m.weight.numel() for _, m in masked_layers(model))
    per_mask = MASK_BYTES[config.method] + (RECYCLE_BYTES if config.recycle != "none" else 0)
    activations = activation_values(model, tuple(input_shape)) * config.batch_size
    together = _together(config)
    return FIXED_BYTES + SHARED_BYTES * weights + together * (per_mask * weights + ACTIVATION_BYTES * activations)


def check_fits(config: RunConfig, input_shape: tuple[int, ...], n_classes: int) -> int:
    """Refuse a model too large to train, before any of it is allocated (and before a run directory exists);
    returns its prunable weights.

    The model is built on torch's meta device (shapes only, no memory), so the count is exact and cheap.
    Refused: more than MAX_WEIGHTS prunable weights, a size torch cannot describe, or more than the memory
    this process may still allocate (`memory_bytes`) for what training allocates (`training_bytes`).
    """
    what = (f"model {config.model} (width {config.width:g}) on samples of shape "
            f"{'x'.join(map(str, input_shape))}")
    model = _meta_model(config, input_shape, n_classes, what)
    weights = sum(m.weight.numel() for _, m in masked_layers(model))
    what = f"{what} has {weights:,} prunable weights"
    if weights > MAX_WEIGHTS:
        raise UserError(f"{what}, more than the limit of {MAX_WEIGHTS:,}; use a smaller --width or smaller inputs")
    have = memory_bytes()
    if have is None:
        return weights
    need = training_bytes(config, input_shape, n_classes)
    if need > have:
        raise UserError(f"{what}: training {_together(config)} mask(s) at once needs about {need / 2**30:,.1f} GiB "
                        f"but {have / 2**30:,.1f} GiB of memory is available; use a smaller --stack, --width, "
                        "--batch-size or inputs")
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
