"""Which code a tensor takes: the CPU path or the device path.

- The CPU path (tensors on the CPU): numba's radix selection, one convolution per mask with a one-thread
  weight gradient, fixed-order sums for Biprop's gain and BatchNorm, the fused score optimiser. Exact: a
  mask's bits depend neither on the thread count nor on the stack (see `masklab.nn.exact`).
- The device path (tensors on CUDA): torch operations only, chosen so that a training step never waits for
  the host (no `.item()`, `.tolist()`, `.cpu()` or data-dependent shapes inside a step): the top-k threshold
  from `topk(k, sorted=False).values.amin`, one grouped convolution for K masks, torch's BatchNorm, the
  Biprop gain as a device tensor, torch.optim.SGD.

`emulate_device()` makes CPU tensors take the device path. A machine without a GPU can then run every
CUDA-only branch on its own tensors and compare it with the CPU path (tests/nn/test_device_path.py);
it is for tests and benchmarks, and changes no result of the CPU path outside the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_state = {"emulate": False}


def cpu_path(where: torch.Tensor | torch.device | str) -> bool:
    """Whether a tensor (or a device) takes the CPU path: on the CPU and not inside `emulate_device()`."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return device.type == "cpu" and not _state["emulate"]


@contextmanager
def emulate_device() -> Iterator[None]:
    """Within the block, CPU tensors take the device path (what CUDA runs), for tests without a GPU.

    Examples
    --------
    >>> x = torch.zeros(3)
    >>> cpu_path(x)
    True
    >>> with emulate_device():
    ...     cpu_path(x)
    False
    """
    before = _state["emulate"]
    _state["emulate"] = True
    try:
        yield
    finally:
        _state["emulate"] = before
