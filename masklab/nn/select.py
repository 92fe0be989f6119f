"""Top-k mask selection: keep the `n_keep` largest |values| of a layer, exactly, without a sort.

On CPU a numba radix select does it in three linear passes (serial): for non-negative float32, the IEEE bit
pattern orders like the value, so |s| is `bits & 0x7fffffff`; a histogram of the high 16 bits finds the
bin holding the k-th largest, a histogram of the low 16 bits inside that bin finds its exact key T, and a
last pass writes `key > T` plus, if T is tied, the first tied positions in index order. About 6 ms for a
2M-weight layer, against ~40 ms for `torch.kthvalue` and ~270 ms for the sort the reference code uses.
Elsewhere (the device path, see `masklab.nn.device_path`, or without numba) `topk_rows_device` finds the
threshold with torch operations only, without a host synchronisation. Both give the same mask: exact
count, ties broken in favour of the lower flat index.

`select_rows` is the same selection for K masks at once (one row each, parallel over rows), writing
`W * mask` (or the 0/1 mask, for Biprop) straight into a preallocated (K, n) tensor: the stacked trainer's
hot path (see `masklab.train.score_sgd`).
"""

from __future__ import annotations

import numpy as np
import torch

from masklab.nn.device_path import cpu_path

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency, but keep a pure torch path
    numba = None  # type: ignore[assignment]


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
    if numba is not None and cpu_path(flat) and flat.dtype == torch.float32 and n >= 4096:
        out = torch.empty(n, dtype=torch.bool)
        _radix_topk(flat.contiguous().numpy().view(np.uint32), k, absolute, out.numpy())
        return out.view(values.shape)
    return topk_rows_device((flat.abs() if absolute else flat)[None], k)[0].view(values.shape)


def topk_rows_device(values: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of a (R, n) tensor, the bool mask of its k largest entries (0 < k < n), lower index first
    among ties: the selection `topk_mask` makes, with torch operations only and no host synchronisation
    (what a CUDA step runs; `torch.kthvalue` has no deterministic CUDA kernel, and a tie count read back
    to the host would stall every step).

    The k-th largest value is the least of the k largest (`topk(k, sorted=False).values.amin`); everything
    above it is kept, then of the entries equal to it the first `k - above` in index order (an integer
    running count). Entries compare as numbers, so -0.0 and 0.0 tie (the radix path ranks -0.0 lower when
    not ranking by magnitude; magnitudes, which the scores' selection uses, have no -0.0).

    Examples
    --------
    >>> topk_rows_device(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2)
    tensor([[False,  True,  True, False, False]])
    """
    threshold = values.topk(k, dim=1, sorted=False).values.amin(1, keepdim=True)
    above = values > threshold
    tied = values == threshold
    need = k - above.sum(1, keepdim=True, dtype=torch.int32)
    return above | (tied & (tied.cumsum(1, dtype=torch.int32) <= need))


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

    # ---- K rows at once, writing effective weights (the stacked trainer's hot path) ------------------
    # A row's state between calls: [threshold key of the last selection (-1: none), bracket half-width].
    # Scores move little between steps, so the new threshold almost always lies within a narrow bracket
    # around the old one: one pass then writes every weight above the bracket, collects the few inside
    # it, and an exact sort of those finishes the selection. When the threshold left the bracket, or the
    # bracket held too many, the row falls back to the radix select and the bracket adapts. Either way
    # the result is the exact top-k (ties to the lower index); the state only decides how fast.

    @njit(cache=True, nogil=True)
    def _radix_write(bits, weight, k, biprop, out):
        """Exact top-k by radix select; out = weight (or 1 with biprop) where kept, else 0. Returns the
        threshold key. Loops are branch-free where they touch every weight, so that they vectorise."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        high, above_high = _bin_of_kth(_histogram(bits, True, -1), k)
        low, above_low = _bin_of_kth(_histogram(bits, True, high), k - above_high)
        threshold = np.uint32((high << 16) | low)
        need = k - above_high - above_low  # ties at the threshold to keep, first ones first
        if biprop:
            for i in range(bits.size):
                out[i] = one if (bits[i] & np.uint32(0x7FFFFFFF)) > threshold else zero
        else:
            for i in range(bits.size):
                out[i] = weight[i] if (bits[i] & np.uint32(0x7FFFFFFF)) > threshold else zero
        for i in range(bits.size):
            if need == 0:
                break
            if (bits[i] & np.uint32(0x7FFFFFFF)) == threshold:
                out[i] = one if biprop else weight[i]
                need -= 1
        return np.int64(threshold)

    @njit(cache=True, nogil=True)
    def _bracket_write(bits, weight, k, biprop, out, lo, hi, candidates):
        """Selection when the k-th largest key lies in (lo, hi]: keeps every key > hi, collects the
        keys in (lo, hi] and keeps the best of them. Returns the threshold key, or -1 (nothing usable
        written) when the bracket missed the k-th key, -2 when it held more than `candidates` can take."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        lo = max(lo, np.int64(-1))  # -1: every key is above lo
        hi = min(hi, np.int64(0x7FFFFFFF))
        high = np.uint32(hi)
        above = 0
        for i in range(bits.size):  # vectorised: write and count everything above the bracket
            keep = (bits[i] & np.uint32(0x7FFFFFFF)) > high
            above += np.int64(keep)
            out[i] = (one if biprop else weight[i]) if keep else zero
        m = k - above
        if m <= 0:
            return np.int64(-1)
        # collect the keys inside the bracket: a vectorised count per block, a scan only where it is not 0
        # ((key - lo - 1) < (hi - lo) in uint32 arithmetic is lo < key <= hi, also for lo = -1)
        low = np.uint32(lo & 0xFFFFFFFF)
        width = np.uint32(hi - lo)
        found = 0
        cap = candidates.size
        block = 2048
        for start in range(0, bits.size, block):
            seg = bits[start:min(start + block, bits.size)]
            inside = np.uint32(0)
            for j in range(seg.size):
                inside += ((seg[j] & np.uint32(0x7FFFFFFF)) - low - np.uint32(1)) < width
            if inside == 0:
                continue
            for j in range(seg.size):
                if ((seg[j] & np.uint32(0x7FFFFFFF)) - low - np.uint32(1)) < width:
                    if found < cap:
                        candidates[found] = start + j
                    found += 1
        if found > cap:
            return np.int64(-2)
        if m > found:
            return np.int64(-1)
        keys = np.empty(found, dtype=np.int64)
        for j in range(found):
            keys[j] = -np.int64(bits[candidates[j]] & np.uint32(0x7FFFFFFF))
        order = np.argsort(keys, kind="mergesort")  # stable: equal keys stay in index order
        for j in range(m):
            i = candidates[order[j]]
            out[i] = one if biprop else weight[i]
        return -keys[order[m - 1]]

    @njit(cache=True, nogil=True)
    def _select_row(bits, weight, k, biprop, out, state, candidates):
        """Top-k of |scores| (float32 bits) of one row into `out`: the weight where kept, or 1 with
        `biprop` (the caller applies the gain); `state` is the row's [threshold, half-width]."""
        previous = state[0]
        threshold = np.int64(-1)
        if previous >= 0:
            threshold = _bracket_write(bits, weight, k, biprop, out, previous - state[1], previous + state[1],
                                       candidates)
        crowded = threshold == -2
        if threshold < 0:
            threshold = _radix_write(bits, weight, k, biprop, out)
        if previous >= 0:  # next bracket: 4x how far the threshold moved, narrower if it was crowded
            state[1] = max(np.int64(1), state[1] // 4) if crowded else max(np.int64(16), 4 * abs(threshold - previous))
        state[0] = threshold

    @njit(cache=True, nogil=True)
    def _select_one(scores, weight, k, biprop, out, state, candidates, r):
        w = weight[0] if weight.shape[0] == 1 else weight[r]
        _select_row(scores[r].view(np.uint32), w, k, biprop, out[r], state[r], candidates[r])

    # Parallel over rows, or serial (see `match_torch_threads`); two functions, so that numba's on-disk
    # cache keeps one entry each.
    @njit(cache=True, parallel=True)
    def _select_rows_parallel(scores, weight, k, biprop, out, state, candidates):
        for r in prange(scores.shape[0]):
            _select_one(scores, weight, k, biprop, out, state, candidates, r)

    @njit(cache=True, nogil=True)
    def _select_rows_serial(scores, weight, k, biprop, out, state, candidates):
        for r in range(scores.shape[0]):
            _select_one(scores, weight, k, biprop, out, state, candidates, r)


class SelectState:
    """Per-row memory that speeds up repeated `select_rows` calls on slowly moving scores: the last
    threshold and a bracket width per row, and scratch space for the bracket's candidates."""

    def __init__(self, rows: int, n: int):
        self.rows = np.zeros((rows, 2), dtype=np.int64)
        self.rows[:, 0] = -1  # no threshold yet: the first selection is a radix select
        self.rows[:, 1] = 64  # bracket half-width in float32 ulps; adapts
        self.candidates = np.empty((rows, max(64, n // 256)), dtype=np.int64)


def match_torch_threads() -> bool:
    """Let numba's parallel loops use as many threads as torch does; False when that is one, and then the
    caller must run the serial build of its kernel: with one thread the parallel build still goes through
    numba's thread pool, whose idle workers spin, and on a machine whose cores are all busy that made
    each call ten times slower (measured: a K = 3 LeNet step took 88 ms instead of 6)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    if threads > 1:
        numba.set_num_threads(threads)
    return threads > 1


def rows_view(t: torch.Tensor, rows: int) -> np.ndarray:
    """A (rows, n) float32 numpy view of a contiguous CPU tensor (no copy)."""
    return t.detach().view(rows, -1).numpy()


def select_rows(scores: torch.Tensor, weight: torch.Tensor, k: int, biprop: bool, out: torch.Tensor,
                state: SelectState | None = None) -> None:
    """For each of the K rows of `scores` (K, *shape), write into `out` (K, *shape) the row's weights
    where its mask keeps them and 0 elsewhere (`W * mask`), or with `biprop` the mask itself (1 / 0), mask =
    the top-k |scores| of the row (ties to the lower index, as `topk_mask`). `weight` is shared (*shape)
    or per row (K, *shape). `state` (kept by the caller between calls) makes repeated selections on
    slowly moving scores cheaper. CPU float32, contiguous; needs numba."""
    K = scores.shape[0]
    w_rows = 1 if weight.dim() == scores.dim() - 1 else K
    state = state if state is not None else SelectState(K, scores[0].numel())
    select = _select_rows_parallel if match_torch_threads() else _select_rows_serial
    select(rows_view(scores, K), rows_view(weight, w_rows), k, biprop, rows_view(out, K), state.rows,
           state.candidates)
