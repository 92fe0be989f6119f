"""The dataset file formats masklab reads, safely and with one-line errors: IDX (MNIST, Fashion-MNIST; raw or
.gz, sizes checked before anything is allocated) and CIFAR-10's python pickle batches (through an unpickler
that admits only the numpy types those files hold)."""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib
import math
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from masklab.errors import DataError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MAX_IDX_BYTES = 1 << 34  # 16 GiB of uint8 pixels in one file: 200x the 47 MB of (Fashion-)MNIST's train images

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


# ---- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------------
def find_idx_file(directory: Path, base: str) -> Path | None:
    """`directory/base` or `directory/base.gz`, whichever exists (raw first)."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes; check the magic number, the dimensions and the size.

    Returns a uint8 array with the header's dimensions. The header is read first and its size (computed
    exactly, so dimensions whose product overflows 64 bits cannot pass) is checked against the file before
    the payload is read. Raises DataError naming the file.
    """
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            header = f.read(header_size)
            found = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
            if len(header) < header_size or found != magic:
                what = f"0x{found:08x}" if found is not None else "a truncated header"
                raise DataError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s): expected "
                                f"magic number 0x{magic:08x}, found {what}")
            dims = tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
            payload = math.prod(dims)  # Python ints: exact, no overflow
            shape = "x".join(map(str, dims))
            if not gz:
                size = os.fstat(raw.fileno()).st_size
                if size != header_size + payload:
                    raise DataError(f"{path} is truncated or corrupt: its header says {shape} "
                                    f"({header_size + payload} bytes) but it holds {size} bytes")
            elif payload > MAX_IDX_BYTES:
                raise DataError(f"{path} is corrupt: its header says {shape} ({payload:,} bytes of pixels), more "
                                f"than the {MAX_IDX_BYTES:,} an IDX dataset may hold")
            data = _read_at_most(f, payload + 1)  # one byte more than the header promises: trailing data
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) != payload:
        raise DataError(f"{path} is truncated or corrupt: its header says {shape} "
                        f"({header_size + payload} bytes) but it holds {header_size + len(data)}"
                        f"{' or more' if len(data) > payload else ''} bytes (uncompressed)")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_at_most(f, n: int, chunk: int = 1 << 24) -> bytearray:
    """Up to n bytes of f, read in chunks (a read(n) of a large n would allocate all n bytes first)."""
    out = bytearray()
    while len(out) < n:
        block = f.read(min(chunk, n - len(out)))
        if not block:
            break
        out += block
    return out


# ---- CIFAR-10 (python pickle batches) -----------------------------------------------------------------
def _latin1_encode(text: str, encoding: str) -> bytes:
    """Stand-in for `_codecs.encode`, which Python 3 pickles of bytes (protocol < 3) call; latin1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_global(module: str, name: str) -> object:
    """numpy's array reconstruction functions, from numpy._core (numpy 2) or numpy.core (numpy 1)."""
    for package in ("numpy._core", "numpy.core"):  # numpy 2, numpy 1
        try:
            return getattr(importlib.import_module(f"{package}.{module.rsplit('.', 1)[-1]}"), name)
        except ImportError:
            continue
    raise ImportError(f"numpy has no {module}.{name}")


# What a CIFAR-10 batch pickle may name: numpy array and dtype reconstruction, nothing else.
_CIFAR_ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    **{(f"{pkg}.multiarray", "_reconstruct"): functools.partial(_numpy_global, f"{pkg}.multiarray", "_reconstruct")
       for pkg in ("numpy.core", "numpy._core")},
    **{(f"{pkg}.numeric", "_frombuffer"): functools.partial(_numpy_global, f"{pkg}.numeric", "_frombuffer")
       for pkg in ("numpy.core", "numpy._core")},
}


class _CifarUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in `_CIFAR_ALLOWED`; anything else is refused.

    Own code for safety: CIFAR-10's python batches are plain pickles, and `pickle.load` (what their own loader
    calls) runs any callable the file names; overriding `find_class` is the standard library's documented way
    to restrict that (the pickle docs' "Restricting Globals"). tests/test_data.py feeds it a pickle that calls
    `os.system` and checks it is refused without running."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        getter = _CIFAR_ALLOWED.get((module, name))
        if getter is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self.path}: not a CIFAR-10 batch")
        return getter()

    def persistent_load(self, pid: object) -> object:
        raise DataError(f"refusing persistent id in {self.path}: not a CIFAR-10 batch")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    Unpickles with `_CifarUnpickler` (no arbitrary code); checks the dict's keys, dtype, shape and labels.
    """
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or garbled pickles raise many kinds of error
        raise DataError(f"cannot read CIFAR-10 batch {path}: {type(exc).__name__}: {exc}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    expected = "expected a dict with b'data' (uint8 N x 3072) and b'labels' (list of N ints 0-9)"
    if not (isinstance(data, np.ndarray) and isinstance(labels, list)):
        raise DataError(f"{path} is not a CIFAR-10 batch: {expected}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        shape = "x".join(map(str, data.shape)) or "a scalar"
        raise DataError(f"{path} is not a CIFAR-10 batch: its b'data' is {data.dtype} {shape} with {len(labels)} "
                        f"labels; {expected}")
    if data.shape[0] == 0:
        raise DataError(f"{path} holds no images; {expected}")
    # exact ints only: np.asarray would truncate 1.5 to 1 and take True for 1
    if not all(type(v) is int and 0 <= v <= 9 for v in labels):
        bad = next(v for v in labels if not (type(v) is int and 0 <= v <= 9))
        raise DataError(f"{path}: b'labels' holds {bad!r}; expected ints 0-9")
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)
