"""Datasets held in memory as torch tensors; nothing is downloaded at run time.

`load_dataset(name, root)` returns a `Dataset`. Images are stored as the source has them (uint8 for the
IDX and CIFAR-10 files, float32 in [0, 1] or raw float32 for the tiny and synthetic sets) and turned into
normalised float32 batches of shape (B, *input_shape) one batch at a time.

Where the files are looked for (first hit wins):
  * fashion-mnist / mnist: the explicit `root`, then (fashion-mnist only) /usr/share/datasets/fashion-mnist
    (Debian's dataset-fashion-mnist), then $MASKLAB_DATA and $MASKLAB_DATA/<name>. In each directory the
    flat layout (the four IDX files, raw or .gz) and torchvision's `<dir>/FashionMNIST/raw/` resp.
    `<dir>/MNIST/raw/` both work.
  * cifar10: `root`, then $MASKLAB_DATA and $MASKLAB_DATA/cifar10; in each, `<dir>/cifar-10-batches-py/`
    or `<dir>` itself holding data_batch_1..5 and test_batch.
A missing or corrupt dataset raises `DataError` with a one-line message naming the paths and the files.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import math
import os
import pickle
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from masklab.errors import DataError, UserError
from masklab.limits import check_synthetic_fits

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ENV_ROOT = "MASKLAB_DATA"

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MAX_IDX_BYTES = 1 << 34  # 16 GiB of uint8 pixels in one file: 200x the 47 MB of (Fashion-)MNIST's train images

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"

CIFAR_PAD = 4  # random crop 32 with zero padding 4 (REFERENCE.md)

SYNTHETIC_SEED = 20_240_601
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 1024, 256
SYNTHETIC_SHAPE = (3, 32, 32)


# ---- what the rest of masklab needs of a dataset --------------------------------------------------------
class Shaped(Protocol):
    """What building a model needs: the per-sample shape and the class count (a Dataset, or a run's record
    of them)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def n_classes(self) -> int: ...


class Batches(Shaped, Protocol):
    """What training and evaluation need: seeded training batches and the test split, as normalised float32
    tensors of shape (B, *input_shape) with int64 labels. `Dataset` is the one implementation."""

    name: str

    def train_batches(self, batch_size: int, seed: int, epoch: int,
                      device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...

    def test_batches(self, batch_size: int = 1000,
                     device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...


# ---- the in-memory dataset ----------------------------------------------------------------------------
@dataclass
class Dataset:
    """A whole dataset in memory. Batches come out as normalised float32 of shape (B, *input_shape).

    `x_*` hold the raw images: uint8 (pixel/255 is the value in [0, 1]) or float32 (used as is). `y_*`
    are int64 class indices in [0, n_classes). A batch is `(x_raw_in_[0,1] - mean) / std` per channel
    (`mean`/`std` have one entry per channel, i.e. per `input_shape[0]`, or a single entry for all).
    `augment` is "cifar" (random crop with zero padding 4 + horizontal flip, applied to training batches
    before normalisation, as torchvision's RandomCrop/RandomHorizontalFlip/Normalize would) or None.
    """

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    input_shape: tuple[int, ...]
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None = None

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def normalize(self, x: Tensor, device: str | torch.device = "cpu") -> Tensor:
        """Raw images (N, *input_shape) as stored -> normalised float32 on `device`."""
        x = x.to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        shape = (len(self.mean),) + (1,) * (len(self.input_shape) - 1) if len(self.mean) > 1 else (1,)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (x - mean) / std

    def train_batches(self, batch_size: int, seed: int, epoch: int,
                      device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled (x, y) batches, the last one partial; augmented if `augment` is set.

        The order and the augmentation come from one CPU torch.Generator seeded by `epoch_seed(seed,
        epoch)`, so the same (seed, epoch, batch_size) always gives identical batches on any device.
        """
        _check_batch_size(batch_size)
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(self.n_train, generator=gen)
        for start in range(0, self.n_train, batch_size):
            idx = order[start:start + batch_size]
            x = self.x_train[idx]
            if self.augment == "cifar":
                x = random_crop_flip(x, gen)
            yield self.normalize(x, device), self.y_train[idx].to(device)

    def test_batches(self, batch_size: int = 1000,
                     device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """The test set in its fixed order, not augmented, the last batch partial."""
        _check_batch_size(batch_size)
        for start in range(0, self.n_test, batch_size):
            yield (self.normalize(self.x_test[start:start + batch_size], device),
                   self.y_test[start:start + batch_size].to(device))

    def eval_subset(self, n: int, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """`min(n, n_train)` training samples picked by `seed`, normalised and not augmented (e.g. for
        measuring training accuracy cheaply)."""
        gen = torch.Generator().manual_seed(epoch_seed(seed, 0))
        idx = torch.randperm(self.n_train, generator=gen)[:max(0, n)]
        return self.normalize(self.x_train[idx], device), self.y_train[idx].to(device)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed for one (seed, epoch): `seed * 1_000_003 + epoch`, folded into [0, 2^63)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 63)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UserError(f"batch_size = {batch_size!r} is invalid: it must be an integer >= 1")


# ---- CIFAR augmentation -------------------------------------------------------------------------------
def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = CIFAR_PAD) -> Tensor:
    """Per-sample crop of the zero-padded batch and optional horizontal flip, vectorised.

    x: (B, C, H, W). Sample b becomes `padded[b, :, dy[b]:dy[b]+H, dx[b]:dx[b]+W]` where `padded` is x
    with `pad` zeros on every side (so dy = dx = pad is the identity), then mirrored left-right where
    `flip[b]`. Offsets lie in [0, 2 * pad]. Keeps the dtype of x.
    """
    b, c, h, w = x.shape
    padded = x.new_zeros(b, c, h + 2 * pad, w + 2 * pad)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    rows = dy.view(b, 1) + torch.arange(h)  # (B, H)
    cols = torch.arange(w).expand(b, w)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), w - 1 - cols, cols)  # (B, W)
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, flat).view(b, c, h, w)


def random_crop_flip(x: Tensor, gen: torch.Generator, pad: int = CIFAR_PAD) -> Tensor:
    """Random crop (zero padding `pad`) and random horizontal flip (p = 0.5) per sample, drawn from `gen`."""
    b = x.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    return crop_flip(x, dy, dx, flip, pad)


# ---- search paths -------------------------------------------------------------------------------------
def _roots(name: str, root: str | os.PathLike | None, system: tuple[str, ...] = ()) -> list[Path]:
    """Directories to search, in order, without duplicates. An explicit root is the only place searched
    (a mistyped --data-root must fail, not fall back silently); otherwise the system dirs, then
    $MASKLAB_DATA and $MASKLAB_DATA/<name>."""
    out: list[Path] = []
    env = os.environ.get(ENV_ROOT)
    dirs = [root] if root else list(system) + ([env, os.path.join(env, name)] if env else [])
    for d in dirs:
        p = Path(d).expanduser()
        if p not in out:
            out.append(p)
    return out


def _where(paths: list[Path]) -> str:
    """Where was searched, for an error message: "in /a, /b"."""
    if not paths:
        return f"anywhere (nothing to search: no --data-root given and ${ENV_ROOT} unset)"
    return "in " + ", ".join(str(p) for p in paths)


# ---- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------------
def _find_idx_file(directory: Path, base: str) -> Path | None:
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


def _load_idx(name: str, root: str | None, subdir: str, system: tuple[str, ...], mean: float,
              std: float) -> Dataset:
    """Find the four IDX files of `name` and load them (see the module docstring for the search)."""
    searched: list[Path] = []
    for base in _roots(name, root, system):
        for directory in (base, base / subdir / "raw"):
            searched.append(directory)
            if _find_idx_file(directory, IDX_FILES[0]) is None:
                continue
            found = [_find_idx_file(directory, f) for f in IDX_FILES]
            paths = [p for p in found if p is not None]
            if len(paths) < len(IDX_FILES):
                missing = [f for f, p in zip(IDX_FILES, found) if p is None]
                raise DataError(f"{name}: {directory} holds {IDX_FILES[0]} but not "
                                f"{', '.join(m + '(.gz)' for m in missing)}; expected all four IDX files")
            return _idx_dataset(name, paths, mean, std)
    hint = "install Debian's dataset-fashion-mnist or " if name == "fashion-mnist" else ""
    raise DataError(f"{name}: no {IDX_FILES[0]}(.gz) found {_where(searched)}; {hint}pass --data-root DIR "
                    f"containing the IDX files (or set ${ENV_ROOT})")


def _idx_dataset(name: str, paths: list[Path], mean: float, std: float) -> Dataset:
    """Build the Dataset from the four IDX files (train images, train labels, test images, test labels)."""
    splits = []
    for img_path, lab_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images = read_idx(img_path, IDX_IMAGES_MAGIC)
        if images.shape[0] == 0:
            raise DataError(f"{name}: {img_path} holds no images (its header says {images.shape[0]} samples); "
                            f"expected the {name} IDX files")
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise DataError(f"{name}: {img_path} holds images of {images.shape[1]}x{images.shape[2]} pixels; "
                            f"expected the {name} IDX files (28x28)")
        labels = read_idx(lab_path, IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{name}: {img_path} holds {images.shape[0]} images but {lab_path} holds "
                            f"{labels.shape[0]} labels")
        if labels.size and labels.max() >= 10:
            raise DataError(f"{name}: {lab_path} has label {int(labels.max())}; expected classes 0-9")
        x = torch.from_numpy(images).unsqueeze(1)  # (read_idx's array owns a writable buffer: no copy)
        splits.append((x, torch.from_numpy(labels.astype(np.int64))))
    (x_train, y_train), (x_test, y_test) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: train images are {tuple(x_train.shape[2:])} but test images "
                        f"{tuple(x_test.shape[2:])} ({paths[0]}, {paths[2]})")
    return Dataset(name, x_train, y_train, x_test, y_test, tuple(x_train.shape[1:]), 10, (mean,), (std,))


def _load_fashion_mnist(root: str | None = None, **_: object) -> Dataset:
    """Fashion-MNIST from IDX files; normalised with mean 0.2860, std 0.3530 (REFERENCE.md)."""
    return _load_idx("fashion-mnist", root, "FashionMNIST", (DEBIAN_FASHION_MNIST,), 0.2860, 0.3530)


def _load_mnist(root: str | None = None, **_: object) -> Dataset:
    """MNIST from IDX files; normalised with mean 0.1307, std 0.3081 (REFERENCE.md)."""
    return _load_idx("mnist", root, "MNIST", (), 0.1307, 0.3081)


# ---- CIFAR-10 (python pickle batches) -----------------------------------------------------------------
def _latin1_encode(text: str, encoding: str) -> bytes:
    """Stand-in for `_codecs.encode`, which Python 3 pickles of bytes (protocol < 3) call; latin1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_global(module: str, name: str) -> object:
    """numpy's array reconstruction functions, from numpy._core (numpy 2) or numpy.core (numpy 1)."""
    import importlib

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


def _load_cifar10(root: str | None = None, **_: object) -> Dataset:
    """CIFAR-10 from the python batches; augment "cifar"; mean/std from REFERENCE.md."""
    searched: list[Path] = []
    for base in _roots("cifar10", root):
        for directory in (base / "cifar-10-batches-py", base):
            searched.append(directory)
            if not (directory / CIFAR_TRAIN_FILES[0]).is_file():
                continue
            missing = [f for f in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,) if not (directory / f).is_file()]
            if missing:
                raise DataError(f"cifar10: {directory} holds {CIFAR_TRAIN_FILES[0]} but not "
                                f"{', '.join(missing)}; expected data_batch_1..5 and test_batch")
            train = [read_cifar_batch(directory / f) for f in CIFAR_TRAIN_FILES]
            x_test, y_test = read_cifar_batch(directory / CIFAR_TEST_FILE)
            return Dataset("cifar10",
                           torch.from_numpy(np.concatenate([x for x, _ in train])),
                           torch.from_numpy(np.concatenate([y for _, y in train])),
                           torch.from_numpy(x_test.copy()), torch.from_numpy(y_test),
                           (3, 32, 32), 10, (0.491, 0.482, 0.447), (0.247, 0.243, 0.262), augment="cifar")
    raise DataError(f"cifar10: no {CIFAR_TRAIN_FILES[0]} found {_where(searched)}; pass --data-root DIR "
                    f"containing cifar-10-batches-py/ (the python version of CIFAR-10) or set ${ENV_ROOT}")


# ---- digits and synthetic -----------------------------------------------------------------------------
# The fixed split of the digits: train indices then test indices, exactly scikit-learn's
# `train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)` (tests/test_data.py checks it), stored
# so that loading the embedded default does not import scikit-learn (a second of every digits run).
DIGITS_SPLIT = Path(__file__).with_name("digits_split.npy")
DIGITS_TRAIN = 1347


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 64) float64 in 0..16, labels) of scikit-learn's bundled digits, read from its CSV file
    without importing scikit-learn (the same numbers `sklearn.datasets.load_digits` returns)."""
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("digits: scikit-learn is not installed (its bundled digits are the embedded dataset); "
                        "pip install scikit-learn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path) as f:
            table = np.loadtxt(f, delimiter=",")
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"digits: cannot read scikit-learn's {path} ({e}); reinstall scikit-learn") from None
    return table[:, :-1], table[:, -1].astype(np.int64)


def _load_digits(root: str | None = None, **_: object) -> Dataset:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; fixed stratified 75/25 split (random_state 0);
    normalised with the train split's pixel mean and std. `root` is ignored."""
    data, y = _digits_arrays()
    x = (data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = np.load(DIGITS_SPLIT, allow_pickle=False).astype(np.int64)
    train, test = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    x_train, x_test, y_train, y_test = x[train], x[test], y[train], y[test]
    mean, std = float(x_train.mean()), float(x_train.std())
    return Dataset("digits", torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test),
                   torch.from_numpy(y_test), (1, 8, 8), 10, (mean,), (std,))


def _load_synthetic(root: str | None = None, *, input_shape: tuple[int, ...] | None = None,
                    n_classes: int | None = None, **_: object) -> Dataset:
    """Fixed-seed standard normal inputs (1024 train, 256 test) labelled by a random linear teacher
    (argmax of x @ W), so a linear model can learn it. Default shape (3, 32, 32), 10 classes."""
    shape = tuple(int(s) for s in (input_shape or SYNTHETIC_SHAPE))
    k = int(n_classes or 10)
    if not shape or min(shape) < 1 or k < 2 or k > 1_000_000:
        raise UserError(f"synthetic: input_shape {shape} and n_classes {k} are invalid: use positive sizes "
                        f"and 2 to 1,000,000 classes")
    n = SYNTHETIC_TRAIN + SYNTHETIC_TEST
    check_synthetic_fits(shape, n, k)
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    x = torch.randn((n, *shape), generator=gen)
    teacher = torch.randn(x[0].numel(), k, generator=gen)
    y = (x.view(n, -1) @ teacher).argmax(1)
    return Dataset("synthetic", x[:SYNTHETIC_TRAIN].clone(), y[:SYNTHETIC_TRAIN].clone(),
                   x[SYNTHETIC_TRAIN:].clone(), y[SYNTHETIC_TRAIN:].clone(), shape, k, (0.0,), (1.0,))


# ---- registry -----------------------------------------------------------------------------------------
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "synthetic": _load_synthetic,
}


def _check_dataset(ds: Dataset) -> None:
    """What every loader must give: samples in both splits, one label per sample, non-empty samples."""
    for split, x, y in (("training", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if x.shape[0] == 0:
            raise DataError(f"{ds.name}: the {split} split holds no samples; a run needs both splits")
        if y.shape != (x.shape[0],):
            raise DataError(f"{ds.name}: the {split} split holds {x.shape[0]} samples but {tuple(y.shape)} labels")
        if tuple(x.shape[1:]) != tuple(ds.input_shape):
            raise DataError(f"{ds.name}: {split} samples are {tuple(x.shape[1:])}, not {tuple(ds.input_shape)}")
    if math.prod(ds.input_shape) == 0:
        raise DataError(f"{ds.name}: samples of shape {ds.input_shape} hold no values")


def synthetic_shape(config) -> tuple[int, ...]:
    """The per-sample shape of a RunConfig's synthetic data: its input_shape, else (3, 32, 32)."""
    if config.input_shape is None:
        return SYNTHETIC_SHAPE
    return tuple(int(s) for s in config.input_shape.split("x"))


def load_config_dataset(config) -> Dataset:
    """The dataset a RunConfig names, from its data root, with its synthetic input shape."""
    shape = None if config.input_shape is None else synthetic_shape(config)
    return load_dataset(config.dataset, config.data_root, input_shape=shape)


def dataset_names() -> list[str]:
    """The dataset names `load_dataset` accepts."""
    return list(DATASETS)


def load_dataset(name: str, root: str | os.PathLike | None = None, *,
                 input_shape: tuple[int, ...] | None = None, n_classes: int | None = None) -> Dataset:
    """Load dataset `name` into memory.

    `root`: a directory searched first (fashion-mnist, mnist, cifar10; ignored by digits and synthetic).
    `input_shape`, `n_classes`: the per-sample shape and class count of `synthetic`; for the other sets
    they may be given only if they agree with the data. Raises UserError for an unknown name or a
    mismatch, DataError for missing or corrupt files.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    ds = DATASETS[name](root, input_shape=input_shape, n_classes=n_classes)
    _check_dataset(ds)
    if input_shape is not None and tuple(input_shape) != ds.input_shape:
        raise UserError(f"{name} has input shape {ds.input_shape}, not {tuple(input_shape)}; "
                        f"input_shape applies to synthetic only")
    if n_classes is not None and n_classes != ds.n_classes:
        raise UserError(f"{name} has {ds.n_classes} classes, not {n_classes}; "
                        f"n_classes applies to synthetic only")
    return ds
