import re

import pandas as pd
import pytest

import masklab
from masklab.cli import main
from masklab.data import load_dataset
from masklab.errors import UserError
from masklab.report import analyze, compare

TINY = dict(masks=5, epochs=3, width=0.25, snapshot_every=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("runs")
    a = masklab.generate(runs_dir=root, data=digits, **TINY)
    b = masklab.generate(runs_dir=root, data=digits, method="biprop", **TINY)
    return root, a, b


def test_analyze_writes_every_table_figure_and_an_index(runs, tmp_path):
    _, run, _ = runs
    report = analyze(run, tmp_path / "figures", pairs=3, points=5, formats=("png", "svg"))
    expected_tables = {"distances", "baseline", "layer_summary", "random_distances", "consensus",
                       "consensus_histogram", "union_coverage", "clusters", "cluster_summary",
                       "structure_vs_random", "embedding", "barriers", "interpolation", "barrier_correlation",
                       "trajectories", "settling"}
    assert expected_tables <= set(report.tables)
    for name in expected_tables:
        for suffix in (".csv", ".parquet"):
            assert (run.path / "analysis" / f"{name}{suffix}").exists(), name
    parquet = pd.read_parquet(run.path / "analysis" / "layer_summary.parquet")
    assert list(parquet["layer"].unique()) == ["all", "fc1", "fc2", "fc3"]
    expected_figures = {"per_layer_similarity", "distance_histogram", "consensus_histogram", "distance_heatmap",
                        "mds", "interpolation", "barrier_vs_distance", "trajectories"}  # 5 masks: MDS
    assert expected_figures <= set(report.figures)
    page = report.index.read_text()
    for name, png in report.figures.items():
        assert png.exists() and png.with_suffix(".svg").exists()
        assert f'src="{png.name}"' in page, name
    assert "matching all" in page and "chance" in page
    summary = report.summary()
    assert {"quantity", "value"} <= set(summary.columns) and len(summary) >= 8


def test_analyze_png_only_links_no_svg(runs, tmp_path):
    _, run, _ = runs
    report = analyze(run, tmp_path, pairs=1, points=3, embedding=False, formats=("png",))
    assert report.figures and all(p.suffix == ".png" and p.exists() for p in report.figures.values())
    assert not list((tmp_path / run.id).glob("*.svg")) and ".svg" not in report.index.read_text()
    both = analyze(run, tmp_path / "both", pairs=1, points=3, embedding=False, formats="png,svg")
    assert "SVG</a>" in both.index.read_text()
    # PNG again into the same folder: the SVGs of the earlier run are out of date, removed and not linked
    again = analyze(run, tmp_path / "both", pairs=1, points=3, embedding=False)
    assert not list((tmp_path / "both" / run.id).glob("*.svg")) and "SVG</a>" not in again.index.read_text()
    # PNG only is the default
    default = analyze(run, tmp_path / "default", pairs=1, points=3, embedding=False)
    assert not list((tmp_path / "default" / run.id).glob("*.svg"))
    with pytest.raises(UserError, match="formats"):
        analyze(run, tmp_path, pairs=1, points=3, embedding=False, formats="png,gif")
    assert default.figures


def test_analyze_command_prints_the_index_last(runs, tmp_path, capsys):
    root, run, _ = runs
    assert main(["analyze", run.id, "--runs-dir", str(root), "--figures", str(tmp_path), "--pairs", "1",
                 "--points", "3", "--no-embedding", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith("index.html") and (tmp_path / run.id / "index.html").exists()
    assert main(["analyze", "no-such-run", "--runs-dir", str(root)]) == 2


def test_compare_two_methods_on_the_same_weights(runs, tmp_path):
    _, a, b = runs
    report = compare(a, b, tmp_path)
    comparison = report.tables["comparison"]
    assert {"across", "within A", "within B", "chance"} <= set(comparison.columns)
    whole = comparison[(comparison["layer"] == "all") & (comparison["metric"] == "matching")].iloc[0]
    assert 0.45 < whole["across"] < 0.6 and whole["chance"] == pytest.approx(0.5, abs=1e-3)
    # both runs use score seeds 0..4: pairs of the same seed are split out from the others
    assert whole["across, other seeds"] < whole["across, same score seed"]
    n = len(a.ids)
    assert whole["across"] == pytest.approx((n * whole["across, same score seed"]
                                             + n * (n - 1) * whole["across, other seeds"]) / n ** 2)
    assert set(report.tables["joint_embedding"]["run"]) == {a.id, b.id}
    assert report.index.exists() and "joint_mds" in report.figures  # 10 masks in all: MDS, not UMAP
    assert "MDS, not UMAP" in report.key_numbers["joint embedding"]


def test_compare_refuses_different_layouts(runs, tmp_path, digits):
    root, a, _ = runs
    other = masklab.generate(runs_dir=root, data=digits, masks=2, epochs=1, width=0.5)
    with pytest.raises(UserError, match="different layer layouts"):
        compare(a, other, tmp_path)


def test_interpolate_command(runs, capsys):
    root, run, _ = runs
    assert main(["interpolate", run.id, "0", "1", "--points", "4", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "loss_barrier" in out and len(re.findall(r"^\s*0\s+\d\.\d{4}", out, re.M)) == 4
    assert main(["interpolate", run.id, "0", "--runs-dir", str(root)]) == 2


# ---- what the page and the summary say (issue 16) -----------------------------------------------------------
def test_key_numbers_say_what_the_numbers_carry(runs, tmp_path):
    _, run, _ = runs
    report = analyze(run, tmp_path, pairs=3, points=3)
    keys = report.key_numbers
    assert keys["pairs compared"].startswith("10 pairs of 5 masks")
    assert "sd of one random pair" in keys["matching fc1"] and "chance" in keys["jaccard all"]
    structure = keys["cluster structure vs random masks"]
    assert "99 random sets" in structure and "p = " in structure and " sd;" in structure and "5 masks" in structure
    assert keys["embedding"].startswith("MDS, not UMAP: 5 masks are fewer than 50")
    assert keys["barrier vs Hamming distance"].startswith("not estimated: 3 pairs")
    assert "rho" not in keys["barrier vs Hamming distance"]
    summary = report.tables["layer_summary"]
    assert {"z_vs_chance", "chance_sd", "chance_se", "z_mean_vs_chance", "se_masks", "n_masks"} <= set(summary.columns)
    assert report.tables["barrier_correlation"]["spearman_rho"].isna().all()
    # per-stage seconds: every stage, the figures, the tables and the page; shown on the page
    assert {"distances", "consensus", "clustering", "embedding", "interpolation", "figures", "tables",
            "index"} <= set(report.seconds)
    assert all(v >= 0 for v in report.seconds.values())
    page = report.index.read_text()
    assert "Where the time went" in page and "Reading these numbers" in page and "99 sets" in page


def test_embedding_coloured_by_cluster_only_when_the_structure_test_finds_it(runs, tmp_path, monkeypatch):
    from masklab.analysis import clustering

    _, run, _ = runs
    plain = analyze(run, tmp_path / "a", pairs=0, points=3)
    test = clustering.StructureTest(plain.tables["structure_vs_random"], pd.DataFrame())
    if not test.finds_structure:
        assert "coloured by test accuracy only" in plain.captions["mds"]
    monkeypatch.setattr(clustering.StructureTest, "finds_structure", property(lambda self: True))
    found = analyze(run, tmp_path / "b", pairs=0, points=3)
    assert "and by cluster" in found.captions["mds"]
    monkeypatch.setattr(clustering.StructureTest, "finds_structure", property(lambda self: False))
    none = analyze(run, tmp_path / "c", pairs=0, points=3)
    assert "coloured by test accuracy only" in none.captions["mds"]


def test_cli_formats_seconds_and_quiet(runs, tmp_path, capsys):
    root, run, other = runs
    assert main(["analyze", run.id, "--runs-dir", str(root), "--figures", str(tmp_path), "--pairs", "1",
                 "--points", "3", "--formats", "png,svg"]) == 0
    out = capsys.readouterr().out
    assert "seconds: distances" in out and "total" in out and "sd of one random pair" in out
    assert list((tmp_path / run.id).glob("*.svg"))
    assert main(["analyze", run.id, "--runs-dir", str(root), "--formats", "gif", "--quiet"]) == 2
    assert main(["compare", run.id, other.id, "--runs-dir", str(root), "--figures", str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("index.html")
    assert main(["interpolate", run.id, "--pairs", "3", "--points", "3", "--runs-dir", str(root), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "no correlation with Hamming distance: 3 pairs" in captured.out and captured.err == ""
    assert main(["interpolate", run.id, "0", "1", "--points", "3", "--runs-dir", str(root)]) == 0
    assert "point" in capsys.readouterr().err  # the progress line, on stderr
