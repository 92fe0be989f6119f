"""Distances against scipy on bools, backends against each other, forms, cross-run, streaming."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist, pdist, squareform

import masklab.analysis.kernels as kernels
from masklab.analysis import METRICS, distance_matrices, distances, intersections
from masklab.errors import UserError
from masklab.store.bits import MaskSet

AWKWARD_SIZES = [1, 63, 64, 65, 129, 1, 700]   # layers off word boundaries, one-bit layers


def random_bools(n_masks: int, sizes, seed: int, density: float | None = None) -> np.ndarray:
    """Random masks with a different density per row (and one all-empty row when there are enough)."""
    rng = np.random.default_rng(seed)
    rows = rng.uniform(0.05, 0.95, size=(n_masks, 1)) if density is None else density
    matrix = rng.random((n_masks, sum(sizes))) < rows
    if n_masks > 3:
        matrix[3] = False
    return matrix


def scipy_metric(metric: str, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Square matrix of `metric` from scipy on bools (x with itself, or x against y)."""
    pairwise = (lambda name: squareform(pdist(x, name))) if y is None else (lambda name: cdist(x, y, name))
    n_bits = x.shape[1]
    if metric == "hamming":
        return np.rint(pairwise("hamming") * n_bits).astype(np.int64)
    if metric == "hamming_norm":
        return pairwise("hamming")
    if metric == "matching":
        return 1.0 - pairwise("hamming")
    return 1.0 - pairwise("jaccard")       # scipy: distance 0 (Jaccard 1) when both are empty


def layer_columns(sizes):
    offsets = np.cumsum([0, *sizes])
    return {f"layer{k}": slice(offsets[k], offsets[k + 1]) for k in range(len(sizes))}


def check_square(table: pd.DataFrame, expected: np.ndarray, metric: str) -> None:
    if metric == "hamming":
        np.testing.assert_array_equal(table.to_numpy(), expected)
    else:
        np.testing.assert_allclose(table.to_numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_masks", [1, 2, 63, 65])
@pytest.mark.parametrize("metric", METRICS)
def test_square_matches_scipy_whole_and_per_layer(n_masks, metric):
    x = random_bools(n_masks, AWKWARD_SIZES, seed=n_masks)
    masks = MaskSet.from_bool(x, AWKWARD_SIZES)
    tables = distance_matrices(masks, metric=metric)
    assert list(tables) == ["all", *layer_columns(AWKWARD_SIZES)]
    check_square(tables["all"], scipy_metric(metric, x), metric)
    for name, columns in layer_columns(AWKWARD_SIZES).items():
        check_square(tables[name], scipy_metric(metric, x[:, columns]), metric)


@pytest.mark.parametrize("n_masks", [1, 2, 65])
@pytest.mark.parametrize("metric", METRICS)
def test_long_form_matches_scipy_condensed(n_masks, metric):
    x = random_bools(n_masks, AWKWARD_SIZES, seed=10 + n_masks)
    ids = np.arange(n_masks) * 7 + 3
    masks = MaskSet.from_bool(x, AWKWARD_SIZES, ids=ids)
    table = distances(masks, metric=metric, per_layer=True)
    assert list(table.columns) == ["mask_a", "mask_b", "layer", "metric", "value"]
    assert (table["metric"] == metric).all()
    upper_i, upper_j = np.triu_indices(n_masks, 1)
    for name, columns in {"all": slice(None), **layer_columns(AWKWARD_SIZES)}.items():
        rows = table[table["layer"] == name]
        np.testing.assert_array_equal(rows["mask_a"], ids[upper_i])
        np.testing.assert_array_equal(rows["mask_b"], ids[upper_j])
        expected = scipy_metric(metric, x[:, columns])[upper_i, upper_j]
        np.testing.assert_allclose(rows["value"].to_numpy(np.float64), expected, rtol=0, atol=1e-12)
    assert len(table) == (len(AWKWARD_SIZES) + 1) * len(upper_i)


def test_whole_mask_only_has_layer_all():
    x = random_bools(9, AWKWARD_SIZES, seed=3)
    table = distances(MaskSet.from_bool(x, AWKWARD_SIZES), metric="jaccard")
    assert set(table["layer"]) == {"all"}
    np.testing.assert_allclose(table["value"], 1 - pdist(x, "jaccard"), atol=1e-12)
    assert table["value"].dtype == np.float64
    assert distances(MaskSet.from_bool(x, AWKWARD_SIZES))["value"].dtype == np.int64


def test_several_metrics_in_one_long_table():
    x = random_bools(6, AWKWARD_SIZES, seed=4)
    table = distances(MaskSet.from_bool(x, AWKWARD_SIZES), metric=["matching", "jaccard"], per_layer=True)
    assert list(pd.unique(table["metric"])) == ["matching", "jaccard"]
    assert len(table) == 2 * 8 * 15


@pytest.mark.parametrize("metric", METRICS)
def test_cross_run_matches_cdist(metric):
    x, y = random_bools(5, AWKWARD_SIZES, seed=5), random_bools(67, AWKWARD_SIZES, seed=6)
    a = MaskSet.from_bool(x, AWKWARD_SIZES, ids=range(100, 105))
    b = MaskSet.from_bool(y, AWKWARD_SIZES)
    tables = distance_matrices(a, b, metric=metric)
    assert tables["all"].shape == (5, 67)
    assert list(tables["all"].index) == list(range(100, 105))
    check_square(tables["all"], scipy_metric(metric, x, y), metric)
    for name, columns in layer_columns(AWKWARD_SIZES).items():
        check_square(tables[name], scipy_metric(metric, x[:, columns], y[:, columns]), metric)
    table = distances(a, b, metric=metric)
    assert len(table) == 5 * 67
    np.testing.assert_allclose(table["value"].to_numpy(np.float64), scipy_metric(metric, x, y).ravel(),
                               atol=1e-12)


def test_square_form_is_symmetric_with_self_distance_on_the_diagonal():
    x = random_bools(65, AWKWARD_SIZES, seed=7)
    masks = MaskSet.from_bool(x, AWKWARD_SIZES, ids=np.arange(65)[::-1])
    for metric, diagonal in [("hamming", 0), ("hamming_norm", 0), ("matching", 1), ("jaccard", 1)]:
        for name, table in distance_matrices(masks, metric=metric).items():
            matrix = table.to_numpy()
            np.testing.assert_array_equal(matrix, matrix.T, err_msg=f"{metric} {name}")
            np.testing.assert_array_equal(np.diag(matrix), diagonal, err_msg=f"{metric} {name}")
            assert table.index.name == "mask_a" and table.columns.name == "mask_b"
            assert list(table.index) == list(range(64, -1, -1)) == list(table.columns)


def test_jaccard_of_two_empty_masks_is_one():
    masks = MaskSet.from_bool(np.zeros((2, 70), bool), [5, 65])
    assert (distances(masks, metric="jaccard", per_layer=True)["value"] == 1.0).all()


def backend_counts(backend: str, x, y=None, sizes=AWKWARD_SIZES, per_layer=True) -> np.ndarray:
    a = MaskSet.from_bool(x, sizes)
    b = None if y is None else MaskSet.from_bool(y, sizes)
    return np.asarray(intersections(a, b, per_layer=per_layer, backend=backend).counts)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("n_masks", [1, 2, 63, 65])
def test_backends_agree_with_the_numba_kernel(backend, n_masks):
    if backend == "torch":
        pytest.importorskip("torch")
    x, y = random_bools(n_masks, AWKWARD_SIZES, seed=20), random_bools(n_masks + 3, AWKWARD_SIZES, seed=21)
    for per_layer in (True, False):
        np.testing.assert_array_equal(backend_counts(backend, x, per_layer=per_layer),
                                      backend_counts("numba", x, per_layer=per_layer))
        np.testing.assert_array_equal(backend_counts(backend, x, y, per_layer=per_layer),
                                      backend_counts("numba", x, y, per_layer=per_layer))


@pytest.mark.parametrize("tile_rows", [1, 5, 16, 200])
def test_torch_backend_streams_row_blocks(tile_rows, monkeypatch):
    """The torch (GPU) backend holds one tile of counts at a time on the device, never the whole (L, N, N)
    result, and gives the numba kernel's integers whatever the tile size (run here on the CPU)."""
    torch = pytest.importorskip("torch")
    x, y = random_bools(41, AWKWARD_SIZES, seed=40), random_bools(23, AWKWARD_SIZES, seed=41)
    a, b = MaskSet.from_bool(x, AWKWARD_SIZES), MaskSet.from_bool(y, AWKWARD_SIZES)
    layers = len(AWKWARD_SIZES)
    tile_bytes = 8 * layers * tile_rows * tile_rows
    largest = []
    real_zeros = torch.zeros

    def zeros(*shape, **kwargs):  # the counts are the int64 tensors the backend allocates
        out = real_zeros(*shape, **kwargs)
        if out.dtype == torch.int64:
            largest.append(out.numel() * 8)
        return out

    monkeypatch.setattr(torch, "zeros", zeros)
    monkeypatch.setattr(kernels, "TORCH_TILE_BYTES", tile_bytes)
    for other in (None, b):
        largest.clear()
        got = np.asarray(intersections(a, other, per_layer=True, backend="torch").counts)
        expected = np.asarray(intersections(a, other, per_layer=True, backend="numba").counts)
        np.testing.assert_array_equal(got, expected)
        assert largest and max(largest) <= tile_bytes


def test_kernel_counts_against_brute_force_with_tiny_blocks(monkeypatch):
    """Segments, cache chunks and row blocks much smaller than the data: every boundary is crossed."""
    sizes = [1, 300, 64, 1000, 3]
    x, y = random_bools(70, sizes, seed=30), random_bools(37, sizes, seed=31)
    monkeypatch.setattr(kernels, "SEGMENT_WORDS", 3)
    monkeypatch.setattr(kernels, "CACHE_CHUNK_BYTES", 8 * 70 * 5)
    expected_self = (x[:, None, :] & x[None, :, :]).sum(axis=2)
    expected_cross = (x[:, None, :] & y[None, :, :]).sum(axis=2)
    for block_bytes in (None, 8 * 24 * 10):   # 10 words per row: row blocks of 16 rows
        a, b = MaskSet.from_bool(x, sizes), MaskSet.from_bool(y, sizes)
        self_counts = intersections(a, per_layer=True, backend="numba", block_bytes=block_bytes).counts
        cross_counts = intersections(a, b, per_layer=True, backend="numba", block_bytes=block_bytes).counts
        np.testing.assert_array_equal(self_counts[0], expected_self)
        np.testing.assert_array_equal(cross_counts[0], expected_cross)
        offsets = np.cumsum([0, *sizes])
        for k in range(len(sizes)):
            columns = slice(offsets[k], offsets[k + 1])
            np.testing.assert_array_equal(self_counts[k + 1],
                                          (x[:, None, columns] & x[None, :, columns]).sum(axis=2))


def test_read_only_memory_map_streamed_in_blocks(tmp_path):
    x = random_bools(50, AWKWARD_SIZES, seed=40)
    in_memory = MaskSet.from_bool(x, AWKWARD_SIZES)
    path = tmp_path / "bits.u64"
    in_memory.bits.tofile(path)
    mapped = np.memmap(path, dtype=np.uint64, mode="r", shape=in_memory.bits.shape)
    masks = MaskSet(mapped, in_memory.layers)
    expected = intersections(in_memory, per_layer=True).counts
    for block_bytes in (None, 16 * 8 * in_memory.n_words):
        np.testing.assert_array_equal(intersections(masks, per_layer=True, block_bytes=block_bytes).counts, expected)
    cross = intersections(masks, in_memory, per_layer=True, block_bytes=16 * 8 * in_memory.n_words).counts
    np.testing.assert_array_equal(cross, expected)


def test_non_contiguous_bits_are_handled():
    x = random_bools(20, AWKWARD_SIZES, seed=41)
    contiguous = MaskSet.from_bool(x, AWKWARD_SIZES)
    fortran = MaskSet(np.asfortranarray(contiguous.bits), contiguous.layers)
    np.testing.assert_array_equal(intersections(fortran, per_layer=True).counts,
                                  intersections(contiguous, per_layer=True).counts)


def test_intersections_arrays_for_reuse():
    x = random_bools(12, AWKWARD_SIZES, seed=50)
    result = intersections(MaskSet.from_bool(x, AWKWARD_SIZES), per_layer=True)
    assert result.counts.shape == (len(AWKWARD_SIZES) + 1, 12, 12)
    assert result.layers[0] == "all" and result.n_bits[0] == sum(AWKWARD_SIZES)
    np.testing.assert_array_equal(result.kept_a[:, 0], x.sum(axis=1))
    np.testing.assert_allclose(result.condensed("hamming_norm"), pdist(x, "hamming"), atol=1e-12)
    expected_jaccard = 1 - squareform(pdist(x[:, -700:], "jaccard"))
    np.testing.assert_allclose(result.metric("jaccard", "layer6"), expected_jaccard, atol=1e-12)


def test_refuses_bad_input():
    a = MaskSet.from_bool(random_bools(3, [10, 20], seed=1), [10, 20])
    other_layout = MaskSet.from_bool(random_bools(3, [20, 10], seed=1), [20, 10])
    with pytest.raises(UserError, match="layouts"):
        distances(a, other_layout)
    with pytest.raises(UserError, match="metric"):
        distances(a, metric="cosine")
    with pytest.raises(UserError, match="form"):
        distances(a, form="wide")
    with pytest.raises(UserError, match="one metric"):
        distances(a, metric=["hamming", "jaccard"], form="square")
    with pytest.raises(UserError, match="backend"):
        distances(a, backend="cuda")
    with pytest.raises(UserError, match="MaskSet"):
        distances(np.zeros((2, 3), bool))


@pytest.mark.parametrize("n", [0, 1, 2, 255, 256, 257, 600])
def test_mirror_upper_triangle_by_blocks(n):
    counts = np.random.default_rng(n).integers(0, 1000, size=(3, n, n))
    expected = np.triu(counts) + np.triu(counts, 1).transpose(0, 2, 1)
    kernels.mirror_upper_triangle(counts)
    np.testing.assert_array_equal(counts, expected)


def test_numpy_fallback_when_numba_is_missing(monkeypatch):
    monkeypatch.setattr(kernels, "_numba_available", lambda: False)
    monkeypatch.setattr(kernels, "_cuda_available", lambda: False)
    assert kernels.resolve_backend("auto") == "numpy"
    x = random_bools(10, AWKWARD_SIZES, seed=60)
    np.testing.assert_array_equal(backend_counts("auto", x), backend_counts("numba", x))


def test_importing_the_analysis_package_stays_light():
    import subprocess
    import sys

    code = ("import sys, masklab.analysis; "
            "print(sorted(m for m in ('numba', 'scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_auto_takes_numpy_for_small_inputs_until_the_numba_kernel_is_loaded(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(kernels, "_cuda_available", lambda: False)
    small = kernels.SMALL_WORD_PAIRS - 1
    monkeypatch.setattr(kernels, "_KERNEL_MODULE", "masklab.not.loaded")
    assert kernels.resolve_backend("auto", small) == "numpy"
    assert kernels.resolve_backend("auto", kernels.SMALL_WORD_PAIRS) == "numba"
    assert kernels.resolve_backend("auto") == "numba"
    monkeypatch.setattr(kernels, "_KERNEL_MODULE", "numpy")  # a module that is loaded: numba costs nothing more
    assert kernels.resolve_backend("auto", small) == "numba"
    x = random_bools(10, AWKWARD_SIZES, seed=61)
    np.testing.assert_array_equal(backend_counts("numpy", x), backend_counts("numba", x))


def test_distances_returns_one_dataframe_and_its_docstring_examples_hold():
    import doctest
    import importlib

    masks = MaskSet.from_bool(random_bools(4, AWKWARD_SIZES, seed=70), AWKWARD_SIZES)
    for kwargs in ({}, {"per_layer": True}, {"form": "square"}, {"metric": ["jaccard", "matching"]}):
        assert isinstance(distances(masks, **kwargs), pd.DataFrame)
    with pytest.raises(UserError, match="distance_matrices"):
        distances(masks, per_layer=True, form="square")
    module = importlib.import_module("masklab.analysis.distances")
    assert doctest.testmod(module).failed == 0


def test_intersections_and_distances_default_alike():
    import inspect

    same = ("other", "per_layer", "backend", "threads", "block_bytes", "client")
    a, b = inspect.signature(intersections).parameters, inspect.signature(distances).parameters
    assert {k: a[k].default for k in same} == {k: b[k].default for k in same}
