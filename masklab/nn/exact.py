"""Operations whose CPU results depend neither on the thread count nor on how many masks are stacked.

A mask must come out the same, bit for bit, whether it trains alone or beside K - 1 others, in one
process or in one shard of many, on 1 thread or 16. Three kinds of operation break that on a CPU:

- Matrix products. MKL splits some products' reductions across threads, and its Conditional Numerical
  Reproducibility in strict mode (`MKL_CBWR=AUTO,STRICT`, which `import masklab` sets before MKL starts,
  see `reproducible_blas`) does not prevent it for every shape: with MKL 2024.2 in torch 2.13, 101 of 720
  (M, K, N) products scanned differ between 1 and 2 threads (a 10 x 64 x 16 weight gradient among them,
  which made dense MLPs thread-dependent), and a batched product of 2 or 3 matrices of 10 x 128 x 100
  (lenet-300-100's last weight gradient) differs between 1 and 8 threads. So training runs MKL on one
  thread per calling thread (`blas_one_thread`, MKL's thread-local setting): a product's bits are then
  those of one thread, whatever torch's thread count; strict CNR still pins the code path (alignment,
  CPU dispatch). torch's own parallel loops and numba's kernels (parallel over masks) keep the thread
  count the trainer measures (`masklab.train.plan`).
  The stacked layers give every mask its own product of the same shape as a lone mask's (batched, never
  one product whose columns span several masks), so a mask's numbers do not depend on its neighbours.
- Convolutions. oneDNN splits the weight gradient's reduction over the batch across threads; the
  forward pass and the input gradient split only their outputs. `conv2d` runs the weight gradient on one
  thread (the rest stays parallel): about 1.3x the cost of a Conv-4 step on 2 cores.
- Long sums (Biprop's gain). torch splits a sum across threads; `masked_abs_sum` adds in a fixed order.

Own code because no library switch gives it: `torch.use_deterministic_algorithms` makes repeated runs at one
thread count agree, not runs at different thread counts (a Linear's output changes with `torch.set_num_threads`,
pytorch issue 88718; the weight gradient above, measured). tests/train/test_same_bits.py pins the result.

This holds within one machine and one torch build: other CPUs take other MKL code paths (AVX2 vs
AVX-512), and CUDA kernels choose algorithms by shape, so a GPU run is reproducible only as far as
cuDNN/cuBLAS are.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from masklab.nn.device_path import cpu_path
from masklab.nn.select import match_torch_threads, numba

T = TypeVar("T")
R = TypeVar("R")
_STRICT = 0x10000  # MKL_CBWR_STRICT
_AUTO = 0x2  # MKL_CBWR_AUTO
_state: dict = {}


def _mkl():
    """MKL's CNR get/set entry points inside torch's CPU library, or None (no MKL in this torch)."""
    if "mkl" not in _state:
        _state["mkl"] = None
        path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        try:
            lib = ctypes.CDLL(path)
            get, put = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
        except (OSError, AttributeError):
            return None
        get.restype = put.restype = ctypes.c_int
        get.argtypes = put.argtypes = [ctypes.c_int]
        _state["mkl"] = (get, put)
    return _state["mkl"]


def reproducible_blas() -> str:
    """Make MKL's matrix products independent of the thread count (strict CNR mode) and say how it stands:
    "mkl-strict", "no-mkl" (torch without MKL: thread independence is not guaranteed), or "mkl-free"
    (MKL ran before masklab could set the mode, e.g. torch was used before `import masklab` in a
    notebook with MKL_CBWR unset: results may depend on the thread count; a warning says so once)."""
    funcs = _mkl()
    if funcs is None:
        return "no-mkl"
    get, put = funcs
    if get(-1) & _STRICT or put(_AUTO | _STRICT) == 0:
        return "mkl-strict"
    if not _state.get("warned"):
        _state["warned"] = True
        warnings.warn("MKL ran matrix products before masklab could make them thread-independent, so masks "
                      "trained in this process may depend on the thread count; import masklab before using "
                      "torch, or set MKL_CBWR=AUTO,STRICT in the environment", RuntimeWarning, stacklevel=2)
    return "mkl-free"


def _mkl_local():
    """MKL's `MKL_Set_Num_Threads_Local` inside torch's CPU library, or None."""
    if "local" not in _state:
        _state["local"] = None
        path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        try:
            func = ctypes.CDLL(path).MKL_Set_Num_Threads_Local
        except (OSError, AttributeError):
            return None
        func.restype = ctypes.c_int
        func.argtypes = [ctypes.c_int]
        _state["local"] = func
    return _state["local"]


class _Depth(threading.local):
    depth = 0  # how many blas_one_thread blocks the calling thread is in


_local = _Depth()


@contextmanager
def blas_one_thread():
    """Run the block's MKL products on one thread (in the calling thread only; torch's own parallel loops
    keep their thread count): their bits then do not depend on the thread count (see the module docstring).
    torch.set_num_threads resets MKL's thread-local count, so code inside the block changes torch's thread
    count through `set_threads`."""
    local = _mkl_local()
    previous = local(1) if local is not None else 0
    _local.depth += 1
    try:
        yield
    finally:
        _local.depth -= 1
        if local is not None:
            local(previous)  # 0: back to the global setting


def set_threads(threads: int) -> None:
    """torch.set_num_threads(threads), keeping MKL on one thread inside `blas_one_thread` (torch's call sets
    MKL's thread-local count to `threads`: a 2-thread epoch between 1-thread ones made dense MLPs differ)."""
    torch.set_num_threads(threads)
    local = _mkl_local()
    if local is not None and _local.depth:
        local(1)


# Products of at least this many multiply-accumulates are split over threads by `per_mask_bmm`; below it,
# handing work to a thread (~20 us) costs more than it saves (lenet-300-100's 100 x 10 layer: 1e6 at K = 8).
SPLIT_MACS = 4_000_000
_pool_lock = threading.Lock()
# A forked child has the pool object but not its threads: it makes its own.
os.register_at_fork(after_in_child=lambda: _state.pop("pool", None))


def _blas_pool(threads: int):
    """The threads `per_mask_bmm` hands masks to (a `ThreadPoolExecutor`, grown to `threads` - 1 workers)."""
    from concurrent.futures import ThreadPoolExecutor

    with _pool_lock:
        pool, workers = _state.get("pool", (None, 0))
        if workers < threads - 1:
            if pool is not None:
                pool.shutdown(wait=False)  # its idle threads end; the new pool has more
            pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="masklab-bmm")
            _state["pool"] = (pool, threads - 1)
        return pool


def _bmm_one_thread(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    local = _mkl_local()
    if local is not None:
        local(1)  # this worker's MKL on one thread, as in the caller's `blas_one_thread`
    with torch.no_grad():
        torch.bmm(a, b, out=out)


def per_mask_bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`torch.bmm(a, b)` (one product per mask along dim 0) with the masks spread over torch's thread count,
    each product on one thread: the same bits as `torch.bmm` inside `blas_one_thread`, faster on several
    cores (in a K = 8 lenet-300-100 training step on 2 cores, its products 21.9 -> 14.0 ms).

    Inside `blas_one_thread` MKL runs every product on one thread (its threaded products are not
    thread-count independent), so a stack of K masks used one core for its matrix products. Mask k's product
    is the same one-thread MKL call whichever thread makes it, so giving each thread a contiguous block of
    masks changes no bit (tests/nn/test_exact.py). Measured on 2 cores, lenet-300-100's 784 x 300 layer,
    K = 8, batch 128, alone: 8.5 ms in one thread, 4.5 ms split (1.87x; 2.01x with a loop of single products).
    The split runs only inside `blas_one_thread`, on CPU tensors, without autocast (its state is the caller
    thread's), with torch on more than one thread (the trainer's measured choice: one thread on a busy
    machine) and a product of at least `SPLIT_MACS`; otherwise this is `torch.bmm`. Gradients are not
    tracked (the callers are autograd Functions' forward and backward, and evaluation)."""
    K, rows, inner = a.shape
    cols = b.shape[2]
    parts = min(K, torch.get_num_threads())
    if (parts < 2 or not _local.depth or a.device.type != "cpu" or K * rows * inner * cols < SPLIT_MACS
            or torch.is_autocast_enabled("cpu")):
        return torch.bmm(a, b, out=out) if out is not None else torch.bmm(a, b)
    if out is None:
        out = torch.empty((K, rows, cols), dtype=torch.result_type(a, b), device=a.device)

    def in_caller(s: int, e: int) -> None:
        with torch.no_grad():
            torch.bmm(a[s:e], b[s:e], out=out[s:e])

    _blocks_on_threads(K, parts, in_caller, lambda s, e: _bmm_one_thread(a[s:e], b[s:e], out[s:e]))
    return out


def _blocks_on_threads(n: int, parts: int, in_caller: Callable[[int, int], R],
                       in_worker: Callable[[int, int], R]) -> list[R]:
    """range(n) in `parts` contiguous blocks [s, e): the first run by the caller (`in_caller(s, e)`), the
    others by the pool's workers (`in_worker(s, e)`), at the same time; every block is waited for, also when
    one fails. The blocks' results in order."""
    bounds = [n * i // parts for i in range(parts + 1)]
    pool = _blas_pool(parts)
    futures = [pool.submit(in_worker, s, e) for s, e in zip(bounds[1:-1], bounds[2:])]
    try:
        first = in_caller(0, bounds[1])
    finally:
        rest = [future.result() for future in futures]
    return [first, *rest]


def _run_one_thread(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(item) for item in items] in a pool worker, with torch and MKL on one thread there."""
    local = _mkl_local()
    if local is not None:
        local(1)
    torch.set_num_threads(1)  # this thread's OpenMP count (the caller has set the global one to 1 already)
    _local.depth += 1
    try:
        return [fn(item) for item in items]
    finally:
        _local.depth -= 1


def map_one_thread(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[fn(item) for item in items]` with the items shared out among torch's thread count, each call on one
    thread (torch, MKL and numba), in contiguous blocks; results in item order.

    For independent pieces of work whose numbers must not depend on the thread count (the trainer's final
    evaluation of each of a stack's masks): inside `blas_one_thread` a call's products run on one thread
    anyway, so one call per thread is the same arithmetic as a loop, on every core (measured: the final
    evaluation of 8 lenet-300-100 masks, 1.57 -> 0.8 s on 2 cores). `fn` must not touch what another call
    writes. Outside `blas_one_thread`, on one thread or for one item, this is the loop.

    Examples
    --------
    >>> map_one_thread(lambda v: v * v, [1, 2, 3])
    [1, 4, 9]
    """
    items = list(items)
    parts = min(len(items), torch.get_num_threads())
    if parts < 2 or not _local.depth:
        return [fn(item) for item in items]
    old = torch.get_num_threads()
    set_threads(1)  # the caller's share on one thread too
    try:
        blocks = _blocks_on_threads(len(items), parts, lambda s, e: [fn(item) for item in items[s:e]],
                                    lambda s, e: _run_one_thread(fn, items[s:e]))
    finally:
        set_threads(old)
    return [value for block in blocks for value in block]


@contextmanager
def one_thread():
    """Run the block on one torch (OpenMP) thread."""
    old = torch.get_num_threads()
    if old > 1:
        set_threads(1)
    try:
        yield
    finally:
        if old > 1:
            set_threads(old)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, groups)
        return F.conv2d(x, weight, None, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.conv
        args = (grad, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(*args, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            with one_thread():  # its batch reduction must not be split across threads
                grad_w = torch.ops.aten.convolution_backward(*args, [False, True, False])[1]
        return grad_x, grad_w, None, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0,
           groups: int = 1) -> torch.Tensor:
    """`F.conv2d` without bias whose gradients on CPU do not depend on the thread count (see the module
    docstring); on the device path, `F.conv2d` itself."""
    if not cpu_path(x) or not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return F.conv2d(x, weight, None, stride, padding, 1, groups)
    return _Conv2d.apply(x, weight, stride, padding, groups)


if numba is not None:
    from numba import njit, prange

    LANES = 8

    @njit(cache=True, nogil=True)
    def _masked_abs_sum_row(weight, mask):
        # sum(|w| * m) in float64 with LANES accumulators in a fixed order: the same bits on any machine
        # thread count or vector width (the lanes are explicit, so vectorising keeps the order).
        acc = np.zeros(LANES, dtype=np.float64)
        n = weight.size
        full = n - n % LANES
        for i in range(0, full, LANES):
            for j in range(LANES):
                acc[j] += abs(np.float64(weight[i + j])) * np.float64(mask[i + j])
        for i in range(full, n):
            acc[0] += abs(np.float64(weight[i])) * np.float64(mask[i])
        total = 0.0
        for j in range(LANES):
            total += acc[j]
        return total

    @njit(cache=True, parallel=True)
    def _masked_abs_sum_parallel(weight, mask, out):
        for r in prange(mask.shape[0]):
            out[r] = _masked_abs_sum_row(weight[0] if weight.shape[0] == 1 else weight[r], mask[r])

    @njit(cache=True, nogil=True)
    def _masked_abs_sum_serial(weight, mask, out):
        for r in range(mask.shape[0]):
            out[r] = _masked_abs_sum_row(weight[0] if weight.shape[0] == 1 else weight[r], mask[r])


def masked_abs_sum(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row of `mask` (K, *shape), `sum(|weight| * mask)` as float64 (K,), added in a fixed order on CPU.

    `weight` is shared (*shape) or per row (K, *shape); `mask` is 0/1 or real-valued (soft masks).
    """
    K = mask.shape[0]
    if numba is None or not cpu_path(mask):  # the device path: torch's reduction, on the device
        w = weight.expand_as(mask) if weight.dim() < mask.dim() else weight
        return (w.detach().abs().double() * mask.detach().double()).reshape(K, -1).sum(1)
    w_rows = 1 if weight.dim() < mask.dim() else K
    w = weight.detach().reshape(w_rows, -1)
    m = mask.detach().reshape(K, -1)
    if m.dtype == torch.bool:
        m = m.view(torch.uint8)
    out = np.empty(K, dtype=np.float64)
    kernel = _masked_abs_sum_parallel if match_torch_threads() else _masked_abs_sum_serial
    kernel(w.contiguous().numpy(), m.contiguous().numpy(), out)
    return torch.from_numpy(out)


def biprop_alpha(weight: torch.Tensor, mask: torch.Tensor, count: float | torch.Tensor | None = None) -> torch.Tensor:
    """Biprop's gain per row of `mask` (K, *shape): `sum(|W| * m) / count` as float32 (K,), with `count`
    the number kept (n_keep) or, when None, `sum(m)` (a soft mask on an interpolation path). A tensor on
    the mask's device, computed there: the device path never copies it to the host."""
    total = masked_abs_sum(weight, mask)
    if count is None:
        rows = mask.detach().reshape(mask.shape[0], -1)
        if cpu_path(mask):  # numpy's pairwise sum: a fixed order
            count = torch.from_numpy(rows.double().numpy().sum(1))
        else:
            count = rows.double().sum(1)
        count = count.clamp_min(1e-12)
    return (total / count).float().to(mask.device)


# ---- BatchNorm ------------------------------------------------------------------------------------------
# torch's CPU BatchNorm reduces differently by channel count (its backward changes with C) and, for 1 x 1
# feature maps, by thread count. Here each channel's sums run over that channel alone, in a fixed order
# (8 float64 lanes per contiguous segment of a sample), so a channel's numbers do not depend on how many
# channels (masks) share the tensor or how many threads there are.
if numba is not None:

    @njit(cache=True, nogil=True)
    def _channel_sum(x, c, mean, scale, other, square):
        # sum over samples n and positions s of  f = (x[n,c,s] - mean) * scale, times other[n,c,s] if given,
        # squared if `square`; float64 lanes in a fixed order
        acc = np.zeros(LANES, dtype=np.float64)
        N, S = x.shape[0], x.shape[2]
        full = S - S % LANES
        for n in range(N):
            for s0 in range(0, full, LANES):
                for j in range(LANES):
                    v = (np.float64(x[n, c, s0 + j]) - mean) * scale
                    if square:
                        v = v * v
                    if other.shape[0] > 0:
                        v = v * np.float64(other[n, c, s0 + j])
                    acc[j] += v
            for s in range(full, S):
                v = (np.float64(x[n, c, s]) - mean) * scale
                if square:
                    v = v * v
                if other.shape[0] > 0:
                    v = v * np.float64(other[n, c, s])
                acc[0] += v
        total = 0.0
        for j in range(LANES):
            total += acc[j]
        return total

    @njit(cache=True, nogil=True)
    def _bn_forward_channel(x, c, eps, out, stats):
        N, S = x.shape[0], x.shape[2]
        m = N * S
        none = np.empty((0, 0, 0), dtype=np.float32)
        mean = _channel_sum(x, c, 0.0, 1.0, none, False) / m
        var = _channel_sum(x, c, mean, 1.0, none, True) / m
        invstd = 1.0 / np.sqrt(var + eps)
        for n in range(N):
            for s in range(S):
                out[n, c, s] = np.float32((np.float64(x[n, c, s]) - mean) * invstd)
        stats[c, 0], stats[c, 1], stats[c, 2] = mean, var, invstd

    @njit(cache=True, parallel=True)
    def _bn_forward_parallel(x, eps, out, stats):
        for c in prange(x.shape[1]):
            _bn_forward_channel(x, c, eps, out, stats)

    @njit(cache=True, nogil=True)
    def _bn_forward_serial(x, eps, out, stats):
        for c in range(x.shape[1]):
            _bn_forward_channel(x, c, eps, out, stats)

    @njit(cache=True, nogil=True)
    def _bn_backward_channel(x, grad, c, stats, out):
        # d x = invstd * (g - mean(g) - xhat * mean(g * xhat)),  xhat = (x - mean) * invstd
        N, S = x.shape[0], x.shape[2]
        m = N * S
        mean, invstd = stats[c, 0], stats[c, 2]
        none = np.empty((0, 0, 0), dtype=np.float32)
        mean_g = _channel_sum(grad, c, 0.0, 1.0, none, False) / m
        mean_gx = _channel_sum(x, c, mean, invstd, grad, False) / m
        for n in range(N):
            for s in range(S):
                xhat = (np.float64(x[n, c, s]) - mean) * invstd
                out[n, c, s] = np.float32(invstd * (np.float64(grad[n, c, s]) - mean_g - xhat * mean_gx))

    @njit(cache=True, parallel=True)
    def _bn_backward_parallel(x, grad, stats, out):
        for c in prange(x.shape[1]):
            _bn_backward_channel(x, grad, c, stats, out)

    @njit(cache=True, nogil=True)
    def _bn_backward_serial(x, grad, stats, out):
        for c in range(x.shape[1]):
            _bn_backward_channel(x, grad, c, stats, out)


class _BatchNormTrain(torch.autograd.Function):
    """Non-affine batch normalisation with batch statistics (CPU float32); returns the output and the
    per-channel (mean, biased var, invstd) as float64."""

    @staticmethod
    def forward(ctx, x, eps):
        x3 = x.detach().contiguous().view(x.shape[0], x.shape[1], -1)
        out = torch.empty_like(x3)
        stats = np.empty((x.shape[1], 3), dtype=np.float64)
        kernel = _bn_forward_parallel if match_torch_threads() else _bn_forward_serial
        kernel(x3.numpy(), float(eps), out.numpy(), stats)
        stats = torch.from_numpy(stats)
        ctx.save_for_backward(x3, stats)
        ctx.mark_non_differentiable(stats)
        return out.view_as(x), stats

    @staticmethod
    def backward(ctx, grad, _):
        x3, stats = ctx.saved_tensors
        g3 = grad.contiguous().view_as(x3)
        out = torch.empty_like(x3)
        kernel = _bn_backward_parallel if match_torch_threads() else _bn_backward_serial
        kernel(x3.numpy(), g3.numpy(), stats.numpy(), out.numpy())
        return out.view(grad.shape), None


class BatchNorm2d(torch.nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training-mode forward and backward on CPU do not depend on the number of
    channels or threads (non-affine only: the models have no trainable BatchNorm parameters). Running
    statistics follow torch's rule (unbiased variance; cumulative average when momentum is None); eval
    mode is torch's own (elementwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        usable = (numba is not None and cpu_path(x) and x.dtype == torch.float32 and not self.affine
                  and (self.training or not self.track_running_stats))
        if not usable:
            return super().forward(x)
        out, stats = _BatchNormTrain.apply(x, self.eps)
        tracked, mean, var = self.num_batches_tracked, self.running_mean, self.running_var
        if self.training and tracked is not None and mean is not None and var is not None:
            with torch.no_grad():
                tracked.add_(1)
                factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
                m = x.numel() // x.shape[1]
                unbiased = stats[:, 1] * (m / max(m - 1, 1))
                mean.mul_(1 - factor).add_((factor * stats[:, 0]).float())
                var.mul_(1 - factor).add_((factor * unbiased).float())
        return out
