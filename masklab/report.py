"""`masklab analyze`: run every analysis that fits a run, write tables, figures and an index page.

Tables (Parquet and CSV) go to `<run>/analysis/`, figures (PNG by default; `formats=("png", "svg")` for
more) to `figures/<run id>/`, and `figures/<run id>/index.html` shows every figure with a one-line caption,
the key numbers and where the time went. Each stage is a short function from the run (or earlier tables)
to DataFrames; `analyze(run)` returns them all in a `Report`, so a notebook gets the same results as the
command line.

The key numbers say only what the numbers carry: every comparison with chance gives the effect in standard
deviations of its null (one random pair for overlaps, the random sets for the structure test), every
p-value the resolution its null allows, and every figure the n it rests on; a correlation is only given
from 10 pairs (`masklab.analysis.thresholds`), and clusters are only coloured when the structure test
finds them (p < 0.05 and a silhouette above 0.25).
"""

from __future__ import annotations

import html
import io
import json
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from masklab.errors import UserError
from masklab.store import files as F

DEFAULT_PAIRS = 3  # interpolation pairs sampled by default
DEFAULT_POINTS = 30
DEFAULT_FORMATS = ("png",)
DEFAULT_N_RANDOM = 99  # random mask sets of the structure test: p down to 0.01
STRUCTURE_MAX_MASKS = 200  # larger runs: the structure test uses a seeded random subset of this many masks


@dataclass
class Report:
    """What `analyze` produced: tables by name, figure paths by name, the index page, key numbers."""

    run_id: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    key_numbers: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    parallel_seconds: dict[str, float] = field(default_factory=dict)
    index: Path | None = None

    def summary(self) -> pd.DataFrame:
        """The key numbers as a two-column table (what the index page shows at the top)."""
        return pd.DataFrame({"quantity": list(self.key_numbers), "value": list(self.key_numbers.values())})


def analyze(run, figures_dir: str | os.PathLike | None = None, *, quiet: bool = True, pairs: int = DEFAULT_PAIRS,
            points: int = DEFAULT_POINTS, embedding: bool = True, interpolation: bool = True,
            random_state: int = 0, formats: tuple[str, ...] = DEFAULT_FORMATS, embedding_method: str = "auto",
            n_random: int = DEFAULT_N_RANDOM, figure_process: bool | None = None) -> Report:
    """Analyse `run` (a Run, path or run id) and write its tables, figures and index page.

    `figures_dir` defaults to `figures/` beside the run's `runs/` folder; figures land in
    `<figures_dir>/<run id>/` in each of `formats` (PNG only by default: each SVG costs as much again).
    `pairs` mask pairs are interpolated (soft path, `points` points each). The embedding is MDS below 50
    masks and UMAP from 50 (`embedding_method="auto"`, see `masklab.analysis.embedding.choose_method`).
    The cluster-structure test draws `n_random` random mask sets (p-value resolution 1 / (1 + n_random)).

    Figures are drawn by a second process alongside the stages (`masklab.plots.worker`; `figure_process`
    None: when there are 2+ CPUs and ``$MASKLAB_FIGURE_PROCESS`` is not 0; False: here, in turn).

    `Report.seconds` splits the wall time: each stage (its own computation), "tables" (writing them),
    "figures" (the time spent on figures here: all of the drawing without a figure process, else only the
    wait for the last ones), "index" (the page). `Report.parallel_seconds` has the figure process's own
    drawing time, which overlapped the stages.
    """
    from tqdm import tqdm

    from masklab.store.run import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    if len(run.ids) == 0:
        raise UserError(f"run {run.id} has no finished masks yet; generate some first (masklab generate --resume)")
    formats = _check_formats(formats)
    figures_root = Path(figures_dir) if figures_dir is not None else run.path.parent.parent / "figures"
    out_tables = F.make_dirs(run.path / "analysis", root=run.path)  # links refused: nothing written outside
    out_figures = F.make_dirs(figures_root / run.id, root=figures_root)
    report = Report(run.id)
    stages = [("distances", _distances), ("consensus", _consensus),
              ("clustering", lambda r, rep: _clustering(r, rep, n_random))]
    if embedding and len(run.ids) >= 4:
        stages.append(("embedding", lambda r, rep: _embedding(r, rep, embedding_method)))
    rebuildable = run.imported is None or run.meta["dataset"].get("name") is not None  # (imports without a model)
    if interpolation and len(run.ids) >= 2 and pairs > 0 and rebuildable:
        stages.append(("interpolation", lambda r, rep: _interpolation(r, rep, pairs, points, random_state)))
    if any(run.has_extra(i, "snapshots") for i in run.ids):
        stages.append(("trajectories", _trajectories))
    from masklab.plots.worker import FigureWriter

    bar = tqdm(total=len(stages) + 1, disable=quiet, unit="stage", desc="analyze", dynamic_ncols=True,
               leave=False)
    with FigureWriter(figure_process) as writer:
        context = {"figures": out_figures, "formats": formats, "writer": writer}
        for name, stage in stages:
            bar.set_description(f"analyze: {name}")
            start, waited = time.perf_counter(), writer.waited
            stage(run, (report, context))
            report.seconds[name] = time.perf_counter() - start - (writer.waited - waited)
            bar.update(1)
        bar.set_description("analyze: tables and figures")
        start = time.perf_counter()
        for name, table in report.tables.items():
            _write_table(table, out_tables / name)
        report.seconds["tables"] = time.perf_counter() - start
        report.seconds["figures"], drawn = writer.close()
        if writer.parallel:
            report.parallel_seconds["figures, drawn by a second process"] = drawn
        bar.update(1)
    bar.close()
    start = time.perf_counter()
    _drop_stale_formats(report, formats)
    report.index = _write_index(run, report, out_figures, formats)
    report.seconds["index"] = time.perf_counter() - start
    return report


def _drop_stale_formats(report: Report, formats: tuple[str, ...]) -> None:
    """Remove other-format copies of the figures just written (an SVG left by an earlier `--formats png,svg`
    run would no longer match its PNG)."""
    for path in report.figures.values():
        for fmt in FORMATS:
            stale = path.with_suffix(f".{fmt}")
            if fmt not in formats and stale.is_file() and not stale.is_symlink():
                stale.unlink()


FORMATS = ("png", "svg", "pdf")


def _check_formats(formats) -> tuple[str, ...]:
    """The figure formats as a tuple: from a sequence or a comma-separated string (e.g. "png,svg")."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    out = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in formats if str(f).strip()))
    unknown = [f for f in out if f not in FORMATS]
    if unknown or not out:
        raise UserError(f"figure formats {', '.join(unknown) or '(none)'} are invalid: use a comma-separated list "
                        f"of {', '.join(FORMATS)} (e.g. png,svg)")
    return out


def seconds_text(seconds: dict[str, float]) -> str:
    """Per-stage seconds on one line: "distances 0.41 s, consensus 0.05 s, ...; total 3.20 s"."""
    parts = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
    return f"{parts}; total {sum(seconds.values()):.2f} s"


# ---- stages ---------------------------------------------------------------------------------------------
def _figure(report_ctx, name: str, plot, args: tuple, caption: str, **kwargs) -> None:
    """Draw ``plot(*args, **kwargs)`` (a figure function of `masklab.plots`) into `name` in the report's
    formats: in the figure worker when there is one (`masklab.plots.worker`), else here."""
    from masklab.plots.worker import FigureWriter

    report, context = report_ctx
    writer = context.get("writer")
    if writer is None:
        writer = context["writer"] = FigureWriter(parallel=False)
    paths = writer.submit(plot, args, kwargs, context["figures"] / name, context.get("formats", DEFAULT_FORMATS))
    report.figures[name] = next((p for p in paths if p.suffix == ".png"), paths[0])
    report.captions[name] = caption


def _distances(run, report_ctx) -> None:
    from masklab.analysis import intersections, random_baseline, random_baseline_samples, with_baseline
    from masklab.analysis.baselines import vs_chance
    from masklab.analysis.distances import long_table, square_table
    from masklab.plots import distance_histogram, layer_summary, per_layer_similarity

    report, context = report_ctx
    masks = run.masks
    counts = intersections(masks, per_layer=True)
    long = pd.concat([long_table(counts, m) for m in ("hamming_norm", "matching", "jaccard")], ignore_index=True)
    long = with_baseline(long, masks)
    baseline = random_baseline(masks)
    square = square_table(counts, "hamming_norm")
    context["square"] = square
    report.tables["distances"] = long
    report.tables["baseline"] = baseline
    overlap = long[long["metric"].isin(["matching", "jaccard"])]
    summary = layer_summary(overlap, baseline)
    if len(masks) >= 2:
        chance = vs_chance(overlap).drop(columns=["mean", "n_pairs"])
        summary = summary.merge(chance, on=["layer", "metric"], how="left")
    report.tables["layer_summary"] = summary
    n_random = max(len(masks), 8)
    random = random_baseline_samples(masks, n_samples=n_random, metric="hamming_norm", per_layer=False,
                                     random_state=0)
    report.tables["random_distances"] = random
    if len(masks) >= 2:
        _figure(report_ctx, "per_layer_similarity", per_layer_similarity, (summary,),
                "Percent matching and Jaccard index per layer (mean and range over mask pairs) beside the "
                "random-mask baseline with the same per-layer counts.")
        whole = long[(long["layer"] == "all") & (long["metric"] == "hamming_norm")]
        expected = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])
        _figure(report_ctx, "distance_histogram", distance_histogram, (whole, random, expected),
                "Normalised Hamming distance of every mask pair against random masks with the same per-layer "
                "counts (histogram) and the closed-form expectation (line).", metric="hamming_norm")
        first = summary.iloc[0]
        report.key_numbers["pairs compared"] = (f"{int(first['n_pairs']):,} pairs of {int(first['n_masks'])} masks "
                                                "(chance: two independent random masks with the same per-layer "
                                                "counts)")
        for row in summary[summary["metric"] == "matching"].itertuples():
            report.key_numbers[f"matching {row.layer}"] = (
                f"{100 * row.mean:.2f}% (chance {100 * row.baseline:.2f}%, {_sd(row.z_vs_chance)} sd of one random "
                "pair)")
        for row in summary[summary["metric"] == "jaccard"].itertuples():
            report.key_numbers[f"jaccard {row.layer}"] = (
                f"{row.mean:.3f} (chance {row.baseline:.3f}, {_sd(row.z_vs_chance)} sd of one random pair)")
    context["baseline_all"] = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])


def _sd(value: float) -> str:
    return f"{value:+.1f}" if np.isfinite(value) else "n/a"


def _consensus(run, report_ctx) -> None:
    from masklab.analysis import consensus, consensus_histogram, union_coverage
    from masklab.plots import consensus_histogram as plot_consensus

    report, _ = report_ctx
    masks = run.masks
    report.tables["consensus"] = consensus(masks)
    hist = consensus_histogram(masks)
    report.tables["consensus_histogram"] = hist
    report.tables["union_coverage"] = union_coverage(masks)
    _figure(report_ctx, "consensus_histogram", plot_consensus, (hist,),
            f"How many of the {len(masks)} masks keep each weight, against Binomial(N, k) for independent random "
            "masks.")
    row = report.tables["consensus"].iloc[0]  # the whole network ("all")
    for column in ("kept_by_all", "kept_by_none"):
        report.key_numbers[f"weights {column.replace('_', ' ')} masks"] = (
            f"{int(row[column]):,} of {int(row['n_bits']):,} (chance {row['expected_' + column]:,.1f})")


def _clustering(run, report_ctx, n_random: int = DEFAULT_N_RANDOM) -> None:
    from masklab.analysis.clustering import cluster_masks, cluster_summary, linkage_matrix, structure_vs_random
    from masklab.plots import distance_heatmap

    report, context = report_ctx
    square = context["square"]
    n = len(square)
    if n >= 2:
        link = linkage_matrix(square, "average")
        _figure(report_ctx, "distance_heatmap", distance_heatmap, (square, link),
                "Pairwise normalised Hamming distances ordered by average-linkage clustering (dendrogram on "
                "top); the colour bar marks the random-mask expectation.", metric="hamming_norm",
                baseline=context["baseline_all"])
    if n < 4:
        return
    labels = cluster_masks(square)
    context["labels"] = labels
    report.tables["clusters"] = run.table.merge(labels, on="mask_id")
    summary = cluster_summary(square, labels)
    report.tables["cluster_summary"] = summary
    test = structure_vs_random(run.masks, n_random=n_random, random_state=0, max_masks=STRUCTURE_MAX_MASKS)
    context["structure"] = test
    report.tables["structure_vs_random"] = test.summary
    report.key_numbers["cluster structure vs random masks"] = test.describe()
    for row in summary.itertuples():
        report.key_numbers[f"clusters ({row.method})"] = (
            f"{row.n_clusters} (silhouette {row.silhouette:.3f}; a tree cut always gives clusters: the structure "
            "test says whether they mean anything)" if row.method != "hdbscan"
            else f"none: all {row.n_noise} masks are noise" if row.n_clusters == 0
            else f"{row.n_clusters}, {row.n_noise} masks noise (silhouette {row.silhouette:.3f})")


def _embedding(run, report_ctx, method: str = "auto") -> None:
    from masklab.analysis.embedding import NAMES, choose_method, embed
    from masklab.plots import embedding_scatter

    report, context = report_ctx
    n = len(context["square"])
    used, why = choose_method(n, method)
    points = embed(context["square"], used, random_state=0)
    table = run.table.merge(points, on="mask_id")
    if "labels" in context:
        table = table.merge(context["labels"], on="mask_id")
    report.tables["embedding"] = table
    test = context.get("structure")
    by_cluster = test is not None and test.finds_structure and "cluster_average" in table.columns
    color_by = ["test_acc"] + (["cluster_average"] if by_cluster else [])
    name = NAMES[used]
    title = f"{name} of the {n} masks" + ("\n" + textwrap.fill(f"({why})", 64) if why else "")
    if test is None:
        colours = "coloured by test accuracy"
    elif by_cluster:
        colours = f"coloured by test accuracy and by cluster (the structure test: {test.verdict()})"
    else:
        colours = (f"coloured by test accuracy only: the structure test finds no substantial cluster structure "
                   f"({test.verdict()}), so cluster colours would only show an arbitrary cut")
    report.key_numbers["embedding"] = why or name
    _figure(report_ctx, used, embedding_scatter, (table, color_by),
            f"{name} of the masks on their normalised Hamming distances" + (f" ({why})" if why else "") +
            f", {colours}.", title=title)


def _interpolation(run, report_ctx, pairs: int, points: int, random_state: int) -> None:
    from masklab.analysis.interpolation import barrier_correlation, barrier_matrix
    from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
    from masklab.plots import barrier_vs_distance, interpolation_curves

    report, _ = report_ctx
    n_pairs = min(pairs, len(run.ids) * (len(run.ids) - 1) // 2)
    barriers, curves = barrier_matrix(run, pairs=n_pairs, path="soft", points=points, random_state=random_state,
                                      return_curves=True)
    report.tables["barriers"] = barriers
    report.tables["interpolation"] = curves
    a, b = barriers["mask_a"].iloc[0], barriers["mask_b"].iloc[0]
    first = curves[(curves["mask_a"] == a) & (curves["mask_b"] == b)]
    _figure(report_ctx, "interpolation", interpolation_curves, (first,),
            "Loss and accuracy along the soft path W * ((1 - t) m_a + t m_b) between two masks; the dashed line "
            "joins the ends and the arrow marks the barrier.")
    correlation = barrier_correlation(barriers)
    report.tables["barrier_correlation"] = correlation
    if len(barriers) >= 3:
        shown = "with Spearman's rank correlation" if len(barriers) >= MIN_CORRELATION_PAIRS else \
            f"(points only: a correlation needs at least {MIN_CORRELATION_PAIRS} pairs)"
        _figure(report_ctx, "barrier_vs_distance", barrier_vs_distance, (barriers,),
                f"Loss and error barrier of each of the {len(barriers)} sampled pairs against its Hamming distance "
                f"{shown}.")
    loss, error = barriers["loss_barrier"], 100 * barriers["error_barrier"]
    report.key_numbers["loss barrier (soft path)"] = f"mean {loss.mean():.4f}, max {loss.max():.4f} ({len(loss)} pairs)"
    report.key_numbers["error barrier (soft path)"] = (f"mean {error.mean():.2f} points, max {error.max():.2f} "
                                                       f"({len(error)} pairs)")
    rows = correlation.set_index("barrier")
    if len(barriers) >= MIN_CORRELATION_PAIRS and rows["spearman_rho"].notna().any():
        parts = [f"{label} rho {rows.loc[b, 'spearman_rho']:+.2f} (p = {rows.loc[b, 'spearman_p']:.2g})"
                 for b, label in (("loss_barrier", "loss"), ("error_barrier", "error"))
                 if b in rows.index and np.isfinite(rows.loc[b, "spearman_rho"])]
        report.key_numbers["barrier vs Hamming distance"] = f"Spearman {', '.join(parts)}; n = {len(barriers)} pairs"
    else:
        report.key_numbers["barrier vs Hamming distance"] = (
            f"not estimated: {len(barriers)} pairs, a correlation needs at least {MIN_CORRELATION_PAIRS} "
            "(analyze --pairs)")


def _trajectories(run, report_ctx) -> None:
    from masklab.analysis.trajectories import settling, trajectories
    from masklab.plots import trajectories as plot_trajectories

    report, context = report_ctx
    traj = trajectories(run)
    report.tables["trajectories"] = traj
    report.tables["settling"] = settling(traj)
    _figure(report_ctx, "trajectories", plot_trajectories, (traj,),
            "Distance of each mask's snapshots to its final mask, and to the other masks at the same epoch.",
            baseline=context.get("baseline_all"))


# ---- output ---------------------------------------------------------------------------------------------
def _write_table(table: pd.DataFrame, stem: Path) -> None:
    table = table.copy()
    for column in table.columns:  # tuples and mixed objects do not go into Parquet as they are
        if table[column].dtype == object and table[column].map(lambda v: isinstance(v, (tuple, list))).any():
            table[column] = table[column].map(lambda v: "x".join(map(str, v)) if isinstance(v, (tuple, list)) else v)
    F.atomic_write(stem.with_suffix(".csv"), table.to_csv(index=False).encode(), durable=False)
    try:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
    except (ImportError, ValueError, TypeError):  # an odd column type: the CSV still has it
        return
    F.atomic_write(stem.with_suffix(".parquet"), buffer.getvalue(), durable=False)


def _reading_notes(report: Report) -> str:
    """The page's short guide to its numbers (with this report's number of random sets)."""
    test = report.tables.get("structure_vs_random")
    sets = int(test["n_random"].iloc[0]) if test is not None and len(test) else DEFAULT_N_RANDOM
    return _READING_NOTES.format(sets=sets, floor=f"{1 / (1 + sets):.2g}")


_READING_NOTES = """<p class="notes"><b>Reading these numbers.</b> <i>sd of one random pair</i>: how far the masks'
mean overlap lies from chance, in standard deviations of the overlap of ONE pair of independent random masks
with the same per-layer counts (exact hypergeometric null); it does not grow with the number of masks. The mean
over all pairs is far more precise than one pair: the table <code>layer_summary</code> also gives the sd of the
mean under the null (<code>chance_se</code>, exact: overlaps of random pairs that share a mask are
uncorrelated), the matching test statistic (<code>z_mean_vs_chance</code>) and the jackknife standard error
over masks (<code>se_masks</code>). <i>Cluster structure</i>: the best silhouette of the masks against {sets} sets
of random masks; the p-value cannot go below 1 / (1 + sets) = {floor}, the effect is in sd of the random sets,
and "small but detectable" means p &lt; 0.05 with a silhouette of at most 0.25 (no substantial clusters,
Kaufman &amp; Rousseeuw). Correlations are only given from 10 pairs.</p>"""


def _seconds_html(seconds: dict[str, float], parallel: dict[str, float] | None = None) -> str:
    if not seconds:
        return "<p>(not timed)</p>"
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{value:.2f} s</td></tr>" for name, value in seconds.items())
    alongside = "".join(f"<tr><th>{html.escape(name)} (alongside the stages)</th><td>{value:.2f} s</td></tr>"
                        for name, value in (parallel or {}).items())
    return (f"<table>{rows}<tr><th>total</th><td>{sum(seconds.values()):.2f} s</td></tr>{alongside}</table>"
            "<p>Stages count their own computation (imports they trigger included); <i>figures</i> is the time "
            "spent here on drawing and writing the figure files (with a figure process, only the wait for the "
            "last ones). Starting Python and the first imports come before and are not counted.</p>")


def _write_index(run, report: Report, out: Path, formats: tuple[str, ...] = DEFAULT_FORMATS) -> Path:
    config = run.config.to_dict(non_default=True)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in report.key_numbers.items())

    def svg_link(path: Path) -> str:
        svg = path.with_suffix(".svg")
        return f' (<a href="{html.escape(svg.name)}">SVG</a>)' if "svg" in formats and svg.exists() else ""

    figures = "".join(
        f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(name)}"><figcaption><b>{html.escape(name)}'
        f"</b>: {html.escape(report.captions[name])}{svg_link(path)}</figcaption></figure>"
        for name, path in report.figures.items())
    tables = "".join(f"<li>{html.escape(name)}: {len(t):,} rows</li>" for name, t in report.tables.items())
    timing = _seconds_html(report.seconds, report.parallel_seconds)
    mean_acc = run.table["test_acc"].mean()
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>masklab: {html.escape(run.id)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}}
figure{{margin:2em 0}}img{{max-width:100%}}figcaption{{color:#444}}code{{background:#f4f4f4}}
.notes{{color:#444;font-size:90%;max-width:60em}}</style></head>
<body><h1>Mask landscape of {html.escape(run.id)}</h1>
<p>{len(run.ids)} masks, mean final test accuracy {100 * mean_acc:.2f}%. Config (non-default):
<code>{html.escape(json.dumps(config))}</code>. Tables: <code>{html.escape(str(run.path / "analysis"))}</code>.</p>
<h2>Key numbers</h2><table>{rows}</table>
{_reading_notes(report)}
<h2>Figures</h2>{figures}
<h2>Tables</h2><ul>{tables}</ul>
<h2>Where the time went</h2>{timing}
</body></html>
"""
    path = out / "index.html"
    F.atomic_write(path, page.encode(), durable=False)
    return path


# ---- compare two runs -----------------------------------------------------------------------------------
def compare(run_a, run_b, figures_dir: str | os.PathLike | None = None, *, embedding: bool = True,
            quiet: bool = True, formats: tuple[str, ...] = DEFAULT_FORMATS, embedding_method: str = "auto") -> Report:
    """Cross-run distances (e.g. Edge-Popup vs Biprop masks of the same weights) and a joint embedding.

    Tables: `cross_distances` (every pair across the runs, per layer, with its random baseline),
    `comparison` (per layer and metric: mean within A, within B, across, and chance; when the runs share
    score seeds also across pairs of the same score seed and of other seeds) and `joint_embedding` (MDS
    below 50 masks in all, UMAP from 50: `masklab.analysis.embedding.choose_method`). Figures in `formats`
    (PNG only by default). Refused with a clear message when the runs' layer layouts differ. With
    ``quiet=False`` a progress line follows the steps; `Report.seconds` has their times.
    """
    from tqdm import tqdm

    from masklab.analysis import distances, with_baseline
    from masklab.store.bits import MaskSet
    from masklab.store.run import Run, open_run

    run_a = run_a if isinstance(run_a, Run) else open_run(run_a)
    run_b = run_b if isinstance(run_b, Run) else open_run(run_b)
    formats = _check_formats(formats)
    a, b = run_a.masks, run_b.masks
    if not a.same_layout(b):
        raise UserError(f"runs {run_a.id} and {run_b.id} have different layer layouts (model, width or dataset "
                        "differ); compare runs of the same network")
    if run_a.config.weight_seed != run_b.config.weight_seed:
        print(f"masklab: note: the runs use different weight seeds ({run_a.config.weight_seed} vs "
              f"{run_b.config.weight_seed}): their masks sit on different random weights", flush=True)
    name = f"compare-{run_a.id}-vs-{run_b.id}"
    figures_root = Path(figures_dir) if figures_dir is not None else run_a.path.parent.parent / "figures"
    out = F.make_dirs(figures_root / name, root=figures_root)
    report = Report(name)
    context = {"figures": out, "formats": formats}
    metrics = ["matching", "jaccard"]
    steps = ["across", "within A", "within B"] + (["embedding"] if embedding and len(a) + len(b) >= 4 else []) \
        + ["tables"]
    bar = tqdm(total=len(steps), disable=quiet, unit="step", desc="compare", dynamic_ncols=True, leave=False)
    clock = [time.perf_counter()]

    def step(label: str) -> None:
        now = time.perf_counter()
        report.seconds[label] = now - clock[0]
        clock[0] = now
        bar.update(1)

    bar.set_description("compare: distances across the runs")
    cross = with_baseline(distances(a, b, metric=metrics, per_layer=True), a, other=b)
    report.tables["cross_distances"] = cross
    parts = {"across": cross}
    # Runs that differ only in method or recycling share score seeds: mask i of A and mask i of B start
    # from the same scores, and those pairs say what the method changed; the others what chance leaves.
    seed_a = run_a.table.set_index("mask_id")["score_seed"]
    seed_b = run_b.table.set_index("mask_id")["score_seed"]
    same_seed = cross["mask_a"].map(seed_a).to_numpy() == cross["mask_b"].map(seed_b).to_numpy()
    if same_seed.any():
        parts["across, same score seed"] = cross[same_seed]
        parts["across, other seeds"] = cross[~same_seed]
    step("across")
    for label, masks in (("within A", a), ("within B", b)):
        bar.set_description(f"compare: distances {label}")
        if len(masks) >= 2:
            parts[label] = with_baseline(distances(masks, metric=metrics, per_layer=True), masks)
        step(label)
    rows = []
    for label, table in parts.items():
        grouped = table.groupby(["layer", "metric"], sort=False)
        rows.append(grouped.agg(mean=("value", "mean"), baseline=("baseline", "mean")).reset_index()
                    .assign(pairs=label))
    comparison = pd.concat(rows, ignore_index=True).pivot_table(
        index=["layer", "metric"], columns="pairs", values="mean", sort=False).reset_index()
    chance = cross.groupby(["layer", "metric"], sort=False)["baseline"].mean().rename("chance").reset_index()
    comparison = comparison.merge(chance, on=["layer", "metric"])
    report.tables["comparison"] = comparison
    for row in comparison[comparison["layer"] == "all"].to_dict("records"):
        report.key_numbers[f"{row['metric']} across runs"] = f"{row['across']:.4f} (chance {row['chance']:.4f})"
        if "across, same score seed" in row:
            report.key_numbers[f"{row['metric']} across runs, same score seed"] = (
                f"{row['across, same score seed']:.4f} (other seeds {row['across, other seeds']:.4f})")
    if "embedding" in steps:
        from masklab.analysis.embedding import NAMES, choose_method, embed
        from masklab.plots import embedding_scatter

        bar.set_description("compare: joint embedding")
        ids = list(range(len(a) + len(b)))
        used, why = choose_method(len(ids), embedding_method)
        joint = MaskSet(np.vstack([np.asarray(a.bits), np.asarray(b.bits)]), a.layers.copy(), ids)
        points = embed(distances(joint, metric="hamming_norm", form="square"), used, random_state=0)
        points["run"] = [run_a.id] * len(a) + [run_b.id] * len(b)
        points["mask"] = list(a.ids) + list(b.ids)
        report.tables["joint_embedding"] = points
        method = NAMES[used]
        _figure((report, context), f"joint_{used}", embedding_scatter, (points, ["run"]),
                f"{method} of both runs' masks on their joint normalised Hamming distances, coloured by run"
                + (f" ({why})" if why else "") + ".",
                title=f"{method} of both runs' {len(ids)} masks"
                + ("\n" + textwrap.fill(f"({why})", 64) if why else ""))
        report.key_numbers["joint embedding"] = why or method
        step("embedding")
    bar.set_description("compare: tables and page")
    for name_, table in report.tables.items():
        _write_table(table, out / name_)
    report.index = _write_compare_index(run_a, run_b, report, out)
    step("tables")
    bar.close()
    if "writer" in context:
        waited, _ = context["writer"].close()
        report.seconds["figures"] = waited
        if "embedding" in report.seconds:
            report.seconds["embedding"] = max(0.0, report.seconds["embedding"] - waited)
    return report


def _write_compare_index(run_a, run_b, report: Report, out: Path) -> Path:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in report.key_numbers.items())
    table = report.tables["comparison"].to_html(index=False, float_format=lambda x: f"{x:.4f}")
    figures = "".join(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(n)}"><figcaption>'
                      f"{html.escape(report.captions[n])}</figcaption></figure>" for n, p in report.figures.items())
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>masklab compare</title></head>"
            f"<body style=\"font-family:sans-serif;max-width:1100px;margin:2em auto\"><h1>{html.escape(run_a.id)} vs "
            f"{html.escape(run_b.id)}</h1><table>{rows}</table><h2>Per layer</h2>{table}{figures}</body></html>\n")
    path = out / "index.html"
    F.atomic_write(path, page.encode(), durable=False)
    return path
