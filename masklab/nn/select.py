"""Top-k mask selection: keep the `n_keep` largest |values| of a layer, exactly, without a sort.

On CPU a numba radix select does it in three linear passes (serial): for non-negative float32, the IEEE bit
pattern orders like the value, so |s| is `bits & 0x7fffffff`; a histogram of the high 16 bits finds the
bin holding the k-th largest, a histogram of the low 16 bits inside that bin finds its exact key T, and a
last pass writes `key > T` plus, if T is tied, the first tied positions in index order. About 6 ms for a
2M-weight layer, against ~40 ms for `torch.kthvalue` and ~270 ms for the sort the reference code uses.
Elsewhere (CUDA, or without numba) `torch.kthvalue` finds the threshold. Both give the same mask: exact
count, ties broken in favour of the lower flat index.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency, but keep a pure torch path
    numba = None



def n_keep(n: int, sparsity: float) -> int:
    """Number of weights kept in a layer of `n` weights: `n - int(sparsity * n)` (REFERENCE.md)."""
    return n - int(sparsity * n)


def topk_mask(values: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """Bool mask (same shape as `values`) of exactly `k` largest entries; lower flat index wins ties.

    With `absolute=True` the entries are ranked by |value| (the scores' selection), without an abs pass.
    """
    flat = values.detach().reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if numba is not None and flat.device.type == "cpu" and flat.dtype == torch.float32 and n >= 4096:
        out = torch.empty(n, dtype=torch.bool)
        _radix_topk(flat.contiguous().numpy().view(np.uint32), k, absolute, out.numpy())
        return out.view(values.shape)
    return _torch_topk(flat.abs() if absolute else flat, k).view(values.shape)


def _torch_topk(flat: torch.Tensor, k: int) -> torch.Tensor:
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values  # k-th largest
    mask = flat >= threshold
    if int(mask.sum()) != k:  # ties at the threshold: everything above it, then the first ties
        mask = flat > threshold
        ties = torch.nonzero(flat == threshold).reshape(-1)[: k - int(mask.sum())]
        mask[ties] = True
    return mask


if numba is not None:

    @njit(cache=True, inline="always")
    def _key(bits: np.uint32, absolute: bool) -> np.uint32:
        # Map float32 bits to an unsigned key that sorts like the value (|value| when absolute).
        if absolute:
            return bits & np.uint32(0x7FFFFFFF)
        if bits & np.uint32(0x80000000):
            return ~bits
        return bits | np.uint32(0x80000000)

    @njit(cache=True)
    def _histogram(bits, absolute, high):
        # Histogram of 16 key bits: the high half, or (high >= 0) the low half of keys whose high half
        # equals `high`. Serial on purpose: it runs between torch ops whose OpenMP workers still spin.
        hist = np.zeros(65536, dtype=np.int64)
        for i in range(bits.size):
            key = _key(bits[i], absolute)
            if high < 0:
                hist[key >> np.uint32(16)] += 1
            elif (key >> np.uint32(16)) == high:
                hist[key & np.uint32(0xFFFF)] += 1
        return hist

    @njit(cache=True)
    def _bin_of_kth(hist, k):
        # The bin (from the top) holding the k-th largest, and how many keys lie in higher bins.
        above = 0
        for b in range(65535, -1, -1):
            if above + hist[b] >= k:
                return b, above
            above += hist[b]
        return 0, above

    @njit(cache=True)
    def _write_mask(bits, absolute, threshold, out):
        for i in range(bits.size):
            out[i] = _key(bits[i], absolute) > threshold

    @njit(cache=True)
    def _add_ties(bits, absolute, threshold, need, out):
        for i in range(bits.size):
            if need == 0:
                return
            if _key(bits[i], absolute) == threshold:
                out[i] = True
                need -= 1

    def _radix_topk(bits: np.ndarray, k: int, absolute: bool, out: np.ndarray) -> None:
        high_hist = _histogram(bits, absolute, -1)
        high, above_high = _bin_of_kth(high_hist, k)
        low_hist = _histogram(bits, absolute, high)
        low, above_low = _bin_of_kth(low_hist, k - above_high)
        threshold = np.uint32((high << 16) | low)
        _write_mask(bits, absolute, threshold, out)
        _add_ties(bits, absolute, threshold, k - above_high - above_low, out)
