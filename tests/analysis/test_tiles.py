"""All-pairs distances as tiles on a real Dask LocalCluster (2 worker processes): equal to the in-process
kernel exactly, for every metric, form and layer; workers read a run's bit matrix by path; a worker killed
mid-computation does not change the result."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

import masklab
from masklab.analysis import tiles
from masklab.cli import main
from masklab.store.bits import MaskSet

pytest.importorskip("distributed")

SIZES = [7, 64, 65, 130, 1000, 3, 1]  # layers that end inside, on and one past a word boundary


@pytest.fixture(scope="module")
def client():
    with tiles.local_client(2) as c:
        yield c
        cluster = c.cluster
    cluster.close()


@pytest.fixture(scope="module")
def masks():
    rng = np.random.default_rng(0)
    density = rng.uniform(0.05, 0.95, len(SIZES))
    matrix = np.concatenate([rng.random((64, s)) < d for s, d in zip(SIZES, density)], axis=1)
    return MaskSet.from_bool(matrix, SIZES, ids=np.arange(100, 164))


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)
    return a.equals(b)


@pytest.mark.parametrize("metric", ["hamming", "hamming_norm", "matching", "jaccard"])
def test_dask_tiles_equal_the_in_process_kernel(client, masks, metric):
    for form, per_layer in (("long", False), ("long", True), ("square", False)):
        here = masklab.distances(masks, metric=metric, per_layer=per_layer, form=form)
        there = masklab.distances(masks, metric=metric, per_layer=per_layer, form=form, client=client)
        assert equal(here, there), (form, per_layer)
    here = masklab.distance_matrices(masks, metric=metric)
    assert equal(here, masklab.distance_matrices(masks, metric=metric, client=client))


def test_many_small_tiles_and_a_memory_mapped_result(client, masks, tmp_path):
    from masklab.analysis.kernels import intersection_counts, layer_bounds

    bounds = layer_bounds(masks.layers["word_start"], masks.layers["word_stop"])
    expected = intersection_counts(masks.bits, None, bounds, with_total=True)
    for rows in (1, 5, 64):
        got = tiles.dask_intersection_counts(masks.bits, bounds, client, with_total=True, rows_per_tile=rows,
                                             out=tmp_path / f"counts{rows}.npy")
        assert isinstance(got, np.memmap) and np.array_equal(got, expected)
        assert np.array_equal(np.load(tmp_path / f"counts{rows}.npy"), expected)


def test_workers_read_a_run_matrix_by_path(client, tiny_runs):
    run = tiny_runs(keep_scores=False, masks=6)
    source = tiles.bits_source(run.masks.bits)
    assert source is not None and source[0] == "file" and source[1].endswith("masks.bits")
    here = masklab.distances(run.masks, metric="jaccard", per_layer=True)
    assert equal(here, masklab.distances(run.masks, metric="jaccard", per_layer=True, client=client))


def _die_once(marker, *args):
    """A tile that kills its worker process the first time any tile runs (the marker file says so)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return tiles.tile_counts(*args)


def test_a_worker_killed_mid_computation_still_gives_the_exact_result(client, masks, tmp_path):
    import cloudpickle

    from masklab.analysis.kernels import intersection_counts, layer_bounds

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    marker = str(tmp_path / "died")
    bounds = layer_bounds(masks.layers["word_start"], masks.layers["word_stop"])
    got = tiles.dask_intersection_counts(masks.bits, bounds, client, rows_per_tile=8,
                                         tile_function=lambda *a: _die_once(marker, *a))
    assert os.path.exists(marker)  # a worker did die
    assert np.array_equal(got, intersection_counts(masks.bits, None, bounds))


def test_distances_command_on_a_local_cluster(tmp_path, capsys, tiny_runs):
    run = tiny_runs(keep_scores=False, masks=6)
    out_local = tmp_path / "here.npy"
    assert main(["distances", str(run.path), "--per-layer", "--metric", "jaccard", "--out", str(out_local),
                 "--quiet"]) == 0
    out_dask = tmp_path / "there.npy"
    assert main(["distances", str(run.path), "--per-layer", "--metric", "jaccard", "--out", str(out_dask),
                 "--scheduler", "local", "--workers", "2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out_dask) and any(line.split()[0] == "fc1" for line in printed)
    here, there = np.load(out_local), np.load(out_dask)
    assert here.shape == (4, 6, 6) and np.array_equal(here, there)
    square = masklab.distance_matrices(run.masks, metric="jaccard")
    assert np.array_equal(here[1], square["fc1"].to_numpy())
    parquet = tmp_path / "long.parquet"
    assert main(["distances", str(run.path), "--out", str(parquet), "--quiet"]) == 0
    assert pd.read_parquet(parquet).equals(masklab.distances(run.masks))  # the same default metric


def test_distances_command_bad_input_is_one_line(tmp_path, capsys, tiny_run):
    run = tiny_run
    assert main(["distances", str(run.path), "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["distances", str(run.path), "--scheduler", "tcp://127.0.0.1:1", "--out",
                 str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("masklab: error:") for line in err)
