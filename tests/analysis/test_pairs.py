"""The pair store (masklab.analysis.pairs): N x N matrices per quantity and layer, exact against the long form."""

import numpy as np
import pandas as pd
import pytest

import masklab
from masklab.analysis.distances import METRICS, intersections, long_table, store_intersections, stored_intersections
from masklab.analysis.pairs import INTERSECTION, PairStore, count_dtype
from masklab.errors import UserError
from masklab.store.bits import MaskSet


@pytest.fixture(scope="module")
def masks():
    rng = np.random.default_rng(3)
    return MaskSet.from_bool(rng.random((23, 700)) < 0.3, layer_sizes=[300, 330, 70])


def test_stored_distances_equal_the_long_form_exactly(masks, tmp_path):
    store = PairStore.create(tmp_path / "pairs", masks.ids)
    # small row blocks: the matrices are filled in several blocks and mirrored
    result = store_intersections(masks, store, block_bytes=8 * 4 * len(masks) * 5)
    reopened = stored_intersections(PairStore.open(tmp_path / "pairs"))
    for metric in METRICS:
        expected = masklab.distances(masks, metric=metric, per_layer=True)
        pd.testing.assert_frame_equal(long_table(result, metric), expected, check_exact=True)
        pd.testing.assert_frame_equal(long_table(reopened, metric), expected, check_exact=True)
    direct = intersections(masks, per_layer=True)
    for k, layer in enumerate(direct.layers):
        assert np.array_equal(np.asarray(reopened.counts[k]), direct.counts[k]), layer
        assert reopened.counts[k].dtype == count_dtype(int(direct.kept_a[:, k].max()))
    assert np.array_equal(reopened.condensed("hamming_norm"), direct.condensed("hamming_norm"))
    assert list(store.quantities()["layer"]) == ["all", "layer0", "layer1", "layer2"]
    assert store.attrs(INTERSECTION, "layer1") == {"n_bits": 330}


def test_long_form_back_to_matrices_is_exact(masks, tmp_path):
    store = PairStore.create(tmp_path / "a", masks.ids)
    rng = np.random.default_rng(0)
    values = rng.random((len(masks), len(masks)))
    values = values + values.T
    store.write("disagreement", values, "all", unit="fraction")
    long = store.long("disagreement", diagonal=True)
    assert len(long) == len(masks) * (len(masks) + 1) // 2
    again = PairStore.create(tmp_path / "b", masks.ids)
    again.write_long(long, "disagreement")
    assert np.array_equal(np.asarray(again.read("disagreement")), values)
    square = again.square("disagreement")
    assert list(square.index) == list(masks.ids) and square.to_numpy()[2, 5] == values[2, 5]


def test_a_store_for_other_masks_is_emptied_and_reads_are_checked(masks, tmp_path):
    store = PairStore.create(tmp_path / "p", masks.ids)
    store.write("x", np.ones((len(masks), len(masks))))
    assert PairStore.create(tmp_path / "p", masks.ids).has("x")   # same masks: kept
    other = PairStore.create(tmp_path / "p", masks.ids[:5])       # other masks: nothing of the old left
    assert not other.has("x") and not (tmp_path / "p" / "x").exists()
    with pytest.raises(UserError, match="must be 5 x 5"):
        other.write("x", np.ones((3, 3)))
    with pytest.raises(UserError, match="no 'y' matrix"):
        other.read("y")


def test_a_failed_write_leaves_nothing(masks, tmp_path):
    store = PairStore.create(tmp_path / "p", masks.ids)
    with pytest.raises(RuntimeError):
        with store.writer("half", "all", np.float32) as out:
            out[:3] = 1.0
            raise RuntimeError("killed")
    assert not store.has("half") and not PairStore.open(tmp_path / "p").has("half")
    assert [p.name for p in (tmp_path / "p").rglob("*.npy")] == ["ids.npy"]


def test_the_summary_from_matrices_equals_the_long_tables(masks, tmp_path):
    from masklab.analysis import layer_summary, random_baseline, with_baseline
    from masklab.analysis.summary import pair_summary

    # masks whose per-layer counts differ: several nulls, weighted by how many pairs share them
    long = masklab.distances(masks, metric=["matching", "jaccard"], per_layer=True)
    baseline = random_baseline(masks)
    expected = layer_summary(with_baseline(long, masks), baseline)
    store = PairStore.create(tmp_path / "pairs", masks.ids)
    stored = store_intersections(masks, store)
    got = pair_summary(stored, baseline, block_bytes=8 * len(masks) * 4)  # several row blocks
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, rtol=1e-12, check_dtype=False)
