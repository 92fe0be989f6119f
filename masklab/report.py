"""`masklab analyze`: run every analysis that fits a run, write tables, figures and an index page.

Tables (Parquet and CSV) go to `<run>/analysis/`, figures (PNG and SVG) to `figures/<run id>/`, and
`figures/<run id>/index.html` shows every figure with a one-line caption and the key numbers. Each stage
is a short function from the run (or earlier tables) to DataFrames; `analyze(run)` returns them all in a
`Report`, so a notebook gets the same results as the command line.
"""

from __future__ import annotations

import html
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from masklab.errors import UserError
from masklab.store import files as F

DEFAULT_PAIRS = 3  # interpolation pairs sampled by default
DEFAULT_POINTS = 30


@dataclass
class Report:
    """What `analyze` produced: tables by name, figure paths by name, the index page, key numbers."""

    run_id: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    key_numbers: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    index: Path | None = None

    def summary(self) -> pd.DataFrame:
        """The key numbers as a two-column table (what the index page shows at the top)."""
        return pd.DataFrame({"quantity": list(self.key_numbers), "value": list(self.key_numbers.values())})


def analyze(run, figures_dir: str | os.PathLike | None = None, *, quiet: bool = True, pairs: int = DEFAULT_PAIRS,
            points: int = DEFAULT_POINTS, embedding: bool = True, interpolation: bool = True,
            random_state: int = 0, formats: tuple[str, ...] = ("png", "svg")) -> Report:
    """Analyse `run` (a Run, path or run id) and write its tables, figures and index page.

    `figures_dir` defaults to `figures/` beside the run's `runs/` folder; figures land in
    `<figures_dir>/<run id>/` in each of `formats`. `pairs` mask pairs are interpolated (soft path,
    `points` points each).
    """
    from tqdm import tqdm

    from masklab.store.run import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    if len(run.ids) == 0:
        raise UserError(f"run {run.id} has no finished masks yet; generate some first (masklab generate --resume)")
    figures_root = Path(figures_dir) if figures_dir is not None else run.path.parent.parent / "figures"
    out_tables = F.make_dirs(run.path / "analysis", root=run.path)  # links refused: nothing written outside
    out_figures = F.make_dirs(figures_root / run.id, root=figures_root)
    report = Report(run.id)
    stages = [("distances", _distances), ("consensus", _consensus), ("clustering", _clustering)]
    if embedding and len(run.ids) >= 4:
        stages.append(("embedding", _embedding))
    if interpolation and len(run.ids) >= 2 and pairs > 0:
        stages.append(("interpolation", lambda r, rep: _interpolation(r, rep, pairs, points, random_state)))
    if any(run.has_extra(i, "snapshots") for i in run.ids):
        stages.append(("trajectories", _trajectories))
    context = {"figures": out_figures, "formats": tuple(formats)}
    bar = tqdm(stages, disable=quiet, unit="stage", desc="analyze", dynamic_ncols=True)
    for name, stage in bar:
        bar.set_description(f"analyze: {name}")
        start = time.perf_counter()
        stage(run, (report, context))
        report.seconds[name] = time.perf_counter() - start
    bar.close()
    for name, table in report.tables.items():
        _write_table(table, out_tables / name)
    report.index = _write_index(run, report, out_figures)
    return report


# ---- stages ---------------------------------------------------------------------------------------------
def _figure(report_ctx, name: str, fig, caption: str) -> None:
    from masklab.plots import save_figure

    report, context = report_ctx
    paths = save_figure(fig, context["figures"] / name, formats=context.get("formats", ("png", "svg")))
    report.figures[name] = next((p for p in paths if p.suffix == ".png"), paths[0])
    report.captions[name] = caption


def _distances(run, report_ctx) -> None:
    from masklab.analysis import intersections, random_baseline, random_baseline_samples, with_baseline
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
    summary = layer_summary(long[long["metric"].isin(["matching", "jaccard"])], baseline)
    report.tables["layer_summary"] = summary
    n_random = max(len(masks), 8)
    random = random_baseline_samples(masks, n_samples=n_random, metric="hamming_norm", per_layer=False,
                                     random_state=0)
    report.tables["random_distances"] = random
    if len(masks) >= 2:
        _figure(report_ctx, "per_layer_similarity", per_layer_similarity(summary),
                "Percent matching and Jaccard index per layer (mean and range over mask pairs) beside the "
                "random-mask baseline with the same per-layer counts.")
        whole = long[(long["layer"] == "all") & (long["metric"] == "hamming_norm")]
        expected = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])
        _figure(report_ctx, "distance_histogram",
                distance_histogram(whole, random, expected, metric="hamming_norm"),
                "Normalised Hamming distance of every mask pair against random masks with the same per-layer "
                "counts (histogram) and the closed-form expectation (line).")
        match = summary[summary["metric"] == "matching"]
        for row in match.itertuples():
            report.key_numbers[f"matching {row.layer}"] = f"{100 * row.mean:.2f}% (chance {100 * row.baseline:.2f}%)"
        jac = summary[summary["metric"] == "jaccard"]
        for row in jac.itertuples():
            report.key_numbers[f"jaccard {row.layer}"] = f"{row.mean:.3f} (chance {row.baseline:.3f})"
    context["baseline_all"] = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])


def _consensus(run, report_ctx) -> None:
    from masklab.analysis import consensus, consensus_histogram, union_coverage
    from masklab.plots import consensus_histogram as plot_consensus

    report, _ = report_ctx
    masks = run.masks
    report.tables["consensus"] = consensus(masks)
    hist = consensus_histogram(masks)
    report.tables["consensus_histogram"] = hist
    report.tables["union_coverage"] = union_coverage(masks)
    _figure(report_ctx, "consensus_histogram", plot_consensus(hist),
            f"How many of the {len(masks)} masks keep each weight, against Binomial(N, k) for independent random "
            "masks.")
    row = report.tables["consensus"].iloc[0]  # the whole network ("all")
    for column in ("kept_by_all", "kept_by_none"):
        report.key_numbers[f"weights {column.replace('_', ' ')} masks"] = (
            f"{int(row[column]):,} of {int(row['n_bits']):,} (chance {row['expected_' + column]:,.1f})")


def _clustering(run, report_ctx) -> None:
    from masklab.analysis.clustering import cluster_masks, cluster_summary, linkage_matrix, structure_vs_random
    from masklab.plots import distance_heatmap

    report, context = report_ctx
    square = context["square"]
    n = len(square)
    if n >= 2:
        link = linkage_matrix(square, "average")
        _figure(report_ctx, "distance_heatmap",
                distance_heatmap(square, link, metric="hamming_norm", baseline=context["baseline_all"]),
                "Pairwise normalised Hamming distances ordered by average-linkage clustering (dendrogram on "
                "top); the colour bar marks the random-mask expectation.")
    if n < 4:
        return
    labels = cluster_masks(square)
    context["labels"] = labels
    report.tables["clusters"] = run.table.merge(labels, on="mask_id")
    summary = cluster_summary(square, labels)
    report.tables["cluster_summary"] = summary
    test = structure_vs_random(run.masks, n_random=9, random_state=0)
    report.tables["structure_vs_random"] = test.summary
    for row in summary.itertuples():
        report.key_numbers[f"clusters ({row.method})"] = f"{row.n_clusters} (silhouette {row.silhouette:.3f})"
    sil = test.summary[test.summary["statistic"] == "silhouette"].iloc[0]
    report.key_numbers["silhouette vs random masks"] = (f"{sil['observed']:.3f} vs {sil['random_mean']:.3f} "
                                                        f"(p = {sil['p_value']:.2f})")


def _embedding(run, report_ctx) -> None:
    from masklab.analysis.embedding import embed
    from masklab.plots import embedding_scatter

    report, context = report_ctx
    points = embed(context["square"], "umap", random_state=0)
    table = run.table.merge(points, on="mask_id")
    if "labels" in context:
        table = table.merge(context["labels"], on="mask_id")
    report.tables["embedding"] = table
    color_by = ["test_acc"] + (["cluster_average"] if "cluster_average" in table.columns else [])
    _figure(report_ctx, "umap", embedding_scatter(table, color_by),
            "UMAP of the masks on their normalised Hamming distances, coloured by test accuracy and by cluster.")


def _interpolation(run, report_ctx, pairs: int, points: int, random_state: int) -> None:
    from masklab.analysis.interpolation import barrier_correlation, barrier_matrix
    from masklab.plots import barrier_vs_distance, interpolation_curves

    report, _ = report_ctx
    n_pairs = min(pairs, len(run.ids) * (len(run.ids) - 1) // 2)
    barriers, curves = barrier_matrix(run, pairs=n_pairs, path="soft", points=points, random_state=random_state,
                                      return_curves=True)
    report.tables["barriers"] = barriers
    report.tables["interpolation"] = curves
    a, b = barriers["mask_a"].iloc[0], barriers["mask_b"].iloc[0]
    first = curves[(curves["mask_a"] == a) & (curves["mask_b"] == b)]
    _figure(report_ctx, "interpolation", interpolation_curves(first),
            "Loss and accuracy along the soft path W * ((1 - t) m_a + t m_b) between two masks; the dashed line "
            "joins the ends and the arrow marks the barrier.")
    if len(barriers) >= 3:
        report.tables["barrier_correlation"] = barrier_correlation(barriers)
        _figure(report_ctx, "barrier_vs_distance", barrier_vs_distance(barriers),
                "Loss and error barrier of each sampled pair against its Hamming distance.")
    loss, error = barriers["loss_barrier"], 100 * barriers["error_barrier"]
    report.key_numbers["loss barrier (soft path)"] = f"mean {loss.mean():.4f}, max {loss.max():.4f} ({len(loss)} pairs)"
    report.key_numbers["error barrier (soft path)"] = f"mean {error.mean():.2f} points, max {error.max():.2f}"


def _trajectories(run, report_ctx) -> None:
    from masklab.analysis.trajectories import settling, trajectories
    from masklab.plots import trajectories as plot_trajectories

    report, context = report_ctx
    traj = trajectories(run)
    report.tables["trajectories"] = traj
    report.tables["settling"] = settling(traj)
    _figure(report_ctx, "trajectories", plot_trajectories(traj, baseline=context.get("baseline_all")),
            "Distance of each mask's snapshots to its final mask, and to the other masks at the same epoch.")


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


def _write_index(run, report: Report, out: Path) -> Path:
    config = run.config.to_dict(non_default=True)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in report.key_numbers.items())
    def svg_link(path: Path) -> str:
        svg = path.with_suffix(".svg")
        return f' (<a href="{html.escape(svg.name)}">SVG</a>)' if svg.exists() else ""

    figures = "".join(
        f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(name)}"><figcaption><b>{html.escape(name)}'
        f"</b>: {html.escape(report.captions[name])}{svg_link(path)}</figcaption></figure>"
        for name, path in report.figures.items())
    tables = "".join(f"<li>{html.escape(name)}: {len(t):,} rows</li>" for name, t in report.tables.items())
    mean_acc = run.table["test_acc"].mean()
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>masklab: {html.escape(run.id)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}}
figure{{margin:2em 0}}img{{max-width:100%}}figcaption{{color:#444}}code{{background:#f4f4f4}}</style></head>
<body><h1>Mask landscape of {html.escape(run.id)}</h1>
<p>{len(run.ids)} masks, mean final test accuracy {100 * mean_acc:.2f}%. Config (non-default):
<code>{html.escape(json.dumps(config))}</code>. Tables: <code>{html.escape(str(run.path / "analysis"))}</code>.</p>
<h2>Key numbers</h2><table>{rows}</table>
<h2>Figures</h2>{figures}
<h2>Tables</h2><ul>{tables}</ul>
</body></html>
"""
    path = out / "index.html"
    F.atomic_write(path, page.encode(), durable=False)
    return path


# ---- compare two runs -----------------------------------------------------------------------------------
def compare(run_a, run_b, figures_dir: str | os.PathLike | None = None, *, embedding: bool = True,
            quiet: bool = True, formats: tuple[str, ...] = ("png", "svg")) -> Report:
    """Cross-run distances (e.g. Edge-Popup vs Biprop masks of the same weights) and a joint UMAP.

    Tables: `cross_distances` (every pair across the runs, per layer, with its random baseline),
    `comparison` (per layer and metric: mean within A, within B, across, and chance; when the runs share
    score seeds also across pairs of the same score seed and of other seeds) and `joint_embedding`.
    Refused with a clear message when the runs' layer layouts differ.
    """
    from masklab.analysis import distances, with_baseline
    from masklab.store.bits import MaskSet
    from masklab.store.run import Run, open_run

    run_a = run_a if isinstance(run_a, Run) else open_run(run_a)
    run_b = run_b if isinstance(run_b, Run) else open_run(run_b)
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
    context = {"figures": out, "formats": tuple(formats)}
    metrics = ["matching", "jaccard"]
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
    for label, masks in (("within A", a), ("within B", b)):
        if len(masks) >= 2:
            parts[label] = with_baseline(distances(masks, metric=metrics, per_layer=True), masks)
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
    if embedding and len(a) + len(b) >= 4:
        from masklab.analysis.embedding import embed
        from masklab.plots import embedding_scatter

        ids = list(range(len(a) + len(b)))
        joint = MaskSet(np.vstack([np.asarray(a.bits), np.asarray(b.bits)]), a.layers.copy(), ids)
        points = embed(distances(joint, metric="hamming_norm", form="square"), "umap", random_state=0)
        points["run"] = [run_a.id] * len(a) + [run_b.id] * len(b)
        points["mask"] = list(a.ids) + list(b.ids)
        report.tables["joint_embedding"] = points
        _figure((report, context), "joint_umap", embedding_scatter(points, ["run"]),
                "UMAP of both runs' masks on their joint normalised Hamming distances, coloured by run.")
    for name_, table in report.tables.items():
        _write_table(table, out / name_)
    report.index = _write_compare_index(run_a, run_b, report, out)
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
