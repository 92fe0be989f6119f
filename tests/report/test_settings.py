"""Analyses kept per settings (masklab.report.settings, issue 23 part 3): a second analysis with other settings
overwrites nothing of the first, each page names its settings, the run's page and the results catalog list every
analysis of the run."""

import json
import shutil

import numpy as np
import pytest

from masklab.analysis.distances import intersections, stored_intersections
from masklab.analysis.functional import _pair_hamming
from masklab.analysis.sampling import mask_sample
from masklab.errors import UserError
from masklab.report import analyze
from masklab.report.settings import AnalysisSettings
from masklab.store import catalog
from masklab.store.run import open_run


@pytest.fixture
def run(tiny_runs, tmp_path):
    """A run of 5 masks of its own (a copy of a shared tiny run): analyze writes into it."""
    source = tiny_runs(masks=5)
    (tmp_path / "runs").mkdir()
    shutil.copytree(source.path, tmp_path / "runs" / source.path.name)
    return open_run(tmp_path / "runs" / source.path.name)


def snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_settings_ids_are_canonical():
    assert AnalysisSettings().id == "default"
    assert AnalysisSettings(pairs=4).id == AnalysisSettings(pairs=4, points=30).id != AnalysisSettings(pairs=5).id
    assert len(AnalysisSettings(cluster_masks=None).id) == 8
    assert AnalysisSettings(pairs=4, random_state=1).describe() == "pairs = 4, random_state = 1"
    with pytest.raises(UserError, match="cluster_masks = 2 is invalid"):
        AnalysisSettings(cluster_masks=2)


def test_a_second_analysis_with_other_settings_overwrites_nothing(run, tmp_path):
    figures = tmp_path / "figures"
    (figures / run.id).mkdir(parents=True)
    (figures / run.id / "index.html").write_text("<html>a page of an older masklab</html>")
    first = analyze(run, figures, pairs=1, points=3, embedding=False)
    before = snapshot(first.folder) | {("fig",) + k.parts: v for k, v in snapshot(first.index.parent).items()}
    second = analyze(run, figures, pairs=2, points=3, embedding=False)
    assert first.settings.id != second.settings.id and first.folder != second.folder
    assert (snapshot(first.folder) | {("fig",) + k.parts: v for k, v in snapshot(first.index.parent).items()}) \
        == before
    for report in (first, second):
        page = report.index.read_text()
        assert f"Settings of this analysis: {report.settings.id}" in page and report.settings.describe() in page
        settings = json.loads((report.folder / catalog.SETTINGS_FILE).read_text())
        assert settings["settings_id"] == report.settings.id and settings["settings"]["pairs"] in (1, 2)
    runs_page = (figures / run.id / "index.html").read_text()
    for report in (first, second):
        assert f'href="{report.settings.id}/index.html"' in runs_page
    # the older page is kept beside it, and linked
    assert "a page of an older masklab" in (figures / run.id / "index-earlier.html").read_text()
    assert 'href="index-earlier.html"' in runs_page
    table = catalog.results(run.path.parent)
    rows = table[table["run_id"] == run.id].set_index("settings_id")
    assert set(rows.index) == {first.settings.id, second.settings.id}
    assert rows.loc[second.settings.id, "matching all"] == pytest.approx(
        float(second.key_numbers.set_index("name").loc["matching all", "value"]))


def test_samples_are_stated_in_the_tables_and_on_the_page(run, tmp_path):
    settings = AnalysisSettings(pairs=2, points=3, cluster_masks=4, embedding_masks=4, structure_masks=4,
                                n_random=9, random_state=3)
    report = analyze(run, tmp_path, settings=settings)
    samples = report.tables["samples"].set_index("stage")
    expected = mask_sample(5, 4, seed=3)
    assert samples.loc["clustering", ["n_used", "n_total", "seed"]].tolist() == [4, 5, 3]
    assert samples.loc["barriers", "unit"] == "pairs" and "stratified" in samples.loc["barriers", "how"]
    clustered = sorted(report.tables["clusters"]["mask_id"])
    assert clustered == sorted(np.asarray(run.ids)[expected.positions].tolist())
    assert report.tables["cluster_summary"][["sample_n", "sample_of", "sample_seed"]].iloc[0].tolist() == [4, 5, 3]
    assert report.tables["structure_vs_random"]["n_masks"].iloc[0] == 4
    assert sorted(report.tables["embedding"]["mask_id"]) == clustered  # nested samples: the same masks
    assert "4 of 5 masks (a uniform random sample without replacement, seed 3)" in report.index.read_text()
    again = analyze(run, tmp_path, settings=settings)
    assert again.tables["clusters"]["mask_id"].tolist() == report.tables["clusters"]["mask_id"].tolist()
    assert again.tables["barriers"][["mask_a", "mask_b"]].equals(report.tables["barriers"][["mask_a", "mask_b"]])



def test_the_functional_stage_reads_the_pairs_hamming_distances_from_the_stored_counts(run, tmp_path):
    report = analyze(run, tmp_path, settings=AnalysisSettings(pairs=0, embedding=False, functional=False))
    a, b = np.triu_indices(len(run.ids), 1)
    stored = _pair_hamming(run, a, b, None, stored_intersections(report.pairs))
    expected = intersections(run.masks, per_layer=False).metric("hamming_norm", "all")
    assert np.array_equal(stored, expected[a, b]) and np.array_equal(_pair_hamming(run, a, b, None, None),
                                                                     expected[a, b])
