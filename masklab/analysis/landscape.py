"""The landscape across settings: one tidy table of every cell's landscape metrics.

A *cell* is one run (its masks share everything but the score seed); a sweep is a grid of cells over models,
widths, methods, recycling, sparsities, epochs and weight seeds. `landscape(cells)` measures each cell with the
analyses of `masklab.analysis` and returns ONE long table: one row per cell x metric x layer, the cell's
resolved settings as columns, and per row the value with its spread, its chance value AT THAT SETTING, the
distance from chance in standard deviations of the chance distribution, and the n it rests on. The sweep's
figures (`masklab.plots.landscape_vs`) are drawn from this table.

Metrics (family: metric; value; chance; sd of chance):

- accuracy: ``test_acc`` (final) and ``best_test_acc``: mean over the masks (sd, min, max, n masks); chance
  1 / classes.
- overlap: ``matching`` and ``jaccard`` per layer and for the whole mask ("all"): mean over all pairs; chance
  the closed forms for independent bits of the layer's density k, ``k^2 + (1 - k)^2`` and ``k / (2 - k)`` (for
  "all": the bit-weighted mean of the layers' matching, exact; and ``sum n_l k_l^2 / sum n_l k_l (2 - k_l)``
  for Jaccard, = k / (2 - k) when the layers share k); sd: one random pair's (exact hypergeometric,
  `random_baseline`).
- consensus: ``kept_by_all`` and ``kept_by_none``, as fractions of the layer's weights; chance: independent
  masks of the same counts (``prod_i k_i``, ``prod_i (1 - k_i)``); sd: binomial over the layer's weights
  (weights treated as independent: an approximation).
- structure: ``silhouette`` and ``cophenetic`` of the average-linkage tree (`structure_vs_random`): observed;
  chance and sd over `n_random` sets of random masks with the same counts; ``p`` with its floor 1/(1 + n_random).
- barrier: ``loss_barrier`` (nats) and ``error_barrier`` (percentage points) on the soft path over a seeded
  sample of `pairs` pairs (mean, sd, min, max, n pairs; no chance value), and Spearman's rho of each with the
  pair's Hamming distance (``*_vs_hamming``, from 10 pairs on, with p and n).
- disagreement, ensemble, cka (functional similarity, `masklab.analysis.functional`): ``disagreement``
  (chance: predictors independent of the input with the masks' class rates; sd: one such pair over the test
  set) and the same value against predictors independent given the true class (``disagreement_given_class``);
  ``disagreement_vs_hamming`` (rho); ``ensemble_softmax`` / ``ensemble_majority`` (accuracy of all K masks
  together; chance 1 / classes) and their gains over the mean and the best member (points); ``cka`` per
  representation (chance: subnetworks of the same weights with random masks of the same counts).

Every row that rests on a subsample says so in ``sample`` (n, how chosen, seed). Each cell's rows are cached in
``<run>/analysis/landscape-<key>.parquet``, the key covering the settings and every mask's id and checksum, so
a second call computes nothing and a run with new masks is measured again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.analysis.baselines import random_baseline
from masklab.analysis.cluster_structure import structure_vs_random
from masklab.analysis.consensus import consensus
from masklab.analysis.distances import ALL, intersections
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.config import method_label
from masklab.errors import StoreError, UserError

LANDSCAPE_VERSION = 1  # bump when a metric's definition changes: cached cells are then measured again
SETTINGS_COLUMNS = ["run", "dataset", "model", "width", "method", "recycling", "sparsity", "epochs", "weight_seed",
                    "masks", "lr", "weight_init", "scale_fan", "recycle_rate", "recycle_every"]
ROW_COLUMNS = ["family", "metric", "layer", "value", "sd", "min", "max", "n", "chance", "chance_sd",
               "sd_from_chance", "p", "p_floor", "unit", "chance_rule", "sample"]
LANDSCAPE_COLUMNS = SETTINGS_COLUMNS + ROW_COLUMNS
FAMILIES = ("accuracy", "overlap", "consensus", "structure", "barrier", "disagreement", "ensemble", "cka")


@dataclass(frozen=True)
class LandscapeSettings:
    """How a cell is measured. `pairs`: barrier pairs per cell (None: all; 0: no barriers), `points` per path;
    `n_random`: random mask sets of the structure test; `structure_max_masks`: masks it tests at most (a seeded
    subset beyond); `functional`: the functional metrics (disagreement, ensembles, CKA), with `orders` ensemble
    orders, `cka_samples` test samples, at most `forward_max_masks` masks evaluated and `cka_random_masks` random
    masks for CKA's chance; `random_state` seeds every sample."""

    pairs: int | None = 10
    points: int = 30
    n_random: int = 99
    structure_max_masks: int = 200
    functional: bool = True
    orders: int = 10
    cka_samples: int = 500
    forward_max_masks: int = 64
    cka_random_masks: int = 8
    random_state: int = 0

    def key(self) -> str:
        """16 hex digits over these settings and LANDSCAPE_VERSION."""
        blob = json.dumps({**asdict(self), "version": LANDSCAPE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_settings(run) -> dict:
    """The settings columns of a run: what it varies in a sweep, as the run used them (`Run.config`: the method's
    defaults resolved, as stored in run.json's `resolved`; an import's training settings stay missing)."""
    config = run.config
    recycling = config.recycle != "none"
    seeds = {int(r["weight_seed"]) for r in run.records.values()}
    return {"run": run.id, "dataset": config.dataset, "model": config.model, "width": float(config.width),
            "method": method_label(config.method, config.recycle), "recycling": config.recycle,
            "sparsity": float(config.sparsity), "epochs": int(config.epochs),
            "weight_seed": seeds.pop() if len(seeds) == 1 else config.weight_seed, "masks": len(run.ids),
            "lr": config.lr, "weight_init": config.weight_init, "scale_fan": config.scale_fan,
            "recycle_rate": config.recycle_rate if recycling else None,
            "recycle_every": config.recycle_every if recycling else None}


def _row(family: str, metric: str, values=None, *, layer: str = ALL, value: float | None = None,
         n: int | None = None, chance: float = np.nan, chance_sd: float = np.nan, p: float = np.nan,
         p_floor: float = np.nan, unit: str = "", chance_rule: str = "", sample: str = "",
         scale: float = 1.0) -> dict:
    """One row; with `values`, value/sd/min/max/n are their mean, sd (ddof 1), min, max and count."""
    if values is not None:
        v = np.asarray(values, dtype=np.float64) * scale
        v = v[np.isfinite(v)]
        stats = {"value": v.mean() if len(v) else np.nan, "sd": v.std(ddof=1) if len(v) > 1 else np.nan,
                 "min": v.min() if len(v) else np.nan, "max": v.max() if len(v) else np.nan,
                 "n": len(v) if n is None else n}
    else:
        stats = {"value": np.nan if value is None else float(value) * scale, "sd": np.nan, "min": np.nan,
                 "max": np.nan, "n": n}
    chance, chance_sd = chance * scale, chance_sd * scale
    away = (stats["value"] - chance) / chance_sd if np.isfinite(chance_sd) and chance_sd > 0 else np.nan
    return {"family": family, "metric": metric, "layer": layer, **stats, "chance": chance, "chance_sd": chance_sd,
            "sd_from_chance": away, "p": p, "p_floor": p_floor, "unit": unit, "chance_rule": chance_rule,
            "sample": sample}


# ---- the families -------------------------------------------------------------------------------------------
def accuracy_rows(run) -> list[dict]:
    table = run.table
    classes = run.meta.get("dataset", {}).get("n_classes")
    chance = 1.0 / classes if classes else np.nan
    return [_row("accuracy", column, table[column], chance=chance, unit="fraction", chance_rule="1 / classes")
            for column in ("test_acc", "best_test_acc") if column in table.columns]


def closed_form_chance(baseline: pd.DataFrame) -> pd.DataFrame:
    """Per layer (and "all") the closed-form chance of matching and Jaccard for the layers' densities k
    (`random_baseline`'s table in, columns layer, matching, jaccard out): per layer ``k^2 + (1 - k)^2`` and
    ``k / (2 - k)``; for "all" the bit-weighted mean of the layers' matching and
    ``sum n_l k_l^2 / sum n_l k_l (2 - k_l)``."""
    layers = baseline[baseline["layer"] != ALL]
    n, k = layers["n_bits"].to_numpy(np.float64), layers["density"].to_numpy(np.float64)
    matching = k ** 2 + (1 - k) ** 2
    jaccard = k / (2 - k)
    whole = {"layer": ALL, "matching": float((n * matching).sum() / n.sum()),
             "jaccard": float((n * k ** 2).sum() / (n * k * (2 - k)).sum())}
    return pd.concat([pd.DataFrame([whole]), pd.DataFrame({"layer": layers["layer"].to_numpy(),
                                                           "matching": matching, "jaccard": jaccard})],
                     ignore_index=True)


def overlap_rows(masks, counts=None) -> list[dict]:
    """Matching and Jaccard per layer and "all" over all pairs, against their closed-form chance."""
    counts = intersections(masks, per_layer=True) if counts is None else counts
    baseline = random_baseline(masks).set_index("layer")
    chance = closed_form_chance(baseline.reset_index()).set_index("layer")
    i, j = np.triu_indices(len(masks), 1)
    rows = []
    rules = {"matching": "k^2 + (1-k)^2 (independent bits of density k)",
             "jaccard": "k / (2-k) (independent bits of density k)"}
    for metric in ("matching", "jaccard"):
        for layer in counts.layers:
            values = np.asarray(counts.metric(metric, layer))[i, j]
            rows.append(_row("overlap", metric, values, layer=layer, chance=float(chance.loc[layer, metric]),
                             chance_sd=float(baseline.loc[layer, f"{metric}_std"]),
                             unit="fraction" if metric == "matching" else "index", chance_rule=rules[metric]))
    return rows


def consensus_rows(masks) -> list[dict]:
    table = consensus(masks)
    rows = []
    for r in table.itertuples():
        for what, expected in (("kept_by_all", r.expected_kept_by_all), ("kept_by_none", r.expected_kept_by_none)):
            p = expected / r.n_bits
            rows.append(_row("consensus", what, layer=str(r.layer), value=getattr(r, what) / r.n_bits,
                             n=len(masks), chance=p, chance_sd=float(np.sqrt(p * (1 - p) / r.n_bits)),
                             unit="fraction of weights",
                             chance_rule="independent masks of the same counts (binomial sd)"))
    return rows


def structure_rows(masks, settings: LandscapeSettings) -> list[dict]:
    if len(masks) < 4:
        return []
    test = structure_vs_random(masks, n_random=settings.n_random, random_state=settings.random_state,
                               max_masks=settings.structure_max_masks)
    rows = []
    for r in test.summary.itertuples():
        tested = int(r.n_masks)
        sample = f"{int(r.n_random)} random mask sets (seed {settings.random_state})"
        if tested < len(masks):
            sample += f"; {tested} of {len(masks)} masks, drawn at random (seed {settings.random_state})"
        rows.append(_row("structure", str(r.statistic), value=r.observed, n=tested, chance=r.random_mean,
                         chance_sd=r.random_std, p=r.p_value, p_floor=r.p_floor, unit="",
                         chance_rule="random masks of the same per-layer counts", sample=sample))
    return rows


def barrier_rows(run, settings: LandscapeSettings, barriers: pd.DataFrame | None = None) -> list[dict]:
    """Soft-path barriers over a seeded sample of pairs (`barriers`: a `barrier_matrix` table already made)."""
    from masklab.analysis.interpolation import barrier_correlation, barrier_matrix

    n = len(run.ids)
    total = n * (n - 1) // 2
    if barriers is None:
        if total == 0 or settings.pairs == 0 or not run.has_architecture:
            return []
        barriers = barrier_matrix(run, pairs=settings.pairs, path="soft", points=settings.points,
                                  random_state=settings.random_state)
    used = len(barriers)
    sample = (f"all {total} pairs" if used >= total else
              f"{used} of {total} pairs, drawn at random (seed {settings.random_state})") + \
        f"; {settings.points} points per path"
    rows = [_row("barrier", "loss_barrier", barriers["loss_barrier"], unit="nats", sample=sample),
            _row("barrier", "error_barrier", barriers["error_barrier"], unit="points", sample=sample, scale=100.0)]
    for r in barrier_correlation(barriers).itertuples():
        rows.append(_row("barrier", f"{r.barrier}_vs_hamming", value=r.spearman_rho, n=int(r.n), p=r.spearman_p,
                         unit="Spearman rho", sample=sample + f"; NaN below {MIN_CORRELATION_PAIRS} pairs"))
    return rows


def function_rows(result) -> list[dict]:
    """Rows of a `functional_similarity` result."""
    s = result.disagreement_summary.iloc[0]
    rows = [_row("disagreement", "disagreement", result.disagreement["disagreement"], chance=s["reference"],
                 chance_sd=s["reference_sd"], unit="fraction of test samples",
                 chance_rule="1 - sum_c p_a(c) p_b(c) (independent of the input, same class rates)",
                 sample=result.sample_pairs),
            _row("disagreement", "disagreement_given_class", result.disagreement["disagreement"],
                 chance=s["reference_given_class"], unit="fraction of test samples",
                 chance_rule="1 - sum_y pi(y) sum_c P_a(c|y) P_b(c|y) (independent given the class)",
                 sample=result.sample_pairs),
            _row("disagreement", "disagreement_vs_hamming", value=s["rho_hamming"], n=int(s["rho_hamming_n"]),
                 p=s["rho_hamming_p"], unit="Spearman rho",
                 sample=result.sample_pairs + f"; NaN below {MIN_CORRELATION_PAIRS} pairs")]
    ensemble = result.ensemble
    if len(ensemble):
        top = ensemble[ensemble["k"] == ensemble["k"].max()]
        for r in top.itertuples():
            rows += [_row("ensemble", f"ensemble_{r.vote}", value=r.acc_mean, n=int(r.k),
                          chance=result.chance_accuracy, unit="fraction", chance_rule="1 / classes",
                          sample=result.sample_forward),
                     _row("ensemble", f"ensemble_{r.vote}_gain_over_mean", value=r.gain_over_mean, n=int(r.k),
                          unit="points", sample=result.sample_forward, scale=100.0),
                     _row("ensemble", f"ensemble_{r.vote}_gain_over_best", value=r.gain_over_best, n=int(r.k),
                          unit="points", sample=result.sample_forward, scale=100.0)]
    for r in result.cka_summary.itertuples():
        values = result.cka.loc[result.cka["layer"] == r.layer, "cka"]
        rows.append(_row("cka", "cka", values, layer=str(r.layer), chance=r.random_mean, chance_sd=r.random_sd,
                         unit="", chance_rule="subnetworks of the same weights with random masks of the same counts",
                         sample=result.sample_cka))
    return rows


# ---- one cell, many cells ---------------------------------------------------------------------------------------
def cell_rows(run, settings: LandscapeSettings | None = None, *, progress: bool = False,
              barriers: pd.DataFrame | None = None, functional=None) -> pd.DataFrame:
    """The landscape rows of one run (columns ROW_COLUMNS). `barriers` / `functional`: results already made
    (by `analyze`) to use instead of computing them again. A dense run (trained weights, every weight kept)
    gets accuracy and the functional metrics only."""
    settings = settings or LandscapeSettings()
    if len(run.ids) == 0:
        raise UserError(f"run {run.id} has no finished masks; generate some first")
    rows = accuracy_rows(run)
    masks = run.masks
    if len(masks) >= 2:
        if run.config.method != "dense":  # a dense run's masks keep every weight: nothing to compare
            rows += overlap_rows(masks)
            rows += consensus_rows(masks)
            rows += structure_rows(masks, settings)
            rows += barrier_rows(run, settings, barriers)
        if settings.functional and run.has_architecture:
            if functional is None:
                from masklab.analysis.functional import functional_similarity

                functional = functional_similarity(run, orders=settings.orders, cka_samples=settings.cka_samples,
                                                   max_masks=settings.forward_max_masks,
                                                   n_random_masks=settings.cka_random_masks,
                                                   random_state=settings.random_state, progress=progress)
            rows += function_rows(functional)
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


# (metric, layer, column) -> key-table column; layer "last hidden": the CKA representation before the logits
KEY_COLUMNS = [("test_acc", "all", "value", "acc"), ("matching", "all", "value", "matching"),
               ("matching", "all", "sd_from_chance", "matching_sd"), ("jaccard", "all", "value", "jaccard"),
               ("jaccard", "all", "chance", "jaccard_chance"), ("kept_by_none", "all", "value", "kept_by_none"),
               ("kept_by_none", "all", "chance", "kept_by_none_chance"),
               ("silhouette", "all", "sd_from_chance", "silhouette_sd"), ("silhouette", "all", "p", "silhouette_p"),
               ("error_barrier", "all", "value", "error_barrier"), ("disagreement", "all", "value", "disagreement"),
               ("disagreement_given_class", "all", "chance", "disagreement_given_class_chance"),
               ("ensemble_softmax_gain_over_mean", "all", "value", "ensemble_gain"),
               ("cka", "last hidden", "value", "cka_last_hidden"),
               ("cka", "last hidden", "chance", "cka_last_hidden_chance")]
CELL_KEYS = ["model", "width", "method", "sparsity", "epochs", "weight_seed", "masks"]


def key_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell with a few numbers of each family (what `masklab sweep` prints): acc (final, mean),
    matching and its sd from chance, Jaccard and its chance, kept_by_none and its chance (fractions), the
    silhouette's sd from random masks and p, the mean error barrier (points), mean disagreement and the
    disagreement of errors independent given the class, the softmax ensemble's gain over the mean mask
    (points), and CKA of the last hidden layer with its random-mask chance. NaN where a cell lacks it."""
    out = []
    for _, cell in table.groupby("run", sort=False):
        row = {k: cell[k].iloc[0] for k in CELL_KEYS}
        cka_layers = list(dict.fromkeys(cell.loc[cell["metric"] == "cka", "layer"]))
        hidden = cka_layers[-2] if len(cka_layers) >= 2 else None
        for metric, layer, column, name in KEY_COLUMNS:
            where = hidden if layer == "last hidden" else layer
            hit = cell[(cell["metric"] == metric) & (cell["layer"] == where)]
            row[name] = float(hit[column].iloc[0]) if len(hit) else np.nan
        out.append(row)
    return pd.DataFrame(out, columns=CELL_KEYS + [name for *_, name in KEY_COLUMNS])


def _registry_digest(run) -> str:
    blob = json.dumps([[i, run.records[i]["checksum"]] for i in run.ids])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_cache_path(run, settings: LandscapeSettings):
    """Where a cell's rows are cached: ``<run>/analysis/landscape-<settings key>-<registry digest>.parquet``."""
    return run.path / "analysis" / f"landscape-{settings.key()}-{_registry_digest(run)}.parquet"


def cached_cell_rows(run, settings: LandscapeSettings, *, cache: bool = True, progress: bool = False,
                     **precomputed) -> pd.DataFrame:
    """`cell_rows`, read from the cell's cache when it has them, else computed and (with `cache`) written."""
    path = cell_cache_path(run, settings)
    if cache and path.is_file() and not path.is_symlink():
        try:
            return pd.read_parquet(path)[ROW_COLUMNS]
        except (OSError, ValueError, KeyError):  # a damaged cache is computed again
            pass
    rows = cell_rows(run, settings, progress=progress, **precomputed)
    if cache:
        try:
            folder = W.make_dirs(run.path / "analysis", root=run.path)
            buffer = io.BytesIO()
            rows.to_parquet(buffer, index=False)
            W.atomic_write(folder / path.name, buffer.getvalue(), durable=False, root=run.path)
        except (StoreError, OSError):  # a read-only run is measured, not cached
            pass
    return rows


def _as_runs(runs_or_sweep, runs_dir) -> list:
    from masklab.store.run import Run, open_run

    if isinstance(runs_or_sweep, Run):
        return [runs_or_sweep]
    if isinstance(runs_or_sweep, pd.DataFrame):
        column = next((c for c in ("runs", "run", "run_id") if c in runs_or_sweep.columns), None)
        if column is None:
            raise UserError("landscape takes runs, or a table with a `runs` column (masklab.sweep's) or `run`")
        ids = list(dict.fromkeys(i for cell in runs_or_sweep[column].astype(str) for i in cell.split(",") if i))
        return [open_run(i, runs_dir) for i in ids]
    if isinstance(runs_or_sweep, (str, os.PathLike)):
        return [open_run(runs_or_sweep, runs_dir)]
    return [r if isinstance(r, Run) else open_run(r, runs_dir) for r in runs_or_sweep]


def landscape(runs_or_sweep, settings: LandscapeSettings | None = None, *, runs_dir: str | os.PathLike = "runs",
              cache: bool = True, progress: bool = False, precomputed: dict | None = None,
              **options) -> pd.DataFrame:
    """The landscape table of a set of cells: runs (Run objects, paths or run ids), or a sweep's table (its
    `runs` column names the cells). One row per cell x metric x layer, columns LANDSCAPE_COLUMNS (see the module
    docstring). `settings` (or the same fields as keywords, e.g. ``pairs=20``) say how cells are measured; each
    cell's rows are cached in the run (`cell_cache_path`) unless `cache=False`. `precomputed` (one cell):
    results `analyze` already made (``barriers``), used instead of computing them again.

    Examples
    --------
    >>> table = masklab.landscape(masklab.sweep.sweep_runs(base, ["edge-popup", "biprop"], [0.5, 0.9], seeds=4))
    >>> table[(table.metric == "matching") & (table.layer == "all")][["method", "sparsity", "value", "chance"]]
    """
    settings = settings or LandscapeSettings()
    if options:
        settings = LandscapeSettings(**{**asdict(settings), **options})
    frames = []
    for run in _as_runs(runs_or_sweep, runs_dir):
        rows = cached_cell_rows(run, settings, cache=cache, progress=progress, **(precomputed or {}))
        settings_columns = cell_settings(run)
        frames.append(rows.assign(**{k: [v] * len(rows) for k, v in settings_columns.items()}))
    if not frames:
        return pd.DataFrame(columns=LANDSCAPE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[LANDSCAPE_COLUMNS]


__all__ = ["FAMILIES", "LANDSCAPE_COLUMNS", "LandscapeSettings", "cell_rows", "cell_settings", "closed_form_chance",
           "key_table", "landscape"]
