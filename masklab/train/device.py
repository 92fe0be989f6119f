"""Where a step runs: the device, and the thread count of a CPU step.

Neither changes a mask's bits on CPU (see `masklab.nn.exact`): the thread count is chosen for speed only,
by measuring while training (`masklab.train.plan`).
"""

from __future__ import annotations

import torch

from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model


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
