import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import masklab
from masklab.cli import main
from masklab.errors import UserError
from masklab.report import analyze, compare

TINY = dict(masks=5, epochs=3, width=0.25, snapshot_every=1)


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
                       "trajectories", "settling", "disagreement", "disagreement_summary", "ensemble", "cka",
                       "cka_summary", "distance_histogram",
                       "samples"}
    assert expected_tables <= set(report.tables)
    folder = run.path / "analysis" / report.settings.id
    assert report.folder == folder and report.index.parent.name == report.settings.id
    for name in expected_tables:
        for suffix in (".csv", ".parquet"):
            assert (folder / f"{name}{suffix}").exists(), name
    parquet = pd.read_parquet(folder / "layer_summary.parquet")
    assert list(parquet["layer"].unique()) == ["all", "fc1", "fc2", "fc3"]
    expected_figures = {"per_layer_similarity", "distance_histogram", "consensus_histogram", "distance_heatmap",
                        "mds", "interpolation", "barrier_vs_distance", "trajectories", "disagreement", "ensemble",
                        "cka"}  # 5 masks: MDS
    assert expected_figures <= set(report.figures)
    page = report.index.read_text()
    for name, png in report.figures.items():
        assert png.exists() and png.with_suffix(".svg").exists()
        assert f'src="{png.name}"' in page, name
    assert "matching all" in page and "chance" in page
    summary = report.summary()
    assert {"quantity", "value"} <= set(summary.columns) and len(summary) >= 8


def test_analyze_reports_functional_similarity(runs, tmp_path):
    """The function stage: its tables are the analysis' own, its figures are on the page, and its key numbers
    give the references, the gains and CKA's random-mask chance; `functional=False` leaves it out."""
    from masklab.analysis.functional import ensemble_orders

    _, run, _ = runs
    report = analyze(run, tmp_path, pairs=0, embedding=False)
    d = report.tables["disagreement"]
    assert len(d) == 10 and set(d.columns) >= {"mask_a", "mask_b", "disagreement", "reference",
                                               "reference_given_class", "hamming_norm"}
    from masklab.analysis.pairs import PairStore

    store = PairStore.open(report.folder / "functional" / "disagreement")  # the pairs as matrices too
    counts = store.read("disagreement_count", mmap=False)
    i, j = np.triu_indices(5, 1)
    assert store.ids.tolist() == list(run.ids) and (np.diag(counts) == 0).all()
    assert np.allclose(counts[i, j] / store.attrs("disagreement_count")["n_test"], d["disagreement"])
    assert PairStore.open(report.folder / "functional" / "cka").layers("cka")[-1] == "logits"
    ensemble = report.tables["ensemble"]
    one = ensemble[(ensemble["k"] == 1) & (ensemble["vote"] == "majority")]["acc_mean"].iloc[0]
    assert one == pytest.approx(run.table["test_acc"].to_numpy()[ensemble_orders(5, 10, 0)[:, 0]].mean())
    keys = report.key_numbers.set_index("name")
    disagreement = keys.loc["prediction disagreement"]
    assert "independent given the class" in disagreement["text"] and disagreement["n"] == 10
    assert disagreement["value"] == pytest.approx(d["disagreement"].mean())
    assert disagreement["chance"] == pytest.approx(d["reference"].mean())
    assert "over the mean mask" in keys.loc["ensemble of all evaluated masks (averaged softmax)", "text"]
    cka = keys.loc["linear CKA logits"]
    assert "random masks" in cka["text"] and cka["n"] == 10 and 0 < cka["chance"] < 1
    page = report.index.read_text()
    assert all(f'src="{name}.png"' in page for name in ("disagreement", "ensemble", "cka"))
    without = analyze(run, tmp_path / "without", pairs=0, embedding=False, functional=False)
    assert "ensemble" not in without.tables and "prediction disagreement" not in set(without.key_numbers["name"])


def test_analyze_png_only_links_no_svg(runs, tmp_path):
    _, run, _ = runs
    report = analyze(run, tmp_path, pairs=1, points=3, embedding=False, formats=("png",))
    assert report.figures and all(p.suffix == ".png" and p.exists() for p in report.figures.values())
    assert not list(report.index.parent.glob("*.svg")) and ".svg" not in report.index.read_text()
    both = analyze(run, tmp_path / "both", pairs=1, points=3, embedding=False, formats="png,svg")
    assert "SVG</a>" in both.index.read_text() and list(both.index.parent.glob("*.svg"))
    # PNG again into the same folder: the SVGs of the earlier run are out of date, removed and not linked
    again = analyze(run, tmp_path / "both", pairs=1, points=3, embedding=False)
    assert again.index == both.index
    assert not list(again.index.parent.glob("*.svg")) and "SVG</a>" not in again.index.read_text()
    # PNG only is the default
    default = analyze(run, tmp_path / "default", pairs=1, points=3, embedding=False)
    assert not list(default.index.parent.glob("*.svg"))
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
    assert {"across", "within A", "within B", "chance within A", "chance within B", "chance across"} <= \
        set(comparison.columns)
    whole = comparison[(comparison["layer"] == "all") & (comparison["metric"] == "matching")].iloc[0]
    assert 0.45 < whole["across"] < 0.6 and whole["chance across"] == pytest.approx(0.5, abs=1e-3)
    # both runs use score seeds 0..4: pairs of the same seed are split out from the others
    assert whole["across, other seeds"] < whole["across, same score seed"]
    n = len(a.ids)
    assert whole["across"] == pytest.approx((n * whole["across, same score seed"]
                                             + n * (n - 1) * whole["across, other seeds"]) / n ** 2)
    assert set(report.tables["joint_embedding"]["run"]) == {a.id, b.id}
    assert report.index.exists() and "joint_mds" in report.figures  # 10 masks in all: MDS, not UMAP
    assert "MDS, not UMAP" in report.key_numbers.set_index("name").loc["joint embedding", "text"]


def _matching_chance(run_a, run_b) -> float:
    """Whole-network matching of two independent random masks with these runs' per-layer counts, from the
    definition: a layer of n bits keeping k_a and k_b matches on k_a k_b + (1 - k_a)(1 - k_b) of them."""
    n = run_a.layers["n_bits"].to_numpy(float)
    ka, kb = run_a.layers["n_keep"].to_numpy() / n, run_b.layers["n_keep"].to_numpy() / n
    return float((n * (ka * kb + (1 - ka) * (1 - kb))).sum() / n.sum())


def test_compare_gives_each_set_of_pairs_its_own_chance_and_says_when_densities_differ(tiny_runs, tmp_path,
                                                                                         capsys):
    a, b = tiny_runs(), tiny_runs(sparsity=0.9)
    report = compare(a, b, tmp_path, embedding=True)
    whole = report.tables["comparison"].set_index(["layer", "metric"]).loc[("all", "matching")]
    assert whole["chance within A"] == pytest.approx(_matching_chance(a, a), abs=1e-12)  # about 50%
    assert whole["chance within B"] == pytest.approx(_matching_chance(b, b), abs=1e-12)  # about 82%
    assert whole["chance across"] == pytest.approx(_matching_chance(a, b), abs=1e-12)  # about 50%
    assert whole["chance within B"] > 0.75 > 0.55 > whole["chance within A"]
    keys = report.key_numbers.set_index("name")
    assert keys.loc["matching within B", "chance"] == pytest.approx(whole["chance within B"])
    assert "chance 8" in keys.loc["matching within B", "text"]  # 82.xx%, not the across chance of 50%
    # the joint embedding says that runs of other densities separate by their counts alone
    n = a.layers["n_bits"].to_numpy()
    gap = abs(a.layers["n_keep"].to_numpy() - b.layers["n_keep"].to_numpy()).sum() / n.sum()
    assert keys.loc["densities differ", "value"] == pytest.approx(gap)
    caption = report.captions["joint_mds"]
    assert "sparsity 50% vs 90%" in caption and f"{gap:.4f}" in caption
    page = report.index.read_text()
    assert "<dt>chance within B</dt>" in page and "densities differ" in page
    # the command line prints each set beside its own chance
    assert main(["compare", str(a.path), str(b.path), "--figures", str(tmp_path / "cli")]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "chance within A" in header and "chance within B" in header and "chance across" in header
    # equal densities: one chance column, and no density note
    same = compare(a, tiny_runs(method="biprop"), tmp_path / "same")
    assert "densities differ" not in set(same.key_numbers["name"])
    from masklab.report import comparison_text

    assert "chance" in comparison_text(same.tables["comparison"]).columns


def test_analyze_of_an_unfinished_run_says_so_on_the_terminal_and_the_page(tiny_run, tmp_path, capsys):
    import shutil

    path = tmp_path / "runs" / tiny_run.id
    shutil.copytree(tiny_run.path, path)
    for file in [*path.glob("masks/000002.*"), *path.glob("extras/000002.*"), path / "masks.bits"]:
        file.unlink()
    assert main(["analyze", str(path), "--figures", str(tmp_path / "figs"), "--pairs", "0", "--no-embedding",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    printed = captured.out.strip().splitlines()  # the page of these settings (figures/<run>/<settings id>/)
    assert len(printed) == 1 and Path(printed[0]).name == "index.html"
    assert Path(printed[0]).is_relative_to(tmp_path / "figs" / tiny_run.id)
    assert f"run {tiny_run.id} is unfinished: 2 of 3 masks are finished" in captured.err
    page = Path(printed[0]).read_text()
    assert 'class="warning"' in page and "is unfinished: 2 of 3 masks are finished" in page
    report = analyze(path, tmp_path / "figs", pairs=0, embedding=False)
    assert report.warnings and report.key_numbers.set_index("name").loc["masks analysed", "value"] == 2
    from masklab.report.base import unfinished_warning

    assert unfinished_warning(tiny_run) is None  # a finished run: nothing to say


def test_compare_refuses_different_layouts(runs, tmp_path, digits):
    root, a, _ = runs
    other = masklab.generate(runs_dir=root, data=digits, masks=2, epochs=1, width=0.5)
    with pytest.raises(UserError, match="different layer layouts"):
        compare(a, other, tmp_path)


def test_interpolate_command(runs, capsys):
    root, run, _ = runs
    assert main(["interpolate", run.id, "0", "1", "--points", "4", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "loss_barrier" in out and len(re.findall(r"^\s*\d\.\d{4}\s+\d\.\d{4}", out, re.M)) == 4
    assert main(["interpolate", run.id, "0", "--runs-dir", str(root)]) == 2


def test_interpolate_prints_a_header_and_one_unit_per_quantity(runs, capsys):
    """Accuracy in %, the error barrier in percentage points (as `analyze` says it), a header naming the run,
    the pair and the path, and an order column that says which order (none on the soft path)."""
    root, run, _ = runs
    assert main(["interpolate", run.id, "0", "1", "--points", "3", "--runs-dir", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run {run.id}: masks 0 -> 1, soft path, 3 points; loss in nats, accuracy in %")
    header = lines[1].split()
    assert header == ["t", "hamming_to_a", "hamming_to_b", "loss", "acc"]  # no order column on the soft path
    rows = lines[2:5]
    assert all(re.fullmatch(r"\d+\.\d{2}%", row.split()[-1]) for row in rows), rows
    barrier_row = lines[-1]
    assert re.search(r"-?\d+\.\d{2} points$", barrier_row), barrier_row
    curve = masklab.interpolate(run, 0, 1, points=3)
    from masklab.analysis.interpolation import barrier

    assert barrier_row.split()[-2] == f"{100 * barrier(curve)['error_barrier'].iloc[0]:.2f}"
    assert main(["interpolate", run.id, "0", "1", "--points", "3", "--path", "hamming", "--orders", "2",
                 "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run.id}: masks 0 -> 1, hamming path in 2 random bit orders, 3 points")
    assert out.count("random order 0") == 3 + 1 and out.count("random order 1") == 3 + 1  # 3 points + barrier
    assert main(["interpolate", run.id, "--pairs", "2", "--points", "3", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run.id}: barriers of 2 sampled mask pairs") and out.count(" points") >= 2


def test_interpolate_quiet_prints_only_the_path_of_out_and_says_what_it_evaluates_on(runs, tmp_path, capsys,
                                                                                    monkeypatch):
    """--quiet prints only --out's path (nothing without --out); --out writes the curve (or the barriers) as
    CSV or Parquet, the same table as the Python API; the header says which test images every point is
    evaluated on, and --full-test evaluates on all of them (t=0 then reads the accuracy the run records)."""
    import masklab.cli.interpolate as cli_interpolate

    root, run, _ = runs
    out = tmp_path / "sub" / "curve.csv"
    args = ["interpolate", run.id, "0", "1", "--points", "3", "--runs-dir", str(root)]
    assert main([*args, "--quiet", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{out}\n" and captured.err == ""
    expected = masklab.interpolate(run, 0, 1, points=3)
    pd.testing.assert_frame_equal(pd.read_csv(out), expected, check_dtype=False)
    assert main([*args, "--quiet"]) == 0 and capsys.readouterr().out == ""
    barriers = tmp_path / "barriers.parquet"
    assert main(["interpolate", run.id, "--pairs", "2", "--points", "3", "--runs-dir", str(root), "--out",
                 str(barriers)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(barriers)
    assert len(pd.read_parquet(barriers)) == 2 and "loss_barrier" in pd.read_parquet(barriers).columns
    assert main([*args, "--out", str(tmp_path / "curve.txt")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "curve.txt").exists()
    # the header says what the points are evaluated on
    n_test = run.dataset().n_test
    assert main(args) == 0
    assert f"evaluated on the whole test split ({n_test:,} images)" in capsys.readouterr().out.splitlines()[0]
    monkeypatch.setattr(cli_interpolate, "DEFAULT_EVAL_SAMPLES", 100)
    assert main([*args, "--out", str(out)]) == 0
    assert f"a fixed subset of 100 of the {n_test:,} test images" in capsys.readouterr().out.splitlines()[0]
    assert pd.read_csv(out)["acc"].iloc[0] == pytest.approx(masklab.interpolate(run, 0, 1, points=3,
                                                                                eval_samples=100)["acc"].iloc[0])
    assert main([*args, "--full-test", "--out", str(out)]) == 0
    assert "whole test split" in capsys.readouterr().out.splitlines()[0]
    recorded = run.table.set_index("mask_id")["test_acc"]
    curve = pd.read_csv(out)
    assert curve["acc"].iloc[0] == pytest.approx(recorded[0], abs=1e-9)
    assert curve["acc"].iloc[-1] == pytest.approx(recorded[1], abs=1e-9)


# ---- what the page and the summary say (issue 16) -----------------------------------------------------------
def test_key_numbers_say_what_the_numbers_carry(runs, tmp_path):
    _, run, _ = runs
    report = analyze(run, tmp_path, pairs=3, points=3)
    table = report.key_numbers
    assert list(table.columns) == ["name", "value", "unit", "chance", "sd_from_chance", "n", "text"]
    numbers = table.set_index("name")
    assert (numbers.loc["pairs compared", "value"], numbers.loc["pairs compared", "n"]) == (10, 5)
    matching = numbers.loc["matching fc1"]  # the one number behind the sentence, as the tables hold it
    layer = report.tables["layer_summary"].set_index(["metric", "layer"]).loc[("matching", "fc1")]
    assert (matching["unit"], matching["n"]) == ("fraction", 10)
    assert (matching["value"], matching["chance"], matching["sd_from_chance"]) == \
        pytest.approx((layer["mean"], layer["baseline"], layer["z_vs_chance"]))
    assert np.isnan(numbers.loc["embedding", "value"]) and numbers.loc["embedding", "n"] == 5  # words only
    keys = table.set_index("name")["text"]
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
    from masklab.analysis import cluster_structure

    _, run, _ = runs
    plain = analyze(run, tmp_path / "a", pairs=0, points=3)
    test = cluster_structure.StructureTest(plain.tables["structure_vs_random"], pd.DataFrame())
    if not test.finds_structure:
        assert "coloured by test accuracy only" in plain.captions["mds"]
    monkeypatch.setattr(cluster_structure.StructureTest, "finds_structure", property(lambda self: True))
    found = analyze(run, tmp_path / "b", pairs=0, points=3)
    assert "and by cluster" in found.captions["mds"]
    monkeypatch.setattr(cluster_structure.StructureTest, "finds_structure", property(lambda self: False))
    none = analyze(run, tmp_path / "c", pairs=0, points=3)
    assert "coloured by test accuracy only" in none.captions["mds"]


def test_cli_formats_seconds_and_quiet(runs, tmp_path, capsys):
    root, run, other = runs
    assert main(["analyze", run.id, "--runs-dir", str(root), "--figures", str(tmp_path), "--pairs", "1",
                 "--points", "3", "--formats", "png,svg"]) == 0
    out = capsys.readouterr().out
    assert "seconds: distances" in out and "total" in out and "sd of one random pair" in out
    assert list((tmp_path / run.id).glob("*/*.svg"))
    assert main(["analyze", run.id, "--runs-dir", str(root), "--formats", "gif", "--quiet"]) == 2
    assert main(["compare", run.id, other.id, "--runs-dir", str(root), "--figures", str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("index.html")
    assert main(["interpolate", run.id, "--pairs", "3", "--points", "3", "--runs-dir", str(root)]) == 0
    assert "no correlation with Hamming distance: 3 pairs" in capsys.readouterr().out
    assert main(["interpolate", run.id, "--pairs", "3", "--points", "3", "--runs-dir", str(root), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert main(["interpolate", run.id, "0", "1", "--points", "3", "--runs-dir", str(root)]) == 0
    assert "point" in capsys.readouterr().err  # the progress line, on stderr


# ---- pages, units and words (issue 16, item 3) --------------------------------------------------------------
def _links(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


def test_written_pages_hold_no_machine_paths(runs, tmp_path):
    """Links and paths on a page are relative to the page: the folder can move, be committed or served."""
    _, a, b = runs
    report = analyze(a, tmp_path / "figs", pairs=1, points=3, formats="png,svg")
    compared = compare(a, b, tmp_path / "figs", formats="png,svg")
    for page in (report.index, compared.index):
        text = page.read_text()
        for root in {str(tmp_path), str(tmp_path.resolve()), str(a.path), str(a.path.resolve())}:
            assert root not in text, f"{page.name} names the machine path {root}"
        links = _links(text)
        assert links and not [link for link in links if link.startswith("/") or "://" in link]
        for link in links:  # every link resolves from the page's own folder
            assert (page.parent / link).exists(), link
    assert f"{a.id}/analysis/" in report.index.read_text()  # where the tables are, relative to the page


def test_index_page_shows_a_readable_settings_table_not_raw_json(runs, tmp_path):
    _, a, b = runs
    page = analyze(a, tmp_path, pairs=0, points=3, embedding=False).index.read_text()
    assert "Config (non-default)" not in page and "{" not in page.split("<body>")[1]  # no JSON dump
    settings = page.split("<h2>Settings</h2>")[1].split("</table>")[0]
    rows = dict(re.findall(r"<tr><td>([^<]+)</td><td(?: class=\"num\")?>([^<]+)</td>", settings))
    assert rows["method"] == "edge-popup" and rows["sparsity"] == "50%" and rows["epochs"] == "3"
    assert rows["lr"] == "0.1" and rows["batch size"] == "128" and rows["weight init"] == "signed-constant"
    assert rows["dataset"] == "digits" and rows["model"] == "mlp" and rows["score seeds"] == "0..4"
    assert rows["weight seed"] == "0" and rows["data seed"] == "0"
    assert "the method&#x27;s default" in settings
    both = compare(a, b, tmp_path / "cmp").index.read_text().split("<h2>Settings</h2>")[1].split("</table>")[0]
    assert "<td>weight init</td><td>signed-constant</td><td>kaiming-normal</td>" in both


def test_compare_page_has_the_analyze_look_and_says_what_the_columns_are(runs, tmp_path):
    from masklab.report import PAGE_STYLE

    _, a, b = runs
    report = compare(a, b, tmp_path, formats="png,svg")
    page = report.index.read_text()
    assert 'border="1"' not in page and PAGE_STYLE in page and PAGE_STYLE in analyze(
        a, tmp_path, pairs=0, points=3, embedding=False).index.read_text()
    for words in ("<dt>within A</dt>", "<dt>within B</dt>", "<dt>across</dt>", "<dt>chance across</dt>",
                  "two different masks of run A", "one mask of run A and one of run B"):
        assert words in page, words
    assert "SVG</a>" in page and 'href="joint_mds.svg"' in page
    assert re.search(r"<td class=\"num\">\d+\.\d{2}%</td>", page)  # matching in %
    assert re.search(r"<td class=\"num\">0\.\d{4}</td>", page)  # Jaccard as a fraction
    keys = report.key_numbers.set_index("name")["text"]
    assert keys["matching across runs"].endswith("%)") and "%" not in keys["jaccard across runs"]
    # the joint embedding's legend is short: A and B with their method, not the run ids
    assert set(report.tables["joint_embedding"]["side"]) == {"A: edge-popup s0.5", "B: biprop s0.5"}


def test_joint_embedding_legend_leaves_the_figure_to_the_points(runs):
    from masklab.analysis.compare import joint_embedding
    from masklab.plots import embedding_scatter

    _, a, b = runs
    points, _, _ = joint_embedding(a, b)
    fig = embedding_scatter(points, ["side"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    assert legend.width < 0.3 * fig.bbox.width


def test_compare_command_prints_matching_in_percent(runs, tmp_path, capsys):
    root, a, b = runs
    assert main(["compare", a.id, b.id, "--runs-dir", str(root), "--figures", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "matching in %, Jaccard as a fraction" in out
    matching = [line for line in out.splitlines() if " matching " in f" {line} " and "whole network" in line]
    jaccard = [line for line in out.splitlines() if " jaccard " in f" {line} " and "whole network" in line]
    assert matching and all(v.endswith("%") for v in matching[0].split()[3:])
    assert jaccard and not any(v.endswith("%") for v in jaccard[0].split()[3:])


def test_consensus_key_numbers_say_no_mask(runs, tmp_path):
    _, run, _ = runs
    keys = list(analyze(run, tmp_path, pairs=0, points=3, embedding=False).key_numbers["name"])
    assert "weights kept by no mask" in keys and "weights kept by all masks" in keys
    assert not [k for k in keys if "none masks" in k]


def test_analyze_of_a_small_run_loads_neither_umap_nor_numbas_distance_kernels(runs, tmp_path):
    # 16 masks are drawn by MDS (scikit-learn), not UMAP, and their distances need no compiled kernel: loading
    # either would cost a warm `analyze` seconds. scikit-learn is imported by the stages that use it (MDS,
    # HDBSCAN; scipy.stats for the binomial), so it is there.
    import subprocess
    import sys

    _, run, _ = runs
    code = ("import sys; from masklab.report import analyze; "
            f"analyze({str(run.path)!r}, {str(tmp_path)!r}, pairs=3, points=5); "
            "print(sorted(m for m in ('sklearn.manifold', 'sklearn.cluster', 'scipy.stats', 'umap', 'pynndescent', "
            "'masklab.analysis._numba_kernels', 'masklab.analysis._numba_random') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(["scipy.stats", "sklearn.cluster", "sklearn.manifold"])


def test_counts_agree_with_their_noun_and_embedding_titles_name_the_method_once():
    """'1 pair', not '1 pairs'; a UMAP title without '(UMAP (64 masks, ...))' after 'UMAP of the 64 masks'."""
    from masklab.analysis.embedding import choose_method
    from masklab.report.base import embedding_title
    from masklab.units import count

    assert (count(1, "pair"), count(2, "pair"), count(12_000, "mask")) == ("1 pair", "2 pairs", "12,000 masks")
    used, why = choose_method(64)
    assert used == "umap" and embedding_title("UMAP of the 64 masks", why) == "UMAP of the 64 masks"
    used, why = choose_method(10)
    title = embedding_title("MDS of the 10 masks", why)
    assert used == "mds" and title.count("MDS") == 1 and "fewer than 50" in title and "\n(" in title


def test_report_run_and_maskset_have_short_reprs_and_notebook_views(tiny_run, tmp_path):
    """repr(report) was a 10,822-character dump of every table: now one line; _repr_html_ shows the key numbers,
    links to the figures and the page, and names the tables; Run and MaskSet likewise."""
    copy = tmp_path / "runs" / tiny_run.id  # analyze writes analysis/ into the run: never into the shared one
    shutil.copytree(tiny_run.path, copy)
    report = analyze(masklab.open_run(copy), tmp_path / "figs", pairs=0, embedding=False)
    assert sum(len(t.to_string()) for t in report.tables.values()) > 5_000  # what the old repr printed
    text = repr(report)
    assert len(text) < 300 and "\n" not in text and text.startswith(f"Report('{tiny_run.id}': ")
    assert f"{len(report.tables)} tables" in text and f"{len(report.figures)} figures" in text
    page = report._repr_html_()
    keys = report.key_numbers
    assert all(html_escape(str(t)) in page for t in keys["text"])
    assert all(f">{name}</a>" in page for name in report.figures) and "index page</a>" in page
    assert all(f"{name} ({len(t):,} rows)" in page for name, t in report.tables.items())
    assert len(page) < 20_000 and "<td>0." not in page  # no table dumped
    run_view = tiny_run._repr_html_()
    assert tiny_run.id in run_view and "mean final test accuracy" in run_view and "sparsity" in run_view
    assert "50%" in run_view and "<th style=\"text-align:left\">lr</th>" in run_view and len(run_view) < 5_000
    masks = tiny_run.masks
    view = masks._repr_html_()
    assert f"{masks.n_masks:,} masks x {masks.n_bits:,} bits" in view and len(view) < 5_000
    assert all(f"<td>{name}</td>" in view for name in masks.layers["layer"]) and "50%" in view


def html_escape(text: str) -> str:
    import html

    return html.escape(text)
