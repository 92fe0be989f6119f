"""The landscape across settings (masklab.analysis.landscape) on a small real sweep: the chance values are the
closed forms at each cell's own setting, the settings columns are the runs' resolved settings, and cells are
cached by their settings and masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import masklab
from masklab.analysis import landscape as L
from masklab.config import RunConfig
from masklab.sweep import sweep_runs

SETTINGS = L.LandscapeSettings(pairs=2, points=5, n_random=9, cka_samples=60, cka_random_masks=2, orders=3)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    base = RunConfig(epochs=1, width=0.25, device="cpu")
    runs = sweep_runs(base, ["edge-popup", "biprop+iwr:recycle_every=1"], [0.5, 0.9], seeds=4,
                      runs_dir=tmp_path_factory.mktemp("runs"))
    return runs, masklab.landscape(runs, SETTINGS)


def test_one_row_per_cell_metric_and_layer_with_the_resolved_settings(cells):
    runs, table = cells
    assert list(table.columns) == L.LANDSCAPE_COLUMNS
    assert not table.duplicated(["run", "metric", "layer"]).any() and table["run"].nunique() == 4
    for run in runs:
        row = table[table["run"] == run.id].iloc[0]
        assert (row["model"], row["width"], row["sparsity"], row["epochs"], row["masks"]) == \
            ("mlp", 0.25, run.config.sparsity, 1, 4)
        assert row["lr"] == run.config.resolved("lr") and row["weight_init"] == run.config.resolved("weight_init")
    iwr = table[table["method"] == "biprop+iwr"].iloc[0]
    assert (iwr["recycling"], iwr["recycle_every"], iwr["recycle_rate"]) == ("iwr", 1, 0.2)
    assert set(table["family"]) == set(L.FAMILIES)
    assert set(table.loc[table["family"] == "cka", "layer"]) == {"fc1", "fc2", "logits"}


def test_chance_values_are_the_closed_forms_at_each_cells_density(cells):
    runs, table = cells
    for run in runs:
        rows = table[table["run"] == run.id].set_index(["metric", "layer"])
        n = run.layers["n_bits"].to_numpy(float)
        k = run.layers["n_keep"].to_numpy(float) / n
        for name, kl in zip(run.layers["layer"], k):
            assert rows.loc[("matching", name), "chance"] == pytest.approx(kl ** 2 + (1 - kl) ** 2, abs=1e-15)
            assert rows.loc[("jaccard", name), "chance"] == pytest.approx(kl / (2 - kl), abs=1e-15)
        assert rows.loc[("matching", "all"), "chance"] == pytest.approx((n * (k ** 2 + (1 - k) ** 2)).sum() / n.sum())
        assert rows.loc[("jaccard", "all"), "chance"] == pytest.approx((n * k ** 2).sum() / (n * k * (2 - k)).sum())
        density = run.config.keep
        assert rows.loc[("matching", "all"), "chance"] == pytest.approx(density ** 2 + (1 - density) ** 2, abs=2e-3)
        assert rows.loc[("test_acc", "all"), "chance"] == 0.1
        assert rows.loc[("kept_by_all", "fc1"), "chance"] == pytest.approx(k[0] ** 4)
        assert rows.loc[("kept_by_none", "fc1"), "chance"] == pytest.approx((1 - k[0]) ** 4)
        # the value and its distance from chance, in sd of one random pair
        values = np.asarray(masklab.distances(run.masks, metric="matching", form="square"))[np.triu_indices(4, 1)]
        m = rows.loc[("matching", "all")]
        assert m["value"] == pytest.approx(values.mean()) and m["n"] == 6
        assert m["sd_from_chance"] == pytest.approx((m["value"] - m["chance"]) / m["chance_sd"])
        baseline = masklab.random_baseline(run.masks).set_index("layer")
        assert m["chance_sd"] == baseline.loc["all", "matching_std"]


def test_rows_state_their_sample_and_structure_its_p_floor(cells):
    _, table = cells
    barrier = table[table["metric"] == "loss_barrier"].iloc[0]
    assert barrier["n"] == 2 and barrier["sample"].startswith("2 of 6 pairs, drawn at random (seed 0)")
    silhouette = table[table["metric"] == "silhouette"].iloc[0]
    assert silhouette["p_floor"] == 0.1 and silhouette["p"] >= 0.1 and "9 random mask sets" in silhouette["sample"]
    assert table.loc[table["metric"] == "disagreement_vs_hamming", "value"].isna().all()  # 6 pairs: too few
    keys = L.key_table(table)
    assert len(keys) == 4 and keys["cka_last_hidden"].notna().all()


def test_cells_are_cached_by_settings_and_masks(cells, monkeypatch):
    runs, table = cells
    run = runs[0]
    assert L.cell_cache_path(run, SETTINGS).is_file()

    def no_measuring(*args, **kwargs):
        raise AssertionError("a cached cell must not be measured again")

    monkeypatch.setattr(L, "cell_rows", no_measuring)
    again = masklab.landscape([run.path], SETTINGS)
    pd.testing.assert_frame_equal(again, table[table["run"] == run.id].reset_index(drop=True))
    other = L.LandscapeSettings(**{**SETTINGS.__dict__, "pairs": 3})
    assert L.cell_cache_path(run, other) != L.cell_cache_path(run, SETTINGS)
    with pytest.raises(AssertionError, match="must not be measured"):
        masklab.landscape([run], other)


def test_a_sweep_table_names_its_cells(cells):
    runs, table = cells
    from masklab.sweep import sweep_table

    again = masklab.landscape(sweep_table(runs), SETTINGS, runs_dir=runs[0].path.parent)
    assert set(again["run"]) == set(table["run"])
