"""Where a step runs: the device, and the thread count of a CPU step.

Neither changes a mask's bits on CPU (see `masklab.nn.exact`): the thread count is chosen for speed only.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model

# Below this many multiply-accumulates per step a CPU step runs faster on one thread: the work is too
# small to split, and OpenMP workers that spin-wait make a busy 2-core machine up to 40x slower.
SMALL_STEP_MACS = 2e8


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without one is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def macs_per_sample(config: RunConfig, dataset) -> int:
    """Multiply-accumulates of one sample's forward pass through the run's prunable layers."""
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, "dense")
    total = 0

    def count(layer, inputs, output):
        nonlocal total
        positions = output.shape[-2] * output.shape[-1] if output.dim() == 4 else 1
        total += layer.weight.numel() * positions

    hooks = [layer.register_forward_hook(count) for _, layer in masked_layers(model)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *dataset.input_shape))
    for hook in hooks:
        hook.remove()
    return int(total)


@contextmanager
def step_threads(config: RunConfig, dataset, device: torch.device, masks: int = 1):
    """Run the block with one torch thread when a CPU step of `masks` stacked masks is small (see
    SMALL_STEP_MACS)."""
    old = torch.get_num_threads()
    small = device.type == "cpu" and old > 1 and \
        macs_per_sample(config, dataset) * config.batch_size * masks < SMALL_STEP_MACS
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)
