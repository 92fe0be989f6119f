"""Tests for masklab.data: loaders (digits, IDX, CIFAR pickles, synthetic), batching and augmentation."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masklab import limits
from masklab.data import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    ENV_ROOT,
    Dataset,
    crop_flip,
    dataset_names,
    load_dataset,
    read_idx,
)
from masklab.errors import DataError, UserError


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    """Searches must not depend on the developer's $MASKLAB_DATA."""
    monkeypatch.delenv(ENV_ROOT, raising=False)


# ---- registry -----------------------------------------------------------------------------------------
def test_registry_names():
    assert dataset_names() == ["digits", "fashion-mnist", "mnist", "cifar10", "synthetic"]
    assert list(DATASETS) == dataset_names()


def test_unknown_name_lists_choices():
    with pytest.raises(UserError, match="choose one of digits, fashion-mnist, mnist, cifar10, synthetic"):
        load_dataset("imagenet")


# ---- digits -------------------------------------------------------------------------------------------
def test_digits_shapes_and_stratified_fixed_split(digits):
    assert (digits.n_train, digits.n_test) == (1347, 450)
    assert digits.input_shape == (1, 8, 8) and digits.n_classes == 10 and digits.augment is None
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.y_train.dtype == torch.int64
    # stratified: each class's share of the test split matches its share of the whole within one sample
    y_all = torch.cat([digits.y_train, digits.y_test])
    total, test = torch.bincount(y_all, minlength=10), torch.bincount(digits.y_test, minlength=10)
    assert torch.all((test - total * 0.25).abs() <= 1.0)
    # fixed: a second load gives the very same split
    again = load_dataset("digits")
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    # normalised with the train split's statistics
    x = digits.normalize(digits.x_train)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_input_shape_mismatch_for_fixed_dataset_is_user_error():
    with pytest.raises(UserError, match="input shape"):
        load_dataset("digits", input_shape=(3, 32, 32))


# ---- batching -----------------------------------------------------------------------------------------
def _epoch(ds: Dataset, seed: int, epoch: int, batch_size: int = 100):
    return list(ds.train_batches(batch_size, seed=seed, epoch=epoch))


def test_train_batches_deterministic_and_cover_every_sample_once(digits):
    a, b = _epoch(digits, 3, 0), _epoch(digits, 3, 0)
    assert len(a) == 14 and a[-1][0].shape[0] == 1347 - 13 * 100  # last partial batch included
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert a[0][0].dtype == torch.float32 and a[0][0].shape[1:] == (1, 8, 8)
    # every sample exactly once: match the flattened rows back to the normalised training set
    x_all = torch.cat([x for x, _ in a]).flatten(1)
    ref = digits.normalize(digits.x_train).flatten(1)
    x_sorted = x_all[np.lexsort(x_all.numpy().T[::-1])]
    ref_sorted = ref[np.lexsort(ref.numpy().T[::-1])]
    assert torch.equal(x_sorted, ref_sorted)
    assert torch.equal(torch.bincount(torch.cat([y for _, y in a])), torch.bincount(digits.y_train))
    # another epoch or another seed reorders
    c, d = _epoch(digits, 3, 1), _epoch(digits, 4, 0)
    assert not torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][1], d[0][1])


def test_test_batches_fixed_order(digits):
    batches = list(digits.test_batches(batch_size=128))
    assert [x.shape[0] for x, _ in batches] == [128, 128, 128, 66]
    assert torch.equal(torch.cat([y for _, y in batches]), digits.y_test)
    assert torch.equal(torch.cat([x for x, _ in batches]), digits.normalize(digits.x_test))


def test_bad_batch_size(digits):
    with pytest.raises(UserError, match="batch_size"):
        next(digits.train_batches(0, seed=0, epoch=0))


# ---- synthetic ----------------------------------------------------------------------------------------
def test_synthetic_fixed_shape_and_learnable():
    a = load_dataset("synthetic", input_shape=(64,), n_classes=4)
    b = load_dataset("synthetic", input_shape=(64,), n_classes=4)
    assert a.input_shape == (64,) and a.n_classes == 4 and (a.n_train, a.n_test) == (1024, 256)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert torch.bincount(a.y_train, minlength=4).min() > 100  # every class present
    # labels come from a linear teacher: a least-squares linear classifier beats chance by far
    x = torch.cat([a.x_train, torch.ones(a.n_train, 1)], 1)
    w = torch.linalg.lstsq(x, F.one_hot(a.y_train, 4).float()).solution
    pred = (torch.cat([a.x_test, torch.ones(a.n_test, 1)], 1) @ w).argmax(1)
    assert (pred == a.y_test).float().mean() > 0.6
    default = load_dataset("synthetic")
    assert default.input_shape == (3, 32, 32) and default.n_classes == 10
    assert next(default.train_batches(32, 0, 0))[0].shape == (32, 3, 32, 32)


# ---- IDX files ----------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write_idx_set(directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0):
    """Four tiny IDX files in the real format; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_loader_reads_real_format(tmp_path, gz, layout):
    directory = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    arrays = _write_idx_set(directory, gz=gz)
    ds = load_dataset("fashion-mnist", root=str(tmp_path))
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.n_classes) == (12, 5, (1, 28, 28), 10)
    assert ds.x_train.dtype == torch.uint8
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    x, _ = next(ds.test_batches())
    expected = (arrays["t10k-images-idx3-ubyte"][:, None] / 255.0 - 0.2860) / 0.3530
    assert np.allclose(x.numpy(), expected, atol=1e-5)


def test_mnist_torchvision_layout_and_normalisation(tmp_path):
    _write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,) and ds.n_train == 12


def test_idx_found_through_env(tmp_path, monkeypatch):
    _write_idx_set(tmp_path / "mnist")
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    assert load_dataset("mnist").n_test == 5


def test_truncated_idx_names_the_file(tmp_path):
    _write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_gzip_and_bad_magic_name_the_file(tmp_path):
    _write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=str(path)):
        load_dataset("mnist", root=tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match="magic number 0x00000803"):  # labels read as images
        read_idx(labels, 0x00000803)


def test_image_label_count_mismatch(tmp_path):
    _write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        load_dataset("mnist", root=tmp_path)


def _idx_header(magic: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), r"train-images-idx3-ubyte(\.gz)? holds no images"),
    (np.zeros((12, 0, 0), np.uint8), np.zeros(12, np.uint8),
     r"train-images-idx3-ubyte(\.gz)? holds images of 0x0 pixels"),
    (np.zeros((12, 28, 0), np.uint8), np.zeros(12, np.uint8), r"holds images of 28x0 pixels"),
    (np.zeros((12, 28, 28), np.uint8), np.zeros(13, np.uint8), r"holds 12 images but .* 13 labels"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_degenerate_idx_files_are_named(tmp_path, images, labels, message, gz):
    _write_idx_set(tmp_path, gz=gz)
    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        (tmp_path / f"{name}.gz" if gz else tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("mnist", root=tmp_path)
    assert "\n" not in str(err.value)


def test_empty_test_split_is_named(tmp_path):
    _write_idx_set(tmp_path, n_test=0)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte holds no images \(its header says 0 samples\)"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_whose_product_overflows_64_bits_is_refused(tmp_path, gz):
    """2^16 * 2^24 * 2^24 = 2^64 wraps to 0 in int64: a header-only file used to pass the size check."""
    _write_idx_set(tmp_path, gz=gz)
    data = _idx_header(0x803, (2**16, 2**24, 2**24))
    name = "train-images-idx3-ubyte"
    (tmp_path / f"{name}.gz" if gz else tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    message = (r"65536x16777216x16777216 \(18446744073709551632 bytes\) but it holds 16 bytes" if not gz
               else r"65536x16777216x16777216 \(18,446,744,073,709,551,616 bytes of pixels\), more than")
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_payload_longer_than_the_header_says_is_refused(tmp_path, gz):
    _write_idx_set(tmp_path, gz=gz)
    name = "t10k-labels-idx1-ubyte"
    data = _idx_bytes(np.zeros(5, np.uint8)) + b"\x00"
    (tmp_path / f"{name}.gz" if gz else tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=rf"{name}.* is truncated or corrupt: its header says 5 \(13 bytes\)"):
        load_dataset("mnist", root=tmp_path)


def test_read_idx_reads_large_gzip_files_in_chunks(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (40, 1000, 1000), dtype=np.uint8)  # 40 MB > one chunk
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(_idx_bytes(array), compresslevel=1))
    assert np.array_equal(read_idx(path, 0x803), array)


def test_missing_directory_names_the_paths(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=missing)
    message = str(err.value)
    assert str(missing) in message and str(missing / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message


def test_partial_idx_set_names_missing_file(tmp_path):
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert (ds.n_train, ds.n_test, ds.n_classes, ds.input_shape) == (60000, 10000, 10, (1, 28, 28))
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 6000))
    x = ds.normalize(ds.x_train)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


# ---- CIFAR-10 -----------------------------------------------------------------------------------------
def _write_cifar(directory: Path, n: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL):
    """Tiny CIFAR-10 python batches in the real dict format; returns (train data, test data, labels)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": b"tiny", b"labels": labels, b"data": data,
                 b"filenames": [b"x.png"] * n}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_loader_values_and_normalisation(tmp_path, protocol):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar10", root=tmp_path)
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.augment) == (20, 4, (3, 32, 32), "cifar")
    data2, labels2 = written["data_batch_2"]
    assert np.array_equal(ds.x_train[4:8].numpy(), data2.reshape(4, 3, 32, 32))
    assert ds.y_train[4:8].tolist() == labels2
    x, y = next(ds.test_batches())
    test_data, test_labels = written["test_batch"]
    mean = np.array([0.491, 0.482, 0.447]).reshape(1, 3, 1, 1)
    std = np.array([0.247, 0.243, 0.262]).reshape(1, 3, 1, 1)
    assert np.allclose(x.numpy(), (test_data.reshape(4, 3, 32, 32) / 255.0 - mean) / std, atol=1e-5)
    assert y.tolist() == test_labels


def test_cifar_root_itself_and_missing(tmp_path):
    _write_cifar(tmp_path)
    assert load_dataset("cifar10", root=tmp_path).n_train == 20
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_dataset("cifar10", root=tmp_path / "nope")


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_malicious_pickle_refused_and_not_executed(tmp_path):
    _write_cifar(tmp_path)
    target = tmp_path / "pwned"
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(target), b"labels": [0]}, f)
    with pytest.raises(DataError, match=r"refusing to unpickle \w+\.system from .*data_batch_3"):
        load_dataset("cifar10", root=tmp_path)
    assert not target.exists()


def test_corrupt_cifar_batch(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        load_dataset("cifar10", root=tmp_path)


def _dump(path: Path, batch) -> None:
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=pickle.DEFAULT_PROTOCOL)


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((4, 3, 32, 32), np.uint8), b"labels": [0] * 4},
     r"its b'data' is uint8 4x3x32x32 with 4 labels"),
    ({b"data": np.zeros((4, 32, 32, 3), np.uint8).reshape(4, -1)[:, :3000], b"labels": [0] * 4},
     r"its b'data' is uint8 4x3000"),
    ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, r"its b'data' is float32 4x3072"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, r"uint8 4x3072 with 3 labels"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, r"holds no images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.5, 2]}, r"b'labels' holds 1\.5; expected ints 0-9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, 2]}, r"b'labels' holds True"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"b'labels' holds 10"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [1]]}, r"b'labels' holds \[0\]"),
    ({b"data": np.zeros(3072, np.uint8), b"labels": [0]}, r"its b'data' is uint8 3072 with 1 labels"),
    ({b"labels": [0]}, r"not a CIFAR-10 batch: expected a dict"),
    ([1, 2], r"not a CIFAR-10 batch: expected a dict"),
])
def test_cifar_batches_of_the_wrong_shape_are_named(tmp_path, batch, message):
    _write_cifar(tmp_path)
    _dump(tmp_path / "data_batch_4", batch)
    with pytest.raises(DataError, match=rf"data_batch_4.*{message}") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "\n" not in str(err.value)


def test_cifar_with_an_empty_test_batch_is_named(tmp_path):
    _write_cifar(tmp_path)
    _dump(tmp_path / "test_batch", {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    with pytest.raises(DataError, match=r"test_batch holds no images"):
        load_dataset("cifar10", root=tmp_path)


def test_every_loader_must_give_samples_in_both_splits(monkeypatch):
    empty = Dataset("digits", torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), torch.zeros(3, 1, 8, 8),
                    torch.zeros(3, dtype=torch.int64), (1, 8, 8), 10, (0.0,), (1.0,))
    monkeypatch.setitem(DATASETS, "digits", lambda root, **_: empty)
    with pytest.raises(DataError, match="digits: the training split holds no samples"):
        load_dataset("digits")
    unlabelled = dataclasses.replace(empty, x_train=torch.zeros(4, 1, 8, 8), y_train=torch.zeros(3, dtype=torch.int64))
    monkeypatch.setitem(DATASETS, "digits", lambda root, **_: unlabelled)
    with pytest.raises(DataError, match=r"training split holds 4 samples but \(3,\) labels"):
        load_dataset("digits")


def test_synthetic_input_past_the_limit_or_memory_is_refused(monkeypatch):
    with pytest.raises(UserError, match=r"synthetic: input_shape 1000000x1000000x1000 has 1,000,000,000,000,000 values "
                                        r"per sample, more than the limit of 1,048,576"):
        load_dataset("synthetic", input_shape=(10**6, 10**6, 1000))
    monkeypatch.setattr(limits, "memory_bytes", lambda: 2**20)
    with pytest.raises(UserError, match=r"synthetic: 1,280 samples of shape 3x32x32 need 0\.0 GiB but this machine"):
        load_dataset("synthetic")


# ---- CIFAR augmentation -------------------------------------------------------------------------------
def _crop_flip_reference(x, dy, dx, flip, pad=4):
    """Per-sample loop with F.pad and slicing: what crop_flip must match."""
    out = []
    for i in range(x.shape[0]):
        p = F.pad(x[i], (pad, pad, pad, pad))
        crop = p[:, int(dy[i]):int(dy[i]) + x.shape[2], int(dx[i]):int(dx[i]) + x.shape[3]]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_crop_flip_matches_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    dy, dx = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    out = crop_flip(x, dy, dx, flip)
    assert out.dtype == torch.uint8 and torch.equal(out, _crop_flip_reference(x, dy, dx, flip))
    identity = crop_flip(x, torch.full((64,), 4), torch.full((64,), 4), torch.zeros(64, dtype=torch.bool))
    assert torch.equal(identity, x)


def _bright_pixel_dataset(n: int = 256, row: int = 13, col: int = 9) -> Dataset:
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, :, row, col] = 255
    y = torch.zeros(n, dtype=torch.int64)
    return Dataset("cifar10", x, y, x.clone(), y.clone(), (3, 32, 32), 10, (0.491, 0.482, 0.447),
                   (0.247, 0.243, 0.262), augment="cifar")


def test_cifar_augmentation_moves_a_pixel_by_at_most_pad():
    row, col = 13, 9
    ds = _bright_pixel_dataset(row=row, col=col)
    batches = list(ds.train_batches(100, seed=7, epoch=2))
    again = list(ds.train_batches(100, seed=7, epoch=2))
    assert [x.shape for x, _ in batches] == [(100, 3, 32, 32), (100, 3, 32, 32), (56, 3, 32, 32)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = list(ds.train_batches(100, seed=8, epoch=2))
    assert not torch.equal(batches[0][0], other[0][0])
    plain = next(ds.test_batches())[0][:100]
    assert not torch.equal(batches[0][0], plain)  # augmentation changed the batch
    x = torch.cat([b[0] for b in batches])
    background = x.amin(dim=(2, 3), keepdim=True)  # zero pixels (and zero padding) normalise to -mean/std
    assert torch.allclose(background[:, :, 0, 0], plain[0, :, 0, 0].expand(256, 3))
    bright = (x[:, 0] > background[:, 0]).nonzero()  # (sample, r, c) of bright pixels
    assert torch.equal(bright[:, 0], torch.arange(256))  # exactly one bright pixel in every sample
    dr, dc = bright[:, 1] - row, bright[:, 2] - col
    dc_flipped = bright[:, 2] - (31 - col)
    flipped = dc.abs() > 4
    assert dr.abs().max() <= 4 and torch.all(dc_flipped[flipped].abs() <= 4)
    assert 0.3 < flipped.float().mean() < 0.7  # about half flipped
    assert len(set(dr.tolist())) == 9 and len(set(dc[~flipped].tolist())) == 9  # all 9 offsets drawn


def test_the_stored_digits_split_is_scikit_learns():
    """The embedded default loads without importing scikit-learn, from a stored split that must be the one
    `train_test_split(..., stratify=y, random_state=0)` makes, over the same numbers `load_digits` gives."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, bunch.target, test_size=0.25, stratify=bunch.target,
                                                        random_state=0)
    data = load_dataset("digits")
    assert torch.equal(data.x_train, torch.from_numpy(x_train)) and torch.equal(data.x_test, torch.from_numpy(x_test))
    assert torch.equal(data.y_train, torch.from_numpy(y_train.astype(np.int64)))
    assert torch.equal(data.y_test, torch.from_numpy(y_test.astype(np.int64)))


@pytest.mark.parametrize("augmented", [True, False])
def test_stacked_batches_equal_each_seeds_own_batches(augmented, digits):
    """`--vary-data-seed`: K masks' batches gathered, augmented and normalised as one tensor are, sample for
    sample and bit for bit, the batches each data seed gives alone."""
    ds = _bright_pixel_dataset(n=250) if augmented else digits
    if augmented:  # distinct images, so that a wrong order or crop shows
        ds = dataclasses.replace(ds, x_train=torch.randint(0, 256, ds.x_train.shape, dtype=torch.uint8,
                                                           generator=torch.Generator().manual_seed(1)))
    seeds = [3, 4, 9]
    alone = [list(ds.train_batches(64, seed, epoch=1)) for seed in seeds]
    stacked = list(ds.train_batches_stacked(64, seeds, epoch=1))
    assert len(stacked) == len(alone[0])
    for b, (x, y) in enumerate(stacked):
        assert x.shape == (3, *alone[0][b][0].shape) and y.shape == (3, len(alone[0][b][1]))
        for k in range(3):
            assert torch.equal(x[k], alone[k][b][0]) and torch.equal(y[k], alone[k][b][1])


def test_cuda_batches_are_copied_from_pinned_memory_without_waiting(monkeypatch):
    """On CUDA a batch goes through page-locked memory and a non-blocking copy (pin_memory and the copy are
    recorded here: the machine has no GPU)."""
    from masklab.data.dataset import to_device

    calls = []
    real_to = torch.Tensor.to

    def pin_memory(self):
        calls.append("pin")
        return self

    def to(self, *args, **kwargs):
        calls.append(("to", str(args[0]) if args else None, kwargs.get("non_blocking", False)))
        return real_to(self, "cpu")

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    to_device(torch.zeros(3), "cuda")
    assert calls == ["pin", ("to", "cuda", True)]
    calls.clear()
    to_device(torch.zeros(3), "cpu")
    assert calls == [("to", "cpu", False)]
