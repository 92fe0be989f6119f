"""All-pairs intersection counts as tiles on a Dask distributed cluster (`distances(..., client=...)`,
`masklab distances --scheduler`).

The N x N pairs are cut into row block x row block tiles of the upper triangle; each tile is one task
that runs the in-process numba kernel (`masklab.analysis.kernels.intersection_counts`) on its two row
blocks. Workers read their rows straight from the run's memory-mapped bit matrix by path (a shared
filesystem), never through the scheduler; a MaskSet that lives only in memory is scattered to the workers
once instead. Integer counts are exact, so the assembled result equals the in-process one bit for bit,
whatever the tiling; a task whose worker dies is rerun by the scheduler (and retried on errors).

The result is an (L + 1, N, N) int64 array (entry 0 the whole mask), in memory or, with `out`, in a
memory-mapped .npy file written tile by tile (for N whose result would not fit in memory).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from masklab.analysis.kernels import intersection_counts
from masklab.errors import UserError

DEFAULT_TILE_BYTES = 256 << 20  # rows of one tile side: at most this many bytes of packed words


def bits_source(bits: np.ndarray):
    """Where workers find the rows: ("file", path, offset, shape) for a memory map, else None."""
    if isinstance(bits, np.memmap) and bits.filename is not None and bits.flags.c_contiguous:
        return ("file", os.fspath(bits.filename), int(bits.offset), tuple(int(s) for s in bits.shape))
    return None


@functools.lru_cache(maxsize=8)
def _open_bits(path: str, offset: int, shape: tuple[int, int]) -> np.ndarray:
    return np.memmap(path, dtype="<u8", mode="r", offset=offset, shape=shape)


def _rows(source, start: int, stop: int) -> np.ndarray:
    if isinstance(source, tuple) and source and source[0] == "file":
        _, path, offset, shape = source
        return _open_bits(path, offset, shape)[start:stop]
    return source[start:stop]


def tile_counts(source, rows_a: tuple[int, int], rows_b: tuple[int, int], bounds: np.ndarray,
                with_total: bool, threads: int | None = None) -> np.ndarray:
    """One tile on a worker: intersection counts of rows_a x rows_b (a diagonal tile counts its upper
    triangle once and mirrors it), shape (L [+ 1], len a, len b)."""
    a = _rows(source, *rows_a)
    b = None if rows_a == rows_b else _rows(source, *rows_b)
    counts = intersection_counts(a, b, bounds, backend="numba", threads=threads, with_total=with_total)
    # counts never exceed a layer's bits: int32 halves what goes back to the client while they fit
    small = counts.size == 0 or int(counts.max()) < 2**31
    return np.ascontiguousarray(counts, dtype=np.int32 if small else np.int64)


def tile_rows(n_rows: int, n_words: int, n_workers: int, tile_bytes: int = DEFAULT_TILE_BYTES) -> int:
    """Rows per tile side: small enough for `tile_bytes` per side, and enough tiles (>= 4 per worker)
    that the scheduler can balance them."""
    by_memory = max(1, tile_bytes // max(1, 8 * n_words))
    # t tiles per side make t (t + 1) / 2 tasks; want at least 4 per worker
    sides = max(1, math.ceil((math.sqrt(1 + 32 * max(1, n_workers)) - 1) / 2))
    by_balance = max(16, math.ceil(n_rows / sides))
    return int(min(by_memory, by_balance, max(1, n_rows)))


def _workers(client) -> tuple[int, int | None]:
    """(worker count, threads per worker) of a Dask client."""
    info = client.scheduler_info().get("workers", {})
    threads = [w.get("nthreads", 1) for w in info.values()]
    return max(1, len(threads)), (min(threads) if threads else None)


def dask_intersection_counts(bits: np.ndarray, bounds: np.ndarray, client, *, with_total: bool = False,
                             rows_per_tile: int | None = None, out: str | os.PathLike | np.ndarray | None = None,
                             progress: Callable[[int, int], None] | None = None,
                             transform: Callable | None = None, dtype=np.int64,
                             tile_function: Callable = tile_counts) -> np.ndarray:
    """`intersection_counts(bits, None, bounds, with_total=...)` computed as tiles on `client`'s workers.

    Parameters
    ----------
    bits : uint64 array (N, W)
        The packed masks; a memory map is read by its workers from its file (shared filesystem).
    bounds : (L, 2) int64 array
        Word range of each output layer.
    client : dask.distributed.Client
    with_total : bool
        Put the sum over the layers first (entry 0).
    rows_per_tile : int, optional
        Rows of a tile side (default: `tile_rows`).
    out : path or array, optional
        Write the result into this .npy file (memory-mapped, tile by tile) and return the memory map, or
        into this array of the result's shape.
    progress : callable(done, total), optional
        Called as tiles finish.
    transform : callable(counts_tile, rows_a, rows_b) -> array, optional
        Applied to each tile before it is stored (e.g. counts to a distance metric, so that the N x N
        counts never exist); `dtype` is then the dtype of what it returns.
    tile_function : callable
        What a task runs (`tile_counts`); tests replace it to kill a worker mid-computation.

    Returns
    -------
    np.ndarray of `dtype`, shape (L [+ 1], N, N), symmetric in its last two axes.
    """
    from distributed import as_completed

    n, w = bits.shape
    n_workers, threads = _workers(client)
    size = rows_per_tile or tile_rows(n, w, n_workers)
    if size < 1:
        raise UserError(f"rows per tile = {size} is invalid: use at least 1")
    blocks = [(s, min(s + size, n)) for s in range(0, n, size)]
    layers = len(bounds) + int(with_total)
    shape = (layers, n, n)
    if isinstance(out, np.ndarray):  # the caller's array (e.g. a view of a memory map)
        if out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, the counts need {shape}")
        result = out
    elif out is not None:
        path = Path(out)
        if path.suffix != ".npy":
            raise UserError(f"--out {path}: the square counts are written as a .npy file; name it *.npy")
        result = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    else:
        result = np.empty(shape, dtype=dtype)
    source = bits_source(bits)
    if source is None:  # in memory only: one copy per worker, not one per task
        source = client.scatter(np.ascontiguousarray(bits), broadcast=True, hash=False)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    futures = {}
    for ia, rows_a in enumerate(blocks):
        for rows_b in blocks[ia:]:
            future = client.submit(tile_function, source, rows_a, rows_b, bounds, with_total, threads,
                                   pure=False, retries=2)
            futures[future] = (rows_a, rows_b)
    done = 0
    for future in as_completed(futures):
        (a0, a1), (b0, b1) = futures.pop(future)
        tile = future.result()
        if transform is not None:
            tile = transform(tile, (a0, a1), (b0, b1))
        result[:, a0:a1, b0:b1] = tile
        if (a0, a1) != (b0, b1):
            result[:, b0:b1, a0:a1] = tile.transpose(0, 2, 1)
        done += 1
        if progress is not None:
            progress(done, done + len(futures))
        del tile
    if isinstance(result, np.memmap):
        result.flush()
    return result


def local_client(workers: int | None = None, threads_per_worker: int = 1):
    """A Dask `Client` on a LocalCluster of `workers` processes (default: one per core) with
    `threads_per_worker` threads each. Close it (or use it as a context manager) when done."""
    from distributed import Client, LocalCluster

    workers = workers or max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                           dashboard_address=None, worker_dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster)


def connect(scheduler: str, workers: int | None = None):
    """A Client for `--scheduler`: "local" starts a LocalCluster (`workers` processes), anything else is the
    address of a running scheduler (e.g. tcp://host:8786, or one that dask-jobqueue's SLURMCluster made)."""
    if scheduler == "local":
        return local_client(workers)
    import socket
    from urllib.parse import urlparse

    from distributed import Client

    where = urlparse(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if where.scheme == "tcp" and where.hostname and where.port:
        try:  # a quick look first: distributed itself keeps retrying a refused address until its timeout
            socket.create_connection((where.hostname, where.port), timeout=3).close()
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({e.strerror or e}); start one "
                            "(`dask scheduler`) or use --scheduler local") from None
    try:
        return Client(scheduler, timeout="20s")
    except OSError as e:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start one (`dask scheduler`) "
                        "or use --scheduler local") from None
