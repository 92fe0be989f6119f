"""`masklab analyze`: every analysis that fits a run, its tables, figures and index page.

Each distinct set of settings (`AnalysisSettings`: pairs, points, embedding, sample sizes, seed) is an analysis
of its own: its tables go to ``<run>/analysis/<settings id>/``, its figures (PNG by default;
``formats=("png", "svg")`` for more) and its page to ``figures/<run id>/<settings id>/``, and
``figures/<run id>/index.html`` lists every analysis of the run. So a second analysis with other settings
overwrites nothing of the first. Each stage is a short function from the run (or earlier results) to
DataFrames (the analyses live in `masklab.analysis`; a stage runs them, draws their figures here and notes the
key numbers); stages hand intermediates on through `Shared`. `analyze(run)` returns everything in a `Report`,
so a notebook gets the same results as the command line. `compare` does the same for two runs.

Cost follows the computation (issue 24): the distances of all pairs are stored as N x N matrices of
intersection counts, one memory-mappable file per layer (`masklab.analysis.pairs`, under ``pairs/``); the
summaries read them block by block (`masklab.analysis.summary.pair_summary`) and no per-pair Python object or
table is built unless the run is small enough to read one (``tables["distances"]`` up to CSV_MAX_ROWS rows;
`Report.distances()` makes it on demand for any size). Tables are Parquet, plus CSV up to CSV_MAX_ROWS rows.
The stages that cannot take every mask or pair at 10,000 masks work on samples that they state (n, how, seed:
the ``samples`` table, the page, each stage's table): clustering and the heatmap, the embedding and the
structure test on nested uniform samples of the masks, the interpolation on pairs stratified by distance (so
that the barrier-vs-distance correlation has range). Barrier pairs are independent tasks: in this process, on
a Dask cluster (``scheduler=``) or as submitit jobs (``engine=masklab.scale.pair_jobs.SubmititEngine(...)``),
with identical numbers, each pair's result stored as it is evaluated (``barriers/``), so a killed analysis
resumes where it stopped.

The key numbers say only what the numbers carry: every comparison with chance gives the effect in standard
deviations of its null (one random pair for overlaps, the random sets for the structure test), every
p-value the resolution its null allows, and every figure the n it rests on; a correlation is only given
from 10 pairs (`masklab.analysis.thresholds`), and clusters are only coloured when the structure test
finds them (p < 0.05 and a silhouette above 0.25).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from masklab import files as W
from masklab.analysis import (
    consensus,
    consensus_histogram,
    random_baseline,
    random_baseline_samples,
    union_coverage,
    with_baseline,
)
from masklab.analysis.cluster_structure import structure_vs_random
from masklab.analysis.clustering import cluster_masks, cluster_summary, linkage_matrix
from masklab.analysis.distances import long_table, store_intersections
from masklab.analysis.embedding import NAMES, choose_method, embed
from masklab.analysis.pairs import PairStore
from masklab.analysis.sampling import SAMPLE_COLUMNS, Sample, hamming_histogram, mask_sample, stratified_pairs
from masklab.analysis.summary import pair_summary
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.analysis.tiles import connect
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
from masklab.plots.landscape import MAX_CELLS, heatmap_block
from masklab.report.base import (
    CSV_MAX_ROWS,
    DEFAULT_FORMATS,
    FORMATS,
    Report,
    Shared,
    Stage,
    check_formats,
    embedding_title,
    figure,
    finish_figures,
    unfinished_warning,
    write_table,
)
from masklab.report.drawing import FigureDrawer, can_draw_beside
from masklab.report.functional import function_stage
from masklab.report.pages import write_index, write_run_index
from masklab.report.settings import AnalysisSettings
from masklab.store.catalog import KEY_NUMBERS_FILE, SETTINGS_FILE, update_run
from masklab.store.meta import now
from masklab.store.run import Run, open_run
from masklab.units import count, metric_value, signed_sd
from masklab.units import points as points_text

if TYPE_CHECKING:
    from masklab.analysis.paths.jobs import Engine

DEFAULT_PAIRS = AnalysisSettings.pairs
DEFAULT_POINTS = AnalysisSettings.points
DISTANCE_METRICS = ("hamming_norm", "matching", "jaccard")  # the long table's, for runs small enough to read it


def analyze(run, figures_dir: str | os.PathLike | None = None, *, quiet: bool = True, pairs: int = DEFAULT_PAIRS,
            points: int = DEFAULT_POINTS, embedding: bool = True, interpolation: bool = True,
            random_state: int = 0, formats: tuple[str, ...] | str = DEFAULT_FORMATS, embedding_method: str = "auto",
            n_random: int = AnalysisSettings.n_random, functional: bool = True,
            settings: AnalysisSettings | None = None,
            scheduler: str | None = None, workers: int | None = None, engine: Engine | None = None,
            **sample_sizes) -> Report:
    """Analyse `run` (a Run, path or run id) and write its tables, figures and index page.

    The settings (what is computed) come from the keywords (`pairs`, `points`, `embedding`, `random_state`,
    `embedding_method`, `n_random`, and the sample sizes `cluster_masks`, `embedding_masks`, `structure_masks`,
    `null_masks`, `functional_masks`, `functional_pairs`, `full`: see `AnalysisSettings`) or whole as
    `settings`; their id names the analysis folder
    ``<run>/analysis/<id>/`` and the figures folder ``<figures_dir>/<run id>/<id>/`` (`figures_dir` defaults to
    `figures/` beside the run's `runs/` folder). `interpolation=False` is ``pairs=0``. Figures in each of
    `formats` (PNG only by default: each SVG costs as much again).

    `pairs` mask pairs, stratified by distance, are interpolated (soft path, `points` points each), in this
    process, on the Dask cluster at `scheduler` ("local": a LocalCluster of `workers` processes) or with
    `engine` (e.g. ``masklab.scale.pair_jobs.SubmititEngine(4, "slurm")``); pairs evaluated by an earlier
    analysis with the same settings are not evaluated again. The embedding is MDS below 50 masks and UMAP from
    50 (``embedding_method="auto"``). The cluster-structure test draws `n_random` random mask sets (p-value
    resolution 1 / (1 + n_random)).
    `functional`: the masks' functional similarity (prediction disagreement, ensembles, linear CKA; see
    `masklab.analysis.functional`), for runs with at least 2 masks and a model to rebuild; its per-pair matrices
    go to ``<run>/analysis/<id>/functional/``.

    `Report.seconds` splits the wall time: each stage (its own computation), "tables" (writing them),
    "figures" (what drawing and writing the figure files added: on a machine with a core to spare they are drawn
    by one forked worker process while the stages run, `masklab.report.drawing`, and this is the wait for the
    last ones), "index" (the pages).
    """
    run = run if isinstance(run, Run) else open_run(run)
    if len(run.ids) == 0:
        raise UserError(f"run {run.id} has no finished masks yet; generate some first (masklab generate --resume)")
    formats = check_formats(formats)
    if settings is None:
        settings = AnalysisSettings(pairs=pairs if interpolation else 0, points=points, embedding=embedding,
                                    embedding_method=embedding_method, n_random=n_random,
                                    random_state=random_state, functional=functional,
                                    **_sample_sizes(sample_sizes))
    elif sample_sizes:
        raise UserError(f"pass the sample sizes ({', '.join(sample_sizes)}) inside `settings`, not beside it")
    if scheduler is not None and engine is not None:
        raise UserError("give the barrier pairs one engine: a Dask scheduler or an engine, not both")
    sid = settings.id
    figures_root = Path(figures_dir) if figures_dir is not None else run.path.parent.parent / "figures"
    W.make_dirs(run.path / "analysis", root=run.path)  # links refused: nothing is written outside the run
    out_tables = W.make_dirs(run.path / "analysis" / sid, root=run.path)
    out_figures = W.make_dirs(figures_root / run.id / sid, root=figures_root)
    report = Report(run.id, settings=settings, folder=out_tables, masks=run.masks)
    unfinished = unfinished_warning(run)
    if unfinished:
        report.warnings.append(unfinished)
        report.note("masks analysed", f"{len(run)} of the {run.config.masks} the run plans (unfinished)",
                    value=len(run), unit="masks", n=run.config.masks)
    # the figures are drawn beside the stages where a core is free (masklab.report.drawing), the worker forked
    # here, before the stages start any thread
    shared = Shared(out_figures, formats, tables=out_tables, settings=settings, quiet=quiet,
                    drawer=FigureDrawer(beside=can_draw_beside()))
    client = None
    try:
        if scheduler is not None and settings.pairs > 0:
            # here: the interpolation's jobs bring torch; only --scheduler needs them
            from masklab.analysis.paths.jobs import DaskEngine

            client = connect(scheduler, workers)
            engine = DaskEngine(client)
        try:
            _run_stages(run, report, shared, settings, engine)
        finally:
            if client is not None:
                cluster = getattr(client, "cluster", None) if scheduler == "local" else None
                client.close()
                if cluster is not None:
                    cluster.close()
        start = time.perf_counter()
        written = [p for name, table in report.tables.items() for p in write_table(table, out_tables / name)]
        report.seconds["tables"] = time.perf_counter() - start
        finish_figures(report, shared)  # (while the tables were written, the last figures were drawn)
    finally:
        shared.drawer.close()
    _remove_stale(out_tables, written, report, formats)
    start = time.perf_counter()
    report.index = write_index(run, report, out_figures, out_tables, formats)
    _write_settings(run, report, out_tables)
    write_run_index(run, figures_root / run.id)
    report.seconds["index"] = time.perf_counter() - start
    update_run(run.path, run.path.parent, run)  # the results catalog (best effort: `masklab results` catches up)
    return report


def _sample_sizes(given: dict) -> dict:
    known = ("cluster_masks", "embedding_masks", "structure_masks", "null_masks", "functional_masks",
             "functional_pairs", "full")
    unknown = [k for k in given if k not in known]
    if unknown:
        raise TypeError(f"analyze() got unexpected keyword arguments {', '.join(unknown)}")
    return given


def _run_stages(run: Run, report: Report, shared: Shared, settings: AnalysisSettings, engine) -> None:
    n = len(run.ids)
    stages: list[tuple[str, Stage]] = [("distances", _distances), ("consensus", _consensus),
                                       ("clustering", _clustering)]
    if settings.embedding and n >= 4:
        stages.append(("embedding", _embedding))
    if settings.pairs > 0 and n >= 2 and run.has_architecture:
        stages.append(("interpolation", lambda r, rep, sh: _interpolation(r, rep, sh, engine)))
    if settings.functional and n >= 2 and run.has_architecture:
        stages.append(("function", lambda r, rep, sh: function_stage(r, rep, sh, settings.random_state)))
    if any(run.has_extra(i, "snapshots") for i in run.ids):
        stages.append(("trajectories", _trajectories))
    bar = tqdm(total=len(stages), disable=shared.quiet, unit="stage", desc="analyze", dynamic_ncols=True,
               leave=False)
    for name, stage in stages:
        bar.set_description(f"analyze: {name}")
        shared.lap()
        stage(run, report, shared)
        report.seconds[name] = shared.lap()
        bar.update(1)
    bar.close()
    report.tables["samples"] = pd.DataFrame([s.row() for s in shared.samples], columns=SAMPLE_COLUMNS)


def _remove_stale(folder: Path, written: list[Path], report: Report, formats: tuple[str, ...]) -> None:
    """Remove what an earlier analysis with the same settings left that this one did not write again (a table
    of a stage that no longer applies, a figure in a format not asked for now), so that nothing stale is left
    beside the page; the pair matrices (pairs/) and the barrier results (barriers/) are managed by their
    stages."""
    keep = {p.name for p in written}
    for path in folder.iterdir():
        if path.suffix in (".csv", ".parquet") and path.name not in keep and path.is_file() and \
                not path.is_symlink():
            path.unlink()
    figures = {p.stem for p in report.figures.values()}
    out = next(iter(report.figures.values())).parent if report.figures else None
    if out is not None:
        for fmt in FORMATS:
            for path in out.glob(f"*.{fmt}"):
                if (fmt not in formats or path.stem not in figures) and path.is_file() and not path.is_symlink():
                    path.unlink()


def _write_settings(run: Run, report: Report, folder: Path) -> None:
    """settings.json and key_numbers.json of the analysis folder: what the results catalog reads."""
    settings = report.settings
    assert settings is not None
    W.atomic_write_json(folder / SETTINGS_FILE, {
        "settings_id": settings.id, "settings": settings.to_dict(non_default=True),
        "resolved": settings.to_dict(), "created": now(), "n_masks": len(run.ids),
        "page": str(report.index) if report.index is not None else None}, root=run.path)
    numbers = report.key_numbers.astype(object).where(report.key_numbers.notna(), None).to_dict("records")
    W.atomic_write(folder / KEY_NUMBERS_FILE, json.dumps(numbers, default=_plain).encode(), root=run.path,
                   durable=False)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def _stated(shared: Shared, sample: Sample) -> Sample:
    shared.samples.append(sample)
    return sample


# ---- stages ------------------------------------------------------------------------------------------------
def _distances(run: Run, report: Report, shared: Shared) -> None:
    masks = run.masks
    settings = _need(shared.settings, "analyze")
    n = len(masks)
    store = PairStore.create(_need(shared.tables, "analyze") / "pairs", masks.ids, root=run.path)
    bar = tqdm(total=n, disable=shared.quiet or n < 2000, unit="mask", desc="all-pair distances", leave=False)
    result = store_intersections(masks, store, progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    shared.intersections, report.pairs = result, store
    baseline = random_baseline(masks)
    shared.baseline_all = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])
    report.tables["baseline"] = baseline
    if n < 2:
        return
    summary = pair_summary(result, baseline)
    report.tables["layer_summary"] = summary
    if n * (n - 1) // 2 * len(result.layers) * len(DISTANCE_METRICS) <= CSV_MAX_ROWS:  # a table a person reads
        long = pd.concat([long_table(result, m) for m in DISTANCE_METRICS], ignore_index=True)
        report.tables["distances"] = with_baseline(long, masks)
    counts = hamming_histogram(result)
    at = np.flatnonzero(counts)
    histogram = pd.DataFrame({"layer": "all", "metric": "hamming_norm", "hamming": at,
                              "value": at / float(result.n_bits[0]), "count": counts[at]})
    report.tables["distance_histogram"] = histogram
    n_null = min(max(n, 8), settings.null_masks)
    random = random_baseline_samples(masks, n_samples=n_null, metric="hamming_norm", per_layer=False,
                                     random_state=settings.random_state)
    null = _stated(shared, Sample("random null", np.arange(n_null), n_null, "random masks with the per-layer "
                                  "counts of the masks", settings.random_state))
    report.tables["random_distances"] = random
    figure(report, shared, "per_layer_similarity", per_layer_similarity, (summary,),
            "Percent matching and Jaccard index per layer (mean and range over all mask pairs) beside the "
            "random-mask baseline with the same per-layer counts (its band: +-1 sd of one random pair).")
    figure(report, shared, "distance_histogram", distance_histogram, (histogram, random, shared.baseline_all),
            f"Normalised Hamming distance of all {int(counts.sum()):,} mask pairs against the pairs of {n_null:,} "
            f"random masks with the same per-layer counts ({null.how}, seed {null.seed}; histogram) and the "
            "closed-form expectation (line).", metric="hamming_norm")
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
            f"How many of the {len(masks):,} masks keep each weight, against Binomial(N, k) for independent random "
            "masks.")
    row = report.tables["consensus"].iloc[0]  # the whole network ("all")
    for column, words in (("kept_by_all", "kept by all masks"), ("kept_by_none", "kept by no mask")):
        report.note(f"weights {words}", f"{int(row[column]):,} of {int(row['n_bits']):,} (chance "
                    f"{row['expected_' + column]:,.1f})", value=int(row[column]), unit="weights",
                    chance=float(row["expected_" + column]), n=len(masks))


def _sample_square(run: Run, shared: Shared, sample: Sample) -> pd.DataFrame:
    """Normalised Hamming distances among the masks of `sample`, indexed by mask id."""
    result = _need(shared.intersections, "distances")
    ids = result.ids_a[sample.positions]
    return pd.DataFrame(result.square("hamming_norm", "all", sample.positions), index=pd.Index(ids, name="mask_a"),
                        columns=pd.Index(ids, name="mask_b"))


def _with_sample(table: pd.DataFrame, sample: Sample) -> pd.DataFrame:
    """`table` with the sample it rests on in three columns (sample_n, sample_of, sample_seed)."""
    return table.assign(sample_n=sample.n_used, sample_of=sample.n_total, sample_seed=sample.seed)


def _clustering(run: Run, report: Report, shared: Shared) -> None:
    settings = _need(shared.settings, "analyze")
    n_all = len(run.ids)
    sample = _stated(shared, mask_sample(n_all, settings.limit("cluster_masks"), settings.random_state,
                                         "clustering"))
    square = _sample_square(run, shared, sample)
    shared.square = square
    n = len(square)
    about = "" if sample.complete else f" ({sample.describe()})"
    link = None
    if n >= 2:
        link = linkage_matrix(square, "average")
        block = heatmap_block(n, MAX_CELLS)
        cells = f"; each cell is the mean of {block} x {block} pairs" if block > 1 else ""
        figure(report, shared, "distance_heatmap", distance_heatmap, (square, link),
                f"Pairwise normalised Hamming distances of {n:,} masks{about}, ordered by the leaves of their "
                f"average-linkage tree (dendrogram on top, its axis zoomed to the merges){cells}; the dashed lines "
                "mark the random-mask expectation.", metric="hamming_norm", baseline=shared.baseline_all)
    if n < 4:
        return
    labels = cluster_masks(square, linkages={"average": link} if link is not None else None)
    shared.labels = labels
    report.tables["clusters"] = run.table.merge(labels, on="mask_id")
    summary = cluster_summary(square, labels)
    report.tables["cluster_summary"] = _with_sample(summary, sample)
    structure = _stated(shared, mask_sample(n_all, settings.limit("structure_masks"), settings.random_state,
                                            "structure test"))
    masks = run.masks.subset(run.masks.ids[structure.positions].tolist()) if not structure.complete else run.masks
    test = structure_vs_random(masks, n_random=settings.n_random, random_state=settings.random_state)
    shared.structure = test
    report.tables["structure_vs_random"] = _with_sample(test.summary, structure)
    silhouette = test.row("silhouette")
    report.note("cluster structure vs random masks", test.describe() + (
        "" if structure.complete else f" ({structure.describe()})"), value=float(silhouette["observed"]),
        unit="silhouette", chance=float(silhouette["random_mean"]), sd_from_chance=float(silhouette["effect_sd"]),
        n=int(silhouette["n_masks"]))
    for row in summary.itertuples():
        report.note(f"clusters ({row.method})",
                    f"{row.n_clusters} (silhouette {row.silhouette:.3f}; a tree cut always gives clusters: the "
                    f"structure test says whether they mean anything){about}" if row.method != "hdbscan"
                    else f"none: all {row.n_noise} masks are noise{about}" if row.n_clusters == 0
                    else f"{row.n_clusters}, {row.n_noise} masks noise (silhouette {row.silhouette:.3f}){about}",
                    value=int(row.n_clusters), unit="clusters", n=n)


def _need(value, stage: str):
    """An intermediate of an earlier stage (`Shared`), which must have run."""
    if value is None:
        raise RuntimeError(f"the {stage} stage must run before this one")
    return value


def _embedding(run: Run, report: Report, shared: Shared) -> None:
    settings = _need(shared.settings, "analyze")
    sample = _stated(shared, mask_sample(len(run.ids), settings.limit("embedding_masks"), settings.random_state,
                                         "embedding"))
    square = _sample_square(run, shared, sample)
    n = len(square)
    used, why = choose_method(n, settings.embedding_method)
    points = embed(square, used, random_state=settings.random_state)
    table = run.table.merge(points, on="mask_id")
    if shared.labels is not None:
        table = table.merge(shared.labels, on="mask_id", how="left")
    report.tables["embedding"] = _with_sample(table, sample)
    test = shared.structure
    labelled = "cluster_average" in table.columns and bool(table["cluster_average"].notna().all())
    by_cluster = test is not None and test.finds_structure and labelled
    measured = bool(table["test_acc"].notna().any()) if "test_acc" in table.columns else False
    color_by = (["test_acc"] if measured else []) + (["cluster_average"] if by_cluster else [])
    name = NAMES[used]
    about = "" if sample.complete else f"; {sample.describe()}"
    title = embedding_title(f"{name} of {count(n, 'mask')}", why)
    if not measured:
        colours = "masks without a measured accuracy (imported without evaluation)" + (
            ", coloured by cluster" if by_cluster else "")
    elif test is None:
        colours = "coloured by test accuracy"
    elif by_cluster:
        colours = f"coloured by test accuracy and by cluster (the structure test: {test.verdict()})"
    elif not labelled and test.finds_structure:
        colours = "coloured by test accuracy (not every mask drawn was clustered: no cluster colours)"
    else:
        colours = (f"coloured by test accuracy only: the structure test finds no substantial cluster structure "
                   f"({test.verdict()}), so cluster colours would only show an arbitrary cut")
    report.note("embedding", (why or name) + about, n=n)
    figure(report, shared, used, embedding_scatter, (table, color_by),
            f"{name} of the masks on their normalised Hamming distances" + (f" ({why})" if why else "") +
            f"{about}, {colours}.", title=title)


def _interpolation(run: Run, report: Report, shared: Shared, engine) -> None:
    # imported here: it brings torch (1.7 s of import, median of 5), which `analyze --pairs 0` and runs imported
    # without a model never need
    from masklab.analysis.interpolation import barrier_correlation
    from masklab.analysis.paths.jobs import BarrierTask, InProcess, remove_other_results, run_pairs

    settings = _need(shared.settings, "analyze")
    chosen, sample = stratified_pairs(_need(shared.intersections, "distances"), settings.pairs,
                                      settings.random_state)
    _stated(shared, sample)
    task = BarrierTask(run_path=str(run.path), folder=str(_need(shared.tables, "analyze") / "barriers"),
                       points=settings.points, random_state=settings.random_state)
    pairs = list(zip(chosen["mask_a"].tolist(), chosen["mask_b"].tolist()))
    engine = engine or InProcess(run)
    bar = tqdm(total=len(pairs), disable=shared.quiet, unit="pair", desc="barriers", leave=False)
    barriers, curves, evaluated = run_pairs(task, pairs, engine, bar.update)
    bar.close()
    remove_other_results(task, pairs)
    barriers = barriers.merge(chosen.drop(columns="hamming"), on=["mask_a", "mask_b"], how="left")
    report.tables["barriers"] = _with_sample(barriers, sample)
    report.tables["interpolation"] = curves
    n_drawn = len(barriers.groupby(["mask_a", "mask_b"]))
    figure(report, shared, "interpolation", interpolation_curves, (curves,),
            f"Loss and accuracy along the soft path W * ((1 - t) m_a + t m_b) between the masks of each of the "
            f"{count(n_drawn, 'pair')} computed; the dashed lines join the ends and the arrows mark the barriers "
            "(loss barrier in nats, error barrier in percentage points).")
    correlation = barrier_correlation(barriers)
    report.tables["barrier_correlation"] = correlation
    how = f"{sample.describe()}; evaluated {engine.describe()}" + (
        f", {len(pairs) - evaluated} of them stored by an earlier run" if evaluated < len(pairs) else "")
    if len(barriers) >= 3:
        shown = "with Spearman's rank correlation" if len(barriers) >= MIN_CORRELATION_PAIRS else \
            f"(points only: a correlation needs at least {MIN_CORRELATION_PAIRS} pairs)"
        figure(report, shared, "barrier_vs_distance", barrier_vs_distance, (barriers,),
                f"Loss and error barrier of each sampled pair ({count(len(barriers), 'pair')}: {how}) against its "
                f"Hamming distance {shown}.")
    loss, error = barriers["loss_barrier"], barriers["error_barrier"]
    report.note("loss barrier (soft path)", f"mean {loss.mean():.4f} nats, max {loss.max():.4f} nats "
                f"({count(len(loss), 'pair')}: {how})", value=float(loss.mean()), unit="nats", n=len(loss))
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
