"""The datasets masklab knows by name (`load_dataset(name, root)`); nothing is downloaded at run time.

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

import gzip
import math
import os
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from masklab.data.dataset import Dataset
from masklab.data.readers import (
    CIFAR_TEST_FILE,
    CIFAR_TRAIN_FILES,
    IDX_FILES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    find_idx_file,
    read_cifar_batch,
    read_idx,
)
from masklab.errors import DataError, UserError
from masklab.limits import check_synthetic_fits

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ENV_ROOT = "MASKLAB_DATA"

SYNTHETIC_SEED = 20_240_601
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 1024, 256
SYNTHETIC_SHAPE = (3, 32, 32)


# ---- where the files are looked for ------------------------------------------------------------------
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


def _load_idx(name: str, root: str | None, subdir: str, system: tuple[str, ...], mean: float,
              std: float) -> Dataset:
    """Find the four IDX files of `name` and load them (see the module docstring for the search)."""
    searched: list[Path] = []
    for base in _roots(name, root, system):
        for directory in (base, base / subdir / "raw"):
            searched.append(directory)
            if find_idx_file(directory, IDX_FILES[0]) is None:
                continue
            found = [find_idx_file(directory, f) for f in IDX_FILES]
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
