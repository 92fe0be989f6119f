"""`masklab analyze`: every analysis that fits a run, its tables, figures and index page.

Tables (Parquet and CSV) go to `<run>/analysis/`, figures (PNG by default; `formats=("png", "svg")` for
more) to `figures/<run id>/`, and `figures/<run id>/index.html` shows every figure with a one-line caption,
the key numbers and where the time went. Each stage is a short function from the run (or earlier tables)
to DataFrames (the analyses live in `masklab.analysis`; a stage runs them, draws their figures here, in
this process, and notes the key numbers); stages hand intermediates on through `Shared`. `analyze(run)`
returns everything in a `Report`, so a notebook gets the same results as the command line. `compare` does
the same for two runs (`masklab.analysis.compare`); both pages come from one writer (`write_page`), in one
style, with every link relative to the page.

The key numbers say only what the numbers carry: every comparison with chance gives the effect in standard
deviations of its null (one random pair for overlaps, the random sets for the structure test), every
p-value the resolution its null allows, and every figure the n it rests on; a correlation is only given
from 10 pairs (`masklab.analysis.thresholds`), and clusters are only coloured when the structure test
finds them (p < 0.05 and a silhouette above 0.25).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from masklab.analysis import (
    consensus,
    consensus_histogram,
    intersections,
    layer_summary,
    random_baseline,
    random_baseline_samples,
    union_coverage,
    with_baseline,
)
from masklab.analysis.cluster_structure import structure_vs_random
from masklab.analysis.clustering import cluster_masks, cluster_summary, linkage_matrix
from masklab.analysis.distances import long_table, square_table
from masklab.analysis.embedding import NAMES, choose_method, embed
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.analysis.trajectories import settling, trajectories
from masklab.errors import UserError
from masklab.plots import (
    barrier_vs_distance,
    consensus_bars,
    distance_heatmap,
    distance_histogram,
    embedding_scatter,
    interpolation_curves,
    per_layer_similarity,
    trajectory_curves,
)
from masklab.report.base import (
    DEFAULT_FORMATS,
    DEFAULT_N_RANDOM,
    FORMATS,
    Report,
    Shared,
    Stage,
    check_formats,
    embedding_title,
    figure,
    unfinished_warning,
    write_table,
)
from masklab.report.functional import function_stage
from masklab.report.pages import write_index
from masklab.store import files as F
from masklab.store.run import Run, open_run
from masklab.units import count, metric_value, signed_sd
from masklab.units import points as points_text

DEFAULT_PAIRS = 3  # interpolation pairs sampled by default
DEFAULT_POINTS = 30
STRUCTURE_MAX_MASKS = 200  # larger runs: the structure test uses a seeded random subset of this many masks


def analyze(run, figures_dir: str | os.PathLike | None = None, *, quiet: bool = True, pairs: int = DEFAULT_PAIRS,
            points: int = DEFAULT_POINTS, embedding: bool = True, interpolation: bool = True,
            random_state: int = 0, formats: tuple[str, ...] | str = DEFAULT_FORMATS, embedding_method: str = "auto",
            n_random: int = DEFAULT_N_RANDOM, functional: bool = True) -> Report:
    """Analyse `run` (a Run, path or run id) and write its tables, figures and index page.

    `figures_dir` defaults to `figures/` beside the run's `runs/` folder; figures land in
    `<figures_dir>/<run id>/` in each of `formats` (PNG only by default: each SVG costs as much again).
    `pairs` mask pairs are interpolated (soft path, `points` points each). The embedding is MDS below 50
    masks and UMAP from 50 (`embedding_method="auto"`, see `masklab.analysis.embedding.choose_method`).
    The cluster-structure test draws `n_random` random mask sets (p-value resolution 1 / (1 + n_random)).
    `functional`: the masks' functional similarity (prediction disagreement, ensembles, linear CKA; see
    `masklab.analysis.functional`), for runs with at least 2 masks and a model to rebuild.

    `Report.seconds` splits the wall time: each stage (its own computation), "figures" (drawing and writing
    every figure file), "tables" (writing them), "index" (the page).
    """
    run = run if isinstance(run, Run) else open_run(run)
    if len(run.ids) == 0:
        raise UserError(f"run {run.id} has no finished masks yet; generate some first (masklab generate --resume)")
    formats = check_formats(formats)
    figures_root = Path(figures_dir) if figures_dir is not None else run.path.parent.parent / "figures"
    out_tables = F.make_dirs(run.path / "analysis", root=run.path)  # links refused: nothing written outside
    out_figures = F.make_dirs(figures_root / run.id, root=figures_root)
    report = Report(run.id)
    unfinished = unfinished_warning(run)
    if unfinished:
        report.warnings.append(unfinished)
        report.note("masks analysed", f"{len(run)} of the {run.config.masks} the run plans (unfinished)",
                    value=len(run), unit="masks", n=run.config.masks)
    shared = Shared(out_figures, formats)
    stages: list[tuple[str, Stage]] = [("distances", _distances), ("consensus", _consensus),
                                       ("clustering", lambda r, rep, sh: _clustering(r, rep, sh, n_random))]
    if embedding and len(run.ids) >= 4:
        stages.append(("embedding", lambda r, rep, sh: _embedding(r, rep, sh, embedding_method)))
    if interpolation and len(run.ids) >= 2 and pairs > 0 and run.has_architecture:
        stages.append(("interpolation", lambda r, rep, sh: _interpolation(r, rep, sh, pairs, points, random_state)))
    if functional and len(run.ids) >= 2 and run.has_architecture:
        stages.append(("function", lambda r, rep, sh: function_stage(r, rep, sh, random_state)))
    if any(run.has_extra(i, "snapshots") for i in run.ids):
        stages.append(("trajectories", _trajectories))
    bar = tqdm(total=len(stages) + 1, disable=quiet, unit="stage", desc="analyze", dynamic_ncols=True,
               leave=False)
    for name, stage in stages:
        bar.set_description(f"analyze: {name}")
        shared.lap()
        stage(run, report, shared)
        report.seconds[name] = shared.lap()
        bar.update(1)
    report.seconds["figures"] = shared.figure_seconds
    bar.set_description("analyze: tables")
    start = time.perf_counter()
    for name, table in report.tables.items():
        write_table(table, out_tables / name)
    report.seconds["tables"] = time.perf_counter() - start
    bar.update(1)
    bar.close()
    start = time.perf_counter()
    _drop_stale_formats(report, formats)
    report.index = write_index(run, report, out_figures, out_tables, formats)
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


def _distances(run: Run, report: Report, shared: Shared) -> None:
    masks = run.masks
    counts = intersections(masks, per_layer=True)
    long = pd.concat([long_table(counts, m) for m in ("hamming_norm", "matching", "jaccard")], ignore_index=True)
    long = with_baseline(long, masks)
    baseline = random_baseline(masks)
    shared.square = square_table(counts, "hamming_norm")
    shared.baseline_all = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])
    report.tables["distances"] = long
    report.tables["baseline"] = baseline
    overlap = long[long["metric"].isin(["matching", "jaccard"])]
    summary = layer_summary(overlap, baseline)
    report.tables["layer_summary"] = summary
    n_random = max(len(masks), 8)
    random = random_baseline_samples(masks, n_samples=n_random, metric="hamming_norm", per_layer=False,
                                     random_state=0)
    report.tables["random_distances"] = random
    if len(masks) < 2:
        return
    figure(report, shared, "per_layer_similarity", per_layer_similarity, (summary,),
            "Percent matching and Jaccard index per layer (mean and range over mask pairs) beside the "
            "random-mask baseline with the same per-layer counts (its band: +-1 sd of one random pair).")
    whole = long[(long["layer"] == "all") & (long["metric"] == "hamming_norm")]
    figure(report, shared, "distance_histogram", distance_histogram, (whole, random, shared.baseline_all),
            "Normalised Hamming distance of every mask pair against random masks with the same per-layer "
            "counts (histogram) and the closed-form expectation (line).", metric="hamming_norm")
    first = summary.iloc[0]
    report.note("pairs compared", f"{count(first['n_pairs'], 'pair')} of {count(first['n_masks'], 'mask')} "
                "(chance: two independent random masks with the same per-layer counts)", value=int(first["n_pairs"]),
                unit="pairs", n=int(first["n_masks"]))
    for row in summary.itertuples():
        report.note(f"{row.metric} {row.layer}", f"{metric_value(str(row.metric), float(row.mean))} (chance "
                    f"{metric_value(str(row.metric), float(row.baseline))}, {signed_sd(float(row.z_vs_chance))} sd of "
                    "one random pair)", value=float(row.mean), unit="fraction", chance=float(row.baseline),
                    sd_from_chance=float(row.z_vs_chance), n=int(row.n_pairs))


def _consensus(run: Run, report: Report, shared: Shared) -> None:
    masks = run.masks
    report.tables["consensus"] = consensus(masks)
    hist = consensus_histogram(masks)
    report.tables["consensus_histogram"] = hist
    report.tables["union_coverage"] = union_coverage(masks)
    figure(report, shared, "consensus_histogram", consensus_bars, (hist,),
            f"How many of the {len(masks)} masks keep each weight, against Binomial(N, k) for independent random "
            "masks.")
    row = report.tables["consensus"].iloc[0]  # the whole network ("all")
    for column, words in (("kept_by_all", "kept by all masks"), ("kept_by_none", "kept by no mask")):
        report.note(f"weights {words}", f"{int(row[column]):,} of {int(row['n_bits']):,} (chance "
                    f"{row['expected_' + column]:,.1f})", value=int(row[column]), unit="weights",
                    chance=float(row["expected_" + column]), n=len(masks))


def _clustering(run: Run, report: Report, shared: Shared, n_random: int = DEFAULT_N_RANDOM) -> None:
    square = _need(shared.square, "distances")
    n = len(square)
    if n >= 2:
        link = linkage_matrix(square, "average")
        figure(report, shared, "distance_heatmap", distance_heatmap, (square, link),
                "Pairwise normalised Hamming distances ordered by average-linkage clustering (dendrogram on "
                "top, its axis zoomed to the merges); the dashed lines mark the random-mask expectation.",
                metric="hamming_norm", baseline=shared.baseline_all)
    if n < 4:
        return
    labels = cluster_masks(square)
    shared.labels = labels
    report.tables["clusters"] = run.table.merge(labels, on="mask_id")
    summary = cluster_summary(square, labels)
    report.tables["cluster_summary"] = summary
    test = structure_vs_random(run.masks, n_random=n_random, random_state=0, max_masks=STRUCTURE_MAX_MASKS)
    shared.structure = test
    report.tables["structure_vs_random"] = test.summary
    silhouette = test.row("silhouette")
    report.note("cluster structure vs random masks", test.describe(), value=float(silhouette["observed"]),
                unit="silhouette", chance=float(silhouette["random_mean"]),
                sd_from_chance=float(silhouette["effect_sd"]), n=int(silhouette["n_masks"]))
    for row in summary.itertuples():
        report.note(f"clusters ({row.method})",
                    f"{row.n_clusters} (silhouette {row.silhouette:.3f}; a tree cut always gives clusters: the "
                    "structure test says whether they mean anything)" if row.method != "hdbscan"
                    else f"none: all {row.n_noise} masks are noise" if row.n_clusters == 0
                    else f"{row.n_clusters}, {row.n_noise} masks noise (silhouette {row.silhouette:.3f})",
                    value=int(row.n_clusters), unit="clusters", n=n)


def _need(value, stage: str):
    """An intermediate of an earlier stage (`Shared`), which must have run."""
    if value is None:
        raise RuntimeError(f"the {stage} stage must run before this one")
    return value


def _embedding(run: Run, report: Report, shared: Shared, method: str = "auto") -> None:
    square = _need(shared.square, "distances")
    n = len(square)
    used, why = choose_method(n, method)
    points = embed(square, used, random_state=0)
    table = run.table.merge(points, on="mask_id")
    if shared.labels is not None:
        table = table.merge(shared.labels, on="mask_id")
    report.tables["embedding"] = table
    test = shared.structure
    by_cluster = test is not None and test.finds_structure and "cluster_average" in table.columns
    color_by = ["test_acc"] + (["cluster_average"] if by_cluster else [])
    name = NAMES[used]
    title = embedding_title(f"{name} of the {n} masks", why)
    if test is None:
        colours = "coloured by test accuracy"
    elif by_cluster:
        colours = f"coloured by test accuracy and by cluster (the structure test: {test.verdict()})"
    else:
        colours = (f"coloured by test accuracy only: the structure test finds no substantial cluster structure "
                   f"({test.verdict()}), so cluster colours would only show an arbitrary cut")
    report.note("embedding", why or name, n=n)
    figure(report, shared, used, embedding_scatter, (table, color_by),
            f"{name} of the masks on their normalised Hamming distances" + (f" ({why})" if why else "") +
            f", {colours}.", title=title)


def _interpolation(run: Run, report: Report, shared: Shared, pairs: int, points: int, random_state: int) -> None:
    # imported here: it brings torch (1.7 s of import, median of 5), which `analyze --pairs 0` and runs imported
    # without a model never need
    from masklab.analysis.interpolation import barrier_correlation, barrier_matrix
    n_pairs = min(pairs, len(run.ids) * (len(run.ids) - 1) // 2)
    barriers, curves = barrier_matrix(run, pairs=n_pairs, path="soft", points=points, random_state=random_state,
                                      return_curves=True)
    report.tables["barriers"] = barriers
    report.tables["interpolation"] = curves
    n_drawn = len(barriers.groupby(["mask_a", "mask_b"]))
    figure(report, shared, "interpolation", interpolation_curves, (curves,),
            f"Loss and accuracy along the soft path W * ((1 - t) m_a + t m_b) between the masks of each of the "
            f"{count(n_drawn, 'pair')} computed; the dashed lines join the ends and the arrows mark the barriers "
            "(loss barrier in nats, error barrier in percentage points).")
    correlation = barrier_correlation(barriers)
    report.tables["barrier_correlation"] = correlation
    if len(barriers) >= 3:
        shown = "with Spearman's rank correlation" if len(barriers) >= MIN_CORRELATION_PAIRS else \
            f"(points only: a correlation needs at least {MIN_CORRELATION_PAIRS} pairs)"
        figure(report, shared, "barrier_vs_distance", barrier_vs_distance, (barriers,),
                f"Loss and error barrier of each sampled pair ({count(len(barriers), 'pair')}) against its Hamming "
                f"distance {shown}.")
    loss, error = barriers["loss_barrier"], barriers["error_barrier"]
    report.note("loss barrier (soft path)", f"mean {loss.mean():.4f} nats, max {loss.max():.4f} nats "
                f"({count(len(loss), 'pair')})", value=float(loss.mean()), unit="nats", n=len(loss))
    report.note("error barrier (soft path)", f"mean {points_text(error.mean())}, max {points_text(error.max())} "
                f"({count(len(error), 'pair')})", value=float(error.mean()), unit="fraction", n=len(error))
    rows = correlation.set_index("barrier")
    if len(barriers) >= MIN_CORRELATION_PAIRS and rows["spearman_rho"].notna().any():
        parts = [f"{label} rho {rows.loc[b, 'spearman_rho']:+.2f} (p = {rows.loc[b, 'spearman_p']:.2g})"
                 for b, label in (("loss_barrier", "loss"), ("error_barrier", "error"))
                 if b in rows.index and np.isfinite(rows.loc[b, "spearman_rho"])]
        report.note("barrier vs Hamming distance", f"Spearman {', '.join(parts)}; n = {count(len(barriers), 'pair')}",
                    n=len(barriers))
    else:
        report.note("barrier vs Hamming distance", f"not estimated: {count(len(barriers), 'pair')}, a correlation "
                    f"needs at least {MIN_CORRELATION_PAIRS} (analyze --pairs)", n=len(barriers))


def _trajectories(run: Run, report: Report, shared: Shared) -> None:
    traj = trajectories(run)
    report.tables["trajectories"] = traj
    report.tables["settling"] = settling(traj)
    figure(report, shared, "trajectories", trajectory_curves, (traj,),
            "Distance of each mask's snapshots to its final mask, and to the other masks at the same epoch.",
            baseline=shared.baseline_all)

