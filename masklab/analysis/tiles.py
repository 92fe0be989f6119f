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

A worker maps the bit matrix for one task and unmaps it when the task ends: a map kept open between tasks
counts as the worker's memory, and Dask pauses a worker whose memory passes its limit (with a large run on
workers of a few GB, every worker paused and the computation stalled). Each tile's numba kernel runs on as
many threads as its worker has (`dask worker --nthreads`, or dask-jobqueue's cores / processes), never on
every core of the node. The tiles are sized for the workers that have joined: with none yet (a
dask-jobqueue cluster just scaled), the computation first waits for one (WORKER_WAIT_S).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from masklab.analysis.kernels import intersection_counts
from masklab.errors import UserError

DEFAULT_TILE_BYTES = 256 << 20  # rows of one tile side: at most this many bytes of packed words
WORKER_WAIT_S = 120  # how long a computation waits for a first worker to join the scheduler
HANDSHAKE_TIMEOUT_S = 20  # connecting to --scheduler ADDRESS, Dask's handshake included


def bits_source(bits: np.ndarray):
    """Where workers find the rows: ("file", path, offset, shape) for a memory map, else None."""
    if isinstance(bits, np.memmap) and bits.filename is not None and bits.flags.c_contiguous:
        return ("file", os.fspath(bits.filename), int(bits.offset), tuple(int(s) for s in bits.shape))
    return None


def _matrix(source) -> np.ndarray:
    """The rows' matrix: a memory map of the file for ("file", ...) sources (unmapped once the caller drops
    it: nothing is cached between tasks, see the module's notes), else the array itself."""
    if isinstance(source, tuple) and source and source[0] == "file":
        _, path, offset, shape = source
        return np.memmap(path, dtype="<u8", mode="r", offset=offset, shape=shape)
    return source


def worker_threads() -> int | None:
    """The thread count of the Dask worker running this task (None outside a worker)."""
    try:
        from distributed import get_worker  # (see dask_intersection_counts)

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def tile_counts(source, rows_a: tuple[int, int], rows_b: tuple[int, int], bounds: np.ndarray,
                with_total: bool, threads: int | None = None) -> np.ndarray:
    """One tile on a worker: intersection counts of rows_a x rows_b (a diagonal tile counts its upper
    triangle once and mirrors it), shape (L [+ 1], len a, len b). The numba kernel runs on `threads`
    threads, by default as many as the worker has."""
    matrix = _matrix(source)
    a = matrix[rows_a[0]:rows_a[1]]
    b = None if rows_a == rows_b else matrix[rows_b[0]:rows_b[1]]
    counts = intersection_counts(a, b, bounds, backend="numba", threads=threads or worker_threads(),
                                 with_total=with_total)
    del a, b, matrix  # unmap before the task ends
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


def _workers(client) -> int:
    """How many workers `client`'s scheduler has, waiting up to WORKER_WAIT_S for a first one."""
    info = client.scheduler_info().get("workers", {})
    if not info:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise UserError(f"no Dask worker joined the scheduler at {client.scheduler.address} within "
                            f"{WORKER_WAIT_S} s; start workers (`dask worker ADDRESS`), or with dask-jobqueue "
                            "scale the cluster and call client.wait_for_workers(n) first") from None
        info = client.scheduler_info().get("workers", {})
    return max(1, len(info))


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
    # distributed is imported where a Dask client is used: it costs about a fifth of torch's import (3.2 s
    # against 15 s, -X importtime on the shared machine), and every `analyze` imports this module
    from distributed import as_completed

    n, w = bits.shape
    size = rows_per_tile or tile_rows(n, w, _workers(client))
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
        from masklab.files import atomic_npy

        with atomic_npy(path, dtype, shape, durable=True) as stored:
            dask_intersection_counts(bits, bounds, client, with_total=with_total, rows_per_tile=rows_per_tile,
                                     out=stored, progress=progress, transform=transform, dtype=dtype,
                                     tile_function=tile_function)
        return np.load(path, mmap_mode="r")
    else:
        result = np.empty(shape, dtype=dtype)
    source = bits_source(bits)
    if source is None:  # in memory only: one copy per worker, not one per task
        source = client.scatter(np.ascontiguousarray(bits), broadcast=True, hash=False)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    futures = {}
    for ia, rows_a in enumerate(blocks):
        for rows_b in blocks[ia:]:
            future = client.submit(tile_function, source, rows_a, rows_b, bounds, with_total, None,
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
    return result


def local_client(workers: int | None = None, threads_per_worker: int = 1):
    """A Dask `Client` on a LocalCluster of `workers` processes (default: one per core) with
    `threads_per_worker` threads each. Close it (or use it as a context manager) when done."""
    import dask
    from distributed import Client, LocalCluster  # (see dask_intersection_counts)

    workers = workers or max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))
    # the workers without distributed's MALLOC_TRIM_THRESHOLD_=65536: setting it fixes glibc's mmap threshold, so
    # that every torch tensor above 128 KiB is a fresh mmap; a barrier pair then took twice as long in a worker
    # as in this process (8 digits-MLP pairs: 0.83 s against 0.41 s; 0.46 s without it)
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=None, worker_dashboard_address=None,
                               silence_logs=logging.ERROR)
    return Client(cluster)


def scheduler_address(scheduler: str) -> tuple[str, str, int]:
    """("tcp://HOST:PORT", host, port) from `--scheduler` text ("tcp://HOST:PORT" or "HOST:PORT"); anything
    else is a one-line UserError saying what an address looks like."""
    text = scheduler.strip()
    example = "write tcp://HOST:PORT (a Dask scheduler listens on port 8786 by default), or local"
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme and scheme != "tcp":
        why = {"http": "is a web address (the dashboard's); the scheduler's own address is tcp://HOST:8786",
               "https": "is a web address (the dashboard's); the scheduler's own address is tcp://HOST:8786",
               "tls": "needs certificates, which the command line does not take: connect in Python with "
                      "Client(address, security=...) and pass client= to masklab.distances",
               "inproc": "is an address inside one Python process: use --scheduler local, or client= in Python"}
        what = why.get(scheme, f"is not supported here; {example}")
        raise UserError(f"--scheduler {scheduler!r}: {scheme}:// {what}")
    try:
        where = urlsplit(text if scheme else f"tcp://{text}")
        host, port = where.hostname, where.port
    except ValueError as e:  # a port out of range or not a number
        raise UserError(f"--scheduler {scheduler!r} is not an address ({e}); {example}") from None
    if not host or port is None or where.path not in ("", "/") or where.query or where.username:
        raise UserError(f"--scheduler {scheduler!r} is not an address{' (no port)' if host and port is None else ''}; "
                        f"{example}")
    if not 0 < port < 65536:
        raise UserError(f"--scheduler {scheduler!r}: port {port} is out of range (1-65535); {example}")
    shown = f"[{host}]" if ":" in host else host
    return f"tcp://{shown}:{port}", host, port


def check_scheduler(address: str, timeout: float | None = None) -> None:
    """Connect to `address` with Dask's own protocol (handshake included) and ask what it is; a one-line
    UserError, within `timeout` seconds, when it is unreachable, is not a Dask service (a protocol
    mismatch) or is not a scheduler. (distributed's Client waits for the handshake without a timeout: a port
    that accepts and never answers would hang it.)"""
    from distributed.comm import connect as dask_connect  # (see dask_intersection_counts)

    timeout = HANDSHAKE_TIMEOUT_S if timeout is None else timeout

    async def identify() -> dict:
        comm = await dask_connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> dict:
        return await asyncio.wait_for(identify(), timeout)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # its own event loop, whatever the caller runs
        try:
            answer = pool.submit(asyncio.run, bounded()).result(timeout + 5)
        except (TimeoutError, concurrent.futures.TimeoutError):
            raise UserError(f"--scheduler {address}: something accepted the connection but did not speak Dask's "
                            f"protocol within {timeout:g} s (a protocol mismatch: not a Dask scheduler); check the "
                            "address and port (the scheduler's default port is 8786)") from None
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler at {address} ({e}); start one (`dask scheduler`) "
                            "or use --scheduler local") from None
        except Exception as e:  # what a non-Dask answer decodes to: MemoryError, msgpack or struct errors
            raise UserError(f"--scheduler {address}: the service there answered in another protocol than Dask's "
                            f"(a protocol mismatch: {type(e).__name__}); check the address and port (the "
                            "scheduler's default port is 8786)") from None
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        raise UserError(f"--scheduler {address} is a Dask {kind or 'service'}, not a scheduler; give the scheduler's "
                        "address (`dask scheduler` prints it)")


def connect(scheduler: str, workers: int | None = None):
    """A Client for `--scheduler`: "local" starts a LocalCluster (`workers` processes), anything else is the
    address of a running scheduler ("tcp://HOST:PORT" or "HOST:PORT", e.g. one that dask-jobqueue's
    SLURMCluster made), checked first (`scheduler_address`, `check_scheduler`): a bad address, a closed
    port, a service that is not a Dask scheduler are each one line, within HANDSHAKE_TIMEOUT_S."""
    if scheduler == "local":
        return local_client(workers)
    from distributed import Client  # (see dask_intersection_counts)

    address, host, port = scheduler_address(scheduler)
    try:  # a quick look first: distributed itself keeps retrying a refused address until its timeout
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        raise UserError(f"cannot reach the Dask scheduler at {address} ({e.strerror or e}); start one "
                        "(`dask scheduler`) or use --scheduler local") from None
    check_scheduler(address)
    try:
        return Client(address, timeout=f"{HANDSHAKE_TIMEOUT_S}s")
    except OSError as e:
        raise UserError(f"cannot reach the Dask scheduler at {address} ({e}); start one (`dask scheduler`) "
                        "or use --scheduler local") from None
