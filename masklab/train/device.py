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

# Below this many multiply-accumulates per step a CPU step may run faster on one thread: the work is small to
# split, and OpenMP workers that spin-wait make a busy 2-core machine 2-40x slower. Such steps get their thread
# count measured while they train (`EpochThreads`); larger ones use every thread.
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


class EpochThreads:
    """The thread count of each training epoch of a small CPU step, chosen by measuring: the first epoch
    (which also pays one-time costs) runs on one thread, the second on `most`, the third on one again; from
    then on the faster of the last two measurements, with the other count tried again every `PROBE_EVERY`
    epochs in case the machine's load changed. On an idle 2-core machine the default digits run trains
    1.7x faster on two threads; with one other busy process, two threads were 2-3x slower than one.
    Only speed depends on it: a mask's bits do not depend on the thread count (`masklab.nn.exact`).

    Examples
    --------
    >>> tuner = EpochThreads(2)
    >>> [tuner.threads(epoch) for epoch in range(3)]
    [1, 2, 1]
    >>> tuner.record(1, 2, 0.5); tuner.record(2, 1, 0.8)
    >>> tuner.threads(3), tuner.threads(10)
    (2, 1)
    """

    PROBE_EVERY = 10

    def __init__(self, most: int) -> None:
        self.most = max(1, int(most))
        self.seconds: dict[int, float] = {}
        self.choice = 1

    def threads(self, epoch: int) -> int:
        if self.most == 1 or epoch == 0:
            return 1
        if epoch <= 2:
            return self.most if epoch == 1 else 1
        other = 1 if self.choice == self.most else self.most
        return other if epoch % self.PROBE_EVERY == 0 else self.choice

    def record(self, epoch: int, threads: int, seconds: float) -> None:
        if epoch == 0:  # one-time costs (kernel loads, page faults) would count against one thread
            return
        self.seconds[threads] = seconds
        if len(self.seconds) == 2:
            self.choice = min(self.seconds, key=lambda n: (self.seconds[n], n))


@contextmanager
def step_threads(config: RunConfig, dataset, device: torch.device, masks: int = 1):
    """Run the block with one torch thread when a CPU step of `masks` stacked masks is small (see
    SMALL_STEP_MACS), and yield an `EpochThreads` that measures whether more threads train faster (None for
    steps that use every thread, or off the CPU). The thread count is restored afterwards."""
    old = torch.get_num_threads()
    small = device.type == "cpu" and old > 1 and \
        macs_per_sample(config, dataset) * config.batch_size * masks < SMALL_STEP_MACS
    if small:
        torch.set_num_threads(1)
    try:
        yield EpochThreads(old) if small else None
    finally:
        torch.set_num_threads(old)
