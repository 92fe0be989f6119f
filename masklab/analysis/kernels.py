"""Intersection counts ``|a AND b|`` of packed masks for all pairs, per layer: the three backends.

Everything here works on the raw packed words: an N x W uint64 matrix whose layers are word ranges
(see `masklab.store.bits`). The result is an int64 array ``counts[layer, i, j]``; callers turn it into
distances. Backends:

- ``"numba"`` (CPU default): the threaded, cache-blocked, register-tiled kernel of `_numba_kernels`;
- ``"torch"`` (default when a CUDA device is present): unpack word chunks to 0/1 float32 on the device
  and multiply; chunks are short enough (2**20 bits) that float32 sums stay exact integers, and TF32 or
  bfloat16 inputs would hold 0 and 1 exactly too; blocks of rows are streamed, one tile of counts at a time;
- ``"numpy"`` (fallback when numba is missing, and what ``"auto"`` takes for small inputs while the numba
  kernel is not loaded yet: below `SMALL_WORD_PAIRS` row-pair words numpy needs at most a few
  milliseconds, where the first numba call of a process costs about half a second of loading):
  ``np.bitwise_count`` on word chunks, row by row. Every backend gives the same integers.

Large inputs (a memory-mapped matrix larger than RAM) are streamed as blocks of rows: every pair of
row blocks is one kernel call, so at most two blocks need to be resident at a time.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from masklab.errors import UserError

BACKENDS = ("auto", "numba", "numpy", "torch")
MICRO_ROWS = 4                   # rows of a micro tile (the kernel is written for 4 x 4)
MACRO_ROWS = 16                  # rows of a macro tile (one parallel work item is 16 x 16 rows)
SEGMENT_WORDS = 512              # words of one segment: 16 + 16 rows x 4 KiB stay in L2
CACHE_CHUNK_BYTES = 16 << 20     # rows x chunk words kept in the last-level cache per parallel pass
DEFAULT_BLOCK_BYTES = 1 << 30    # row blocks of at most this size when streaming (memory maps)
TORCH_CHUNK_BITS = 1 << 20       # float32 sums of 0/1 products are exact below 2**24
TORCH_CHUNK_BYTES = 256 << 20    # device memory of one unpacked chunk (int64 bits while unpacking)
TORCH_TILE_BYTES = 256 << 20     # device memory of one tile of counts (streamed to the host tile by tile)
NUMPY_CHUNK_BYTES = 8 << 20      # temporary of the numpy fallback
SERIAL_WORD_PAIRS = 1 << 22      # below this many (row pair x word) the numba kernel runs on one thread
SMALL_WORD_PAIRS = 1 << 21       # below this many, "auto" takes numpy (about 3 ms) until numba is loaded


def layer_bounds(word_start: Sequence[int], word_stop: Sequence[int]) -> np.ndarray:
    """Word ranges of the layers as an (L, 2) int64 array."""
    return np.column_stack([np.asarray(word_start, np.int64), np.asarray(word_stop, np.int64)])


def resolve_backend(backend: str, word_pairs: int | None = None) -> str:
    """The backend that `backend` names; ``"auto"`` picks torch on CUDA, else numba, else numpy.

    With `word_pairs` (row pairs x words of the call) below `SMALL_WORD_PAIRS`, ``"auto"`` takes numpy
    unless the numba kernel is already loaded in this process: loading it costs more than numpy spends.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if _cuda_available():
        return "torch"
    if word_pairs is not None and before_load(word_pairs, SMALL_WORD_PAIRS, _KERNEL_MODULE):
        return "numpy"
    return "numba" if _numba_available() else "numpy"


_KERNEL_MODULE = "masklab.analysis._numba_kernels"


def before_load(work: int, small: int, module: str) -> bool:
    """Whether `work` below `small` should go to numpy because the numba kernel `module` is not loaded yet
    in this process: loading it (~0.2-0.5 s) costs more than numpy spends on so little."""
    return work < small and module not in sys.modules


def _cuda_available() -> bool:
    # importing torch costs about a second: only look when a driver or torch itself is already there
    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _numba_available() -> bool:
    try:  # (numba costs about a tenth of torch's import: only the kernel's users pay it)
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def row_counts(bits: np.ndarray, bounds: np.ndarray, block_bytes: int = NUMPY_CHUNK_BYTES) -> np.ndarray:
    """Kept bits of every row per layer: (N, L) int64, reading `bits` in blocks of rows."""
    counts = np.zeros((bits.shape[0], len(bounds)), dtype=np.int64)
    rows_per_block = max(1, block_bytes // max(1, bits.shape[1]))
    for r0 in range(0, bits.shape[0], rows_per_block):
        block = bits[r0:r0 + rows_per_block]
        for k, (w0, w1) in enumerate(bounds):
            counts[r0:r0 + rows_per_block, k] = np.bitwise_count(block[:, w0:w1]).sum(axis=1, dtype=np.int64)
    return counts


def intersection_counts(a: np.ndarray, b: np.ndarray | None, bounds: np.ndarray, *,
                        backend: str = "auto", threads: int | None = None,
                        block_bytes: int | None = None, with_total: bool = False) -> np.ndarray:
    """All-pairs intersection counts of the rows of `a` and `b`, per layer.

    Parameters
    ----------
    a, b : uint64 arrays (Na, W), (Nb, W)
        Packed masks; `b` None means the pairs of `a` with itself (only the upper triangle is computed,
        then mirrored). Read-only memory maps are fine; nothing is unpacked or copied unless the rows are
        not contiguous in memory.
    bounds : (L, 2) int64 array
        Word range of each output layer (pass one range ``[0, W)`` for whole masks only).
    backend : {"auto", "numba", "numpy", "torch"}
    threads : int, optional
        Numba threads for this call (default: all).
    block_bytes : int, optional
        Largest row block kept resident at once (default 1 GiB); only matters for inputs larger than it.
    with_total : bool
        Put the sum over the layers first: the result then has L + 1 entries, entry 0 the total.

    Returns
    -------
    np.ndarray of int64, shape (L, Na, Nb) or (L + 1, Na, Nb)
        ``counts[l, i, j] = |a_i AND b_j|`` over the words of layer l. It may be a view of a slightly
        larger (padded) array.
    """
    symmetric = b is None
    b_rows = a if b is None else b
    _check_words(a, b_rows, bounds)
    backend = resolve_backend(backend, a.shape[0] * b_rows.shape[0] // (2 if symmetric else 1) * a.shape[1])
    first = int(with_total)
    if backend == "numba":
        counts = _intersections_numba(a, b_rows, bounds, symmetric, threads,
                                      block_bytes or DEFAULT_BLOCK_BYTES, first)
    else:
        compute = _intersections_torch if backend == "torch" else _intersections_numpy
        counts = compute(a, b_rows, bounds, symmetric)
        if with_total:
            counts = np.concatenate([np.zeros_like(counts[:1]), counts])
    if with_total:
        np.sum(counts[1:], axis=0, out=counts[0])
    if symmetric:
        mirror_upper_triangle(counts)
    return counts


def _check_words(a: np.ndarray, b: np.ndarray, bounds: np.ndarray) -> None:
    for name, m in (("a", a), ("b", b)):
        if m.ndim != 2 or m.dtype != np.uint64:
            raise ValueError(f"{name} must be an N x W uint64 matrix, got {m.dtype} {m.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} words per row, b has {b.shape[1]}")
    if len(bounds) and (bounds.min() < 0 or bounds.max() > a.shape[1] or (bounds[:, 0] > bounds[:, 1]).any()):
        raise ValueError(f"layer word ranges {bounds.tolist()} do not fit in {a.shape[1]} words")


def mirror_upper_triangle(counts: np.ndarray, block_rows: int = 256) -> None:
    """Copy ``counts[l, i, j]`` (i < j) to ``counts[l, j, i]`` in place, for every layer, by row blocks."""
    n = counts.shape[1]
    for i0 in range(0, n, block_rows):
        i1 = min(i0 + block_rows, n)
        below = np.tril_indices(i1 - i0, -1)
        for layer in counts:
            layer[i0:i1, :i0] = layer[:i0, i0:i1].T
            diagonal_block = layer[i0:i1, i0:i1]
            diagonal_block[below] = diagonal_block.T[below]


# ---- numba ----------------------------------------------------------------------------------------

def plan_segments(bounds: np.ndarray,
                  total_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the layers' word ranges into segments and group them into cache chunks.

    Segments never cross a layer boundary nor a multiple of `SEGMENT_WORDS`; a cache chunk holds the
    segments of about ``CACHE_CHUNK_BYTES / (8 * total_rows)`` consecutive words.

    Returns
    -------
    chunk_segments, segment_start, segment_stop, segment_layer : int64 arrays
    """
    chunk_words = max(SEGMENT_WORDS, CACHE_CHUNK_BYTES // (8 * max(1, total_rows)) // SEGMENT_WORDS
                      * SEGMENT_WORDS)
    starts, stops, layers = [], [], []
    for layer, (w0, w1) in enumerate(bounds):
        cuts = np.arange((w0 // SEGMENT_WORDS + 1) * SEGMENT_WORDS, w1, SEGMENT_WORDS)
        edges = np.concatenate([[w0], cuts, [w1]]) if w1 > w0 else np.zeros(0, np.int64)
        starts.append(edges[:-1])
        stops.append(edges[1:])
        layers.append(np.full(max(0, len(edges) - 1), layer))
    segment_start = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
    segment_stop = np.concatenate(stops).astype(np.int64) if stops else np.zeros(0, np.int64)
    segment_layer = np.concatenate(layers).astype(np.int64) if layers else np.zeros(0, np.int64)
    order = np.argsort(segment_start, kind="stable")
    segment_start, segment_stop = segment_start[order], segment_stop[order]
    segment_layer = segment_layer[order]
    chunk_id = segment_start // chunk_words
    breaks = np.flatnonzero(np.diff(chunk_id)) + 1
    chunk_segments = np.concatenate([[0], breaks, [len(segment_start)]]).astype(np.int64)
    if len(segment_start) == 0:
        chunk_segments = np.zeros(1, np.int64)
    return chunk_segments, segment_start, segment_stop, segment_layer


def plan_tiles(a_rows: int, b_rows: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """First rows in A and in B of the macro tiles (symmetric: only those on or above the diagonal)."""
    starts_a = np.arange(0, a_rows, MACRO_ROWS, dtype=np.int64)
    starts_b = np.arange(0, b_rows, MACRO_ROWS, dtype=np.int64)
    tile_i, tile_j = np.meshgrid(starts_a, starts_b, indexing="ij")
    keep = tile_j >= tile_i if symmetric else np.ones(tile_i.shape, bool)
    return np.ascontiguousarray(tile_i[keep]), np.ascontiguousarray(tile_j[keep])


def _row_blocks(n_rows: int, n_words: int, block_bytes: int) -> list[tuple[int, int]]:
    rows = max(MACRO_ROWS, block_bytes // max(1, 8 * n_words) // MACRO_ROWS * MACRO_ROWS)
    return [(r0, min(r0 + rows, n_rows)) for r0 in range(0, n_rows, rows)]


def _padded(n: int) -> int:
    return -(-n // MICRO_ROWS) * MICRO_ROWS


def _kernel_view(block: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The block itself (or a contiguous copy) with its address and row stride in words."""
    if block.strides[1] != 8 or block.strides[0] % 8 or block.strides[0] < 8 * block.shape[1]:
        block = np.ascontiguousarray(block)
    row_words = block.strides[0] // 8 if block.shape[0] > 1 else block.shape[1]
    return block, block.ctypes.data, max(row_words, block.shape[1])


def _intersections_numba(a: np.ndarray, b: np.ndarray, bounds: np.ndarray, symmetric: bool,
                         threads: int | None, block_bytes: int, first_layer: int = 0) -> np.ndarray:
    # imported here: numba and the kernels' load cost more than numpy spends on small sets (see before_load)
    import numba

    from masklab.analysis._numba_kernels import intersect_blocks

    out = np.zeros((first_layer + len(bounds), _padded(a.shape[0]), _padded(b.shape[0])), dtype=np.int64)
    if a.shape[0] == 0 or b.shape[0] == 0 or a.shape[1] == 0:
        return out[:, :a.shape[0], :b.shape[0]]
    blocks_a = _row_blocks(a.shape[0], a.shape[1], block_bytes)
    blocks_b = blocks_a if symmetric else _row_blocks(b.shape[0], b.shape[1], block_bytes)
    previous_threads = numba.get_num_threads()
    pairs = a.shape[0] * b.shape[0] // (2 if symmetric else 1)
    if not threads and pairs * a.shape[1] < SERIAL_WORD_PAIRS:
        # about a millisecond of work: waking the other threads costs more than it saves (on a busy machine
        # a parallel pass waits for a time slice of every core: 8-10 ms for 16 masks instead of 0.1 ms)
        threads = 1
    if threads:
        # numba.config's attributes are read from the environment at import, not declared: mypy cannot see them
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    # hand out macro tiles one by one as threads come free: on a shared machine a static split would
    # make every pass wait for the thread whose core is busiest
    previous_chunk = numba.set_parallel_chunksize(1)
    try:
        for ia, (a0, a1) in enumerate(blocks_a):
            for ib, (b0, b1) in enumerate(blocks_b):
                if symmetric and ib < ia:
                    continue
                diagonal = symmetric and ia == ib
                block_a, a_address, a_words = _kernel_view(a[a0:a1])
                block_b, b_address, b_words = _kernel_view(b[b0:b1])
                resident_rows = (a1 - a0) + (0 if diagonal else b1 - b0)
                chunks, starts, stops, layers = plan_segments(bounds, resident_rows)
                tile_i, tile_j = plan_tiles(a1 - a0, b1 - b0, diagonal)
                intersect_blocks(a_address, a1 - a0, a_words, b_address, b1 - b0, b_words,
                                 tile_i, tile_j, MACRO_ROWS, diagonal, chunks, starts, stops,
                                 layers + first_layer, out, a0, b0)
                del block_a, block_b
    finally:
        numba.set_parallel_chunksize(previous_chunk)
        numba.set_num_threads(previous_threads)
    return out[:, :a.shape[0], :b.shape[0]]


# ---- numpy fallback -------------------------------------------------------------------------------

def _intersections_numpy(a: np.ndarray, b: np.ndarray, bounds: np.ndarray, symmetric: bool) -> np.ndarray:
    """Row by row ``np.bitwise_count(b_chunk & a_row)``, on word chunks of bounded size."""
    out = np.zeros((len(bounds), a.shape[0], b.shape[0]), dtype=np.int64)
    chunk_words = max(1, NUMPY_CHUNK_BYTES // (8 * max(1, b.shape[0])))
    for layer, (w0, w1) in enumerate(bounds):
        for c0 in range(w0, w1, chunk_words):
            c1 = min(c0 + chunk_words, w1)
            b_chunk = np.ascontiguousarray(b[:, c0:c1])
            for i in range(a.shape[0]):
                j0 = i if symmetric else 0
                out[layer, i, j0:] += np.bitwise_count(b_chunk[j0:] & a[i, c0:c1]).sum(axis=1, dtype=np.int64)
    return out


# ---- torch (GPU) ----------------------------------------------------------------------------------

def _intersections_torch(a: np.ndarray, b: np.ndarray, bounds: np.ndarray, symmetric: bool,
                         device: str | None = None, tile_bytes: int | None = None) -> np.ndarray:
    """0/1 float32 GEMM per word chunk on the device; exact since each chunk has at most 2**20 bits.

    Streams blocks of rows like the numba kernel: the device holds one (L, rows, rows) tile of counts of at
    most `tile_bytes` (default TORCH_TILE_BYTES) and two unpacked chunks of those rows (about
    TORCH_CHUNK_BYTES each), never the whole (L, Na, Nb) result; each finished tile is copied into the host
    array. With `symmetric`, only tiles on or above the diagonal are computed (the caller mirrors them).
    """
    import torch  # here: only the torch backend (CUDA) needs it; the CPU analyses never import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = np.zeros((len(bounds), a.shape[0], b.shape[0]), dtype=np.int64)
    if out.size == 0:
        return out
    rows = torch_block_rows(len(bounds), tile_bytes or TORCH_TILE_BYTES)
    shifts = torch.arange(64, device=device, dtype=torch.int64)
    chunk_bits = min(TORCH_CHUNK_BITS, TORCH_CHUNK_BYTES // (8 * rows))
    chunk_words = max(1, chunk_bits // 64)
    for a0 in range(0, a.shape[0], rows):
        a1 = min(a0 + rows, a.shape[0])
        for b0 in range(a0 if symmetric else 0, b.shape[0], rows):
            b1 = min(b0 + rows, b.shape[0])
            tile = torch.zeros((len(bounds), a1 - a0, b1 - b0), dtype=torch.int64, device=device)
            for layer, (w0, w1) in enumerate(bounds):
                for c0 in range(w0, w1, chunk_words):
                    c1 = min(c0 + chunk_words, w1)
                    a_bits = _unpack_torch(a[a0:a1, c0:c1], shifts, device)
                    b_bits = a_bits if symmetric and a0 == b0 else _unpack_torch(b[b0:b1, c0:c1], shifts, device)
                    tile[layer] += torch.round(a_bits @ b_bits.T).to(torch.int64)
            out[:, a0:a1, b0:b1] = tile.cpu().numpy()
    return out


def torch_block_rows(layers: int, tile_bytes: int) -> int:
    """Rows of a square block whose (layers, rows, rows) int64 tile of counts fits in `tile_bytes`."""
    return max(1, int(math.isqrt(max(1, tile_bytes // (8 * max(1, layers))))))


def _unpack_torch(words: np.ndarray, shifts, device):
    import torch  # (see _intersections_torch)

    signed = torch.from_numpy(np.ascontiguousarray(words).view(np.int64)).to(device)
    bits = (signed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(words.shape[0], -1).to(torch.float32)
