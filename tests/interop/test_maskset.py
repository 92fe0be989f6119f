"""Runs from masks held in memory (masklab.interop.maskset): the fast source of many masks for analyses at scale
(issue 24). The bits are kept exactly, the same masks find the same run, bad sets are one-line errors, and an
analysis of 2,000 masks stays within its byte budget."""

from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab.analysis.random_sets import random_mask_bits
from masklab.errors import UserError
from masklab.report import analyze
from masklab.report.settings import AnalysisSettings
from masklab.store.bits import MaskSet, make_layout

# the digits MLP at width 0.25: fc1 64 x 64, fc2 64 x 64, fc3 10 x 64
SHAPES = [("fc1", (64, 64)), ("fc2", (64, 64)), ("fc3", (10, 64))]


def random_set(n: int, seed: int = 0) -> MaskSet:
    keep = [int(np.prod(s)) // 2 for _, s in SHAPES]
    layout = make_layout([n for n, _ in SHAPES], [s for _, s in SHAPES], keep)
    return MaskSet(random_mask_bits(layout, np.array([keep]), n, np.random.default_rng(seed)), layout)


def test_the_run_holds_the_masks_bit_for_bit_and_every_analysis_runs(tmp_path, digits):
    masks = random_set(6)
    run = masklab.import_maskset(masks, model="mlp", dataset="digits", width=0.25, runs_dir=tmp_path / "runs")
    assert np.array_equal(np.asarray(run.masks.bits), np.asarray(masks.bits)) and len(run) == 6
    assert run.has_architecture and run.table["test_acc"].between(0, 1).all()
    again = masklab.import_maskset(masks, model="mlp", dataset="digits", width=0.25, runs_dir=tmp_path / "runs")
    assert again.path == run.path  # the same masks: the same run
    report = analyze(run, tmp_path / "figures", pairs=2, points=3)
    assert {"distances", "clusters", "embedding", "barriers"} <= set(report.tables)


def test_an_evaluated_import_stores_the_predictions_the_analysis_would_compute(tmp_path, digits):
    from masklab.analysis.functional import test_predictions

    masks = random_set(4, seed=3)
    stored = masklab.import_maskset(masks, model="mlp", dataset="digits", width=0.25, runs_dir=tmp_path / "a")
    bare = masklab.import_maskset(masks, model="mlp", dataset="digits", width=0.25, runs_dir=tmp_path / "b",
                                  evaluate=False)
    assert all(stored.has_extra(i, "predictions") for i in stored.ids)
    assert not any(bare.has_extra(i, "predictions") for i in bare.ids)
    computed = test_predictions(bare, cache=False)  # evaluated here: the rebuilt subnetworks' pass
    assert np.array_equal(test_predictions(stored), computed)
    labels = stored.dataset().y_test.numpy()
    assert [np.mean(computed[row] == labels) for row in range(4)] == [stored.record(i)["test_acc"]
                                                                       for i in stored.ids]
    assert stored.verify()["status"].eq("ok").all()


def test_sets_that_do_not_fit_the_model_are_refused(tmp_path):
    with pytest.raises(UserError, match="check model, dataset and width"):
        masklab.import_maskset(random_set(3), model="mlp", dataset="digits", runs_dir=tmp_path)
    bits = np.asarray(random_set(3).bits).copy()
    bits[0, 0] ^= np.uint64(1)  # one bit more or less in fc1 for mask 0
    with pytest.raises(UserError, match="different numbers of weights per layer"):
        masklab.import_maskset(MaskSet(bits, random_set(3).layers), model="mlp", dataset="digits", width=0.25,
                               runs_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


# N = 2,000: 4 pair matrices (whole mask, 3 layers) of 2,000^2 uint16 = 32 MB, + 8 MB for tables and figures. The
# functional stage (masklab.report.functional) is left out: its own pair folders add 2,000^2 x 10 bytes.
BYTE_BUDGET = 40_000_000


@pytest.mark.slow
def test_an_analysis_of_2000_masks_writes_less_than_its_byte_budget(tmp_path):
    run = masklab.import_maskset(random_set(2000, seed=1), model="mlp", dataset="digits", width=0.25,
                                 runs_dir=tmp_path / "runs", evaluate=False)
    settings = AnalysisSettings(pairs=2, points=3, n_random=19, functional=False)
    report = analyze(run, tmp_path / "figures", settings=settings)
    written = sum(p.stat().st_size for folder in (report.folder, report.index.parent) for p in folder.rglob("*")
                  if p.is_file())
    assert written < BYTE_BUDGET, f"{written:,} bytes written"
    assert report.pairs is not None and report.pairs.n == 2000
    assert "distances" not in report.tables  # 2,000 masks: no long table, the matrices hold every pair
    assert report.tables["distance_histogram"]["count"].sum() == 2000 * 1999 // 2
    samples = report.tables["samples"].set_index("stage")
    assert samples.loc["structure test", "n_used"] == 200 and samples.loc["clustering", "n_used"] == 2000


def test_reading_an_imports_records_parses_run_json_once_not_once_per_record(tmp_path, monkeypatch):
    """Each record and mask file read builds its repair hint, which asks whether the run is an import; an
    import's run.json names every source, so parsing it per read was quadratic (2,000 masks: 145 s)."""
    from masklab.store import files as F

    run = masklab.import_maskset(random_set(40), model="mlp", dataset="digits", width=0.25,
                                 runs_dir=tmp_path / "runs", evaluate=False)
    parsed, real = [], F.read_json
    monkeypatch.setattr(F, "read_json", lambda path: parsed.append(Path(path).name) or real(path))
    F._is_import_version.cache_clear()
    opened = masklab.open_run(run.path)
    assert len(opened.records) == 40 and len(np.asarray(opened.masks.bits)) == 40
    assert parsed.count("run.json") <= 2, parsed.count("run.json")
    assert "masklab import" in F.restore_hint(run.path)  # still says how an import's masks come back
