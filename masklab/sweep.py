"""`masklab sweep`: a grid of runs over models, widths, methods (recycling included), sparsities, epochs and
weight seeds, its accuracy table, and its landscape across settings.

Each cell of the grid is an ordinary run (its id is its config hash), so a sweep resumes where it stopped and a
second call with the same grid trains nothing. The `seeds` of a cell are the masks of its run: they share the
weights and differ in score seed (use several weight seeds for weight variation). (Dense cells vary the data
seed instead: without scores, score seeds would repeat one network.) A method may carry settings of its own,
``biprop+iwr:recycle_every=2`` (each ``:key=value`` a run option for that method's cells only).

`sweep_table` gives one row per (model, width, method, sparsity, epochs) with final and best test accuracy,
mean and std over the masks, chance (1 / classes), and, for CIFAR-10 with conv2/4/6/8, the published number
and the difference to it. `masklab.landscape(runs)` (masklab.analysis.landscape) measures every cell;
`write_landscape` writes that table and one figure per metric family. A sweep has an id of its own
(`sweep_id`: a hash of its grid and base config) that names its outputs, so that two sweeps never overwrite
each other's figures and tables.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from masklab import files as W
from masklab.analysis.landscape import LandscapeSettings, key_table, landscape
from masklab.config import UNHASHED, RunConfig, method_label, parse_method
from masklab.errors import UserError
from masklab.published import published_for

CELL_FIELDS = ("model", "width", "epochs", "method", "recycle", "sparsity", "masks", "weight_seed", "name")
CSV_MAX_ROWS = 100_000  # the landscape table also goes to CSV (for a person to read) up to this many rows


def parse_method_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"biprop+iwr:recycle_every=2"`` -> ("biprop", "iwr", {"recycle_every": 2}): a method label with run
    options of its own (each ``:key=value``, checked and typed like a config file's keys)."""
    label, *parts = [p.strip() for p in str(spec).split(":")]
    method, recycle = parse_method(label)
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise UserError(f"method {spec!r}: {part!r} is not key=value (e.g. biprop+iwr:recycle_every=2)")
        if key in CELL_FIELDS:
            raise UserError(f"method {spec!r}: {key} is an axis of the sweep, not a method's own setting")
        options[key] = value.strip()
    if options:  # typed and checked as a config file's keys are
        typed = RunConfig.from_dict(options, source=f"method {spec!r}").to_dict()
        options = {k: typed[k] for k in options}
    return method, recycle, options


def sweep_configs(base: RunConfig, methods: Sequence[str], sparsities: Sequence[float], seeds: int,
                  weight_seeds: Sequence[int] = (0,), *, models: Sequence[str] | None = None,
                  widths: Sequence[float] | None = None, epochs: Sequence[int] | None = None) -> list[RunConfig]:
    """One validated RunConfig per cell: models x widths x epochs x methods x weight seeds x sparsities (each
    axis defaults to the base config's one value); dense appears once per model, width, epochs and weight seed
    (it has no sparsity), and its seeds vary the data seed (batch order): dense training has no scores, so score
    seeds alone would repeat one network `seeds` times."""
    if seeds < 1:
        raise UserError(f"sweep seeds = {seeds} is invalid: use at least 1 seed (masks per cell)")
    if not sparsities:
        raise UserError("sweep needs at least one sparsity, e.g. --sparsities 0.5,0.9")
    specs = []
    for label in methods:
        try:
            specs.append(parse_method_spec(label))
        except UserError as e:
            raise UserError(f"sweep {e}") from None
    configs = []
    for model, width, n_epochs, (method, recycle, options), weight_seed in itertools.product(
            models or [base.model], widths or [base.width], epochs or [base.epochs], specs, weight_seeds):
        for sparsity in ([0.0] if method == "dense" else sparsities):
            config = base.replace(**options, model=model, width=float(width), epochs=int(n_epochs), method=method,
                                  recycle=recycle, sparsity=float(sparsity), masks=seeds,
                                  weight_seed=int(weight_seed), name=None,
                                  vary_data_seed=base.vary_data_seed or method == "dense")
            configs.append(config.validate())
    return configs


def sweep_id(base: RunConfig, methods: Sequence[str], sparsities: Sequence[float], seeds: int,
             weight_seeds: Sequence[int] = (0,), *, models: Sequence[str] | None = None,
             widths: Sequence[float] | None = None, epochs: Sequence[int] | None = None,
             name: str | None = None) -> str:
    """The sweep's own id, ``<name>-<8 hex digits>`` (default name ``sweep-<dataset>-<model(s)>``): a hash of
    its grid (methods, sparsities, seeds, weight seeds, and the models, widths and epochs where they are not just
    the base config's; each as a set, so the order they are given in does not matter) and of its base config
    (every field set away from its default, except those a sweep sets per cell and those that never change a
    mask: data root, device, stack). The same sweep run again has the same id; any other grid or base config
    has another. The name is not hashed (as for runs)."""
    varied = ("method", "recycle", "sparsity", "masks", "weight_seed", "name")  # set per cell by every sweep
    base_fields = {k: v for k, v in base.to_dict(non_default=True).items() if k not in varied and k not in UNHASHED}
    grid: dict[str, Any] = {"base": base_fields, "methods": sorted(str(m) for m in methods),
                            "sparsities": sorted(float(x) for x in sparsities), "seeds": int(seeds),
                            "weight_seeds": sorted(int(w) for w in weight_seeds)}
    for key, values, default, kind in (("models", models, base.model, str), ("widths", widths, base.width, float),
                                       ("epochs", epochs, base.epochs, int)):
        if values is not None and [kind(v) for v in values] != [default]:  # (one base value: ids as before)
            grid[key] = sorted(kind(v) for v in values)
    digest = hashlib.sha256(json.dumps(grid, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    shown = list(dict.fromkeys(models or [base.model]))
    label = name or f"sweep-{base.dataset}-{'+'.join(shown) if len(shown) <= 3 else f'{len(shown)}-models'}"
    return f"{label}-{digest[:8]}"


def sweep_runs(base: RunConfig | dict | None = None, methods: Sequence[str] = ("edge-popup", "biprop"),
               sparsities: Sequence[float] = (0.5, 0.9), seeds: int = 3, weight_seeds: Sequence[int] = (0,), *,
               models: Sequence[str] | None = None, widths: Sequence[float] | None = None,
               epochs: Sequence[int] | None = None, runs_dir: str | os.PathLike = "runs", quiet: bool = True,
               log: Callable[[str], None] | None = None, jobs: int | None = None, executor: str = "local",
               slurm=None, allow_device_change: bool = False) -> list:
    """Train (or reuse) every cell's run and return the runs, in grid order (see `sweep_configs`).

    `jobs=N`: N submitit jobs (`executor` local or slurm, `slurm` a SlurmOptions) train the cells at once, each
    job training one shard of every cell (masklab.scale.executors), so the work is balanced whatever the cells
    cost; the runs are the same as one process makes. `allow_device_change`: see `masklab.generate`."""
    from masklab.data import load_config_dataset
    from masklab.generation import generate
    from masklab.store.run import Run

    base = base if isinstance(base, RunConfig) else RunConfig.from_dict(base or {}, source="sweep")
    configs = sweep_configs(base, methods, sparsities, seeds, weight_seeds, models=models, widths=widths,
                            epochs=epochs)
    if jobs is not None:
        from masklab.scale.executors import submit_shards

        submission = submit_shards(configs, runs_dir, jobs, executor, slurm=slurm, quiet=quiet, log=log,
                                   allow_device_change=allow_device_change)
        return [Run(path) for path in submission.runs]
    data = load_config_dataset(base)  # shared by every cell
    runs = []
    for n, config in enumerate(configs, 1):
        if log is not None:
            log(f"[{n}/{len(configs)}] {config.model} width {config.width:g} "
                f"{method_label(config.method, config.recycle)} sparsity {config.sparsity:g} {config.epochs} epochs "
                f"weight seed {config.weight_seed}: {config.run_id}")
        runs.append(generate(config, runs_dir=runs_dir, resume=True, quiet=quiet, data=data,
                             allow_device_change=allow_device_change))
    return runs


def sweep(base: RunConfig | dict | None = None, methods: Sequence[str] = ("edge-popup", "biprop"),
          sparsities: Sequence[float] = (0.5, 0.9), seeds: int = 3, weight_seeds: Sequence[int] = (0,),
          **options) -> pd.DataFrame:
    """Train (or reuse) every cell's run (`sweep_runs`, same options) and return the accuracy table
    (`sweep_table`)."""
    return sweep_table(sweep_runs(base, methods, sparsities, seeds, weight_seeds, **options))


def sweep_table(runs: Sequence[Any]) -> pd.DataFrame:
    """Accuracy per (model, width, method, sparsity, epochs) over all masks of the given runs.

    Columns: model, width, method, sparsity, n (masks), acc_mean / acc_std (final test accuracy, fractions),
    best_mean / best_std (best over epochs), epochs, chance (1 / the dataset's classes; NaN when the runs do not
    record it), runs (run ids); for CIFAR-10 conv-N also `published` (%, best accuracy) and
    `best_minus_published` (percentage points).
    """
    rows = []
    keys = ["model", "width", "method", "sparsity", "epochs"]
    for run in runs:
        table = run.table
        classes = getattr(run, "meta", {}).get("dataset", {}).get("n_classes")
        rows.append(pd.DataFrame({"model": run.config.model, "width": float(run.config.width),
                                  "method": method_label(run.config.method, run.config.recycle),
                                  "sparsity": run.config.sparsity, "epochs": int(run.config.epochs),
                                  "test_acc": table["test_acc"], "best_test_acc": table["best_test_acc"],
                                  "chance": 1.0 / classes if classes else float("nan"), "run": run.id}))
    if not rows:
        return pd.DataFrame(columns=["model", "width", "method", "sparsity", "n", "acc_mean", "acc_std", "best_mean",
                                     "best_std", "epochs", "chance"])
    masks = pd.concat(rows, ignore_index=True)
    grouped = masks.groupby(keys, sort=False)
    out = grouped.agg(n=("test_acc", "size"), acc_mean=("test_acc", "mean"), acc_std=("test_acc", "std"),
                      best_mean=("best_test_acc", "mean"), best_std=("best_test_acc", "std"),
                      chance=("chance", "mean"),
                      runs=("run", lambda s: ",".join(sorted(set(s))))).reset_index()
    out = out[["model", "width", "method", "sparsity", "n", "acc_mean", "acc_std", "best_mean", "best_std", "epochs",
               "chance", "runs"]]
    first = runs[0].config
    published = published_for(first.dataset, first.model) if masks["model"].nunique() == 1 else None
    if published is not None:
        out = out.merge(published, on=["method", "sparsity"], how="left")
        out["best_minus_published"] = out["best_mean"] * 100 - out["published"]
    return out


@dataclass
class SweepLandscape:
    """What `sweep_landscape` made: the landscape table, its key table (`key_table`: one row per cell), the
    paths written (`write_landscape`; with pages, "pages" -> the folder of the cells' analyze pages; "seconds"
    -> seconds.csv), and per cell its wall time (`seconds`: run, masks, train_seconds = the masks' recorded
    training time summed, measure_seconds = the landscape (and page) here, cached cells near 0)."""

    table: pd.DataFrame
    key_table: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def rows(self) -> int:
        return len(self.table)


def sweep_landscape(runs: Sequence[Any], folder: str | os.PathLike, *, pairs: int | None = 10, pages: bool = False,
                    formats: Sequence[str] = ("png",), quiet: bool = True, title: str = "",
                    settings: LandscapeSettings | None = None) -> SweepLandscape:
    """Measure every cell (`masklab.landscape`, barriers over `pairs` pairs per cell) and write the table and
    figures into `folder` (`write_landscape`). With `pages`, every cell's `masklab analyze` page is written too,
    under ``folder/cells/<run id>/`` (its barriers, over the same pairs, are the landscape's)."""
    from tqdm import tqdm

    settings = settings or LandscapeSettings(pairs=pairs)
    frames = []
    folder = Path(folder)
    timing = []
    for run in tqdm(runs, desc="landscape: cells", unit="cell", disable=quiet, leave=False):
        start = time.perf_counter()
        precomputed: dict[str, pd.DataFrame] = {}
        if pages:
            from masklab.report import analyze

            n = len(run.ids)
            chosen = n * (n - 1) // 2 if settings.pairs is None else settings.pairs
            report = analyze(run, folder / "cells", quiet=True, pairs=chosen, points=settings.points,
                             random_state=settings.random_state, formats=tuple(formats), n_random=settings.n_random)
            if "barriers" in report.tables:
                precomputed["barriers"] = report.tables["barriers"]
        frames.append(landscape([run], settings, precomputed=precomputed))
        timing.append({"run": run.id, "masks": len(run.ids), "train_seconds": float(run.table["seconds"].sum()),
                       "measure_seconds": time.perf_counter() - start})
    table = pd.concat(frames, ignore_index=True) if frames else landscape([], settings)
    out = SweepLandscape(table, key_table(table), seconds=pd.DataFrame(timing))
    out.paths = write_landscape(table, folder, title=title, formats=formats)
    W.atomic_write(folder / "seconds.csv", out.seconds.to_csv(index=False).encode(), durable=False)
    out.paths["seconds"] = folder / "seconds.csv"
    if pages:
        out.paths["pages"] = folder / "cells"
    return out


def write_landscape(table: pd.DataFrame, folder: str | os.PathLike, *, title: str = "",
                    formats: Sequence[str] = ("png",)) -> dict[str, Path]:
    """Write a landscape table (`masklab.landscape`) into `folder`: ``landscape.parquet``, ``landscape.csv``
    (up to CSV_MAX_ROWS rows) and ``landscape-<family>.<format>``, one figure per metric family
    (`masklab.plots.landscape_vs`). Returns the paths by name ("table", "csv", and each family)."""
    from masklab.plots import landscape_vs, save_figure

    folder = W.make_dirs(Path(folder))
    paths: dict[str, Path] = {}
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    W.atomic_write(folder / "landscape.parquet", buffer.getvalue(), durable=False)
    paths["table"] = folder / "landscape.parquet"
    if len(table) <= CSV_MAX_ROWS:
        W.atomic_write(folder / "landscape.csv", table.to_csv(index=False).encode(), durable=False)
        paths["csv"] = folder / "landscape.csv"
    drawn: set[Path] = set()
    for family in dict.fromkeys(table["family"]):
        try:
            figure = landscape_vs(table, family=family, title=title)
        except UserError:  # every value NaN (e.g. correlations from too few pairs): nothing to draw
            continue
        written = save_figure(figure, folder / f"landscape-{family}", formats=tuple(formats))
        drawn.update(written)
        paths[family] = next((p for p in written if p.suffix == ".png"), written[0])
    for stale in folder.glob("landscape-*.*"):  # figures of families or formats an earlier call drew
        if stale.suffix in (".png", ".svg", ".pdf") and stale not in drawn and not stale.is_symlink():
            stale.unlink()
    return paths


__all__ = ["SweepLandscape", "parse_method_spec", "sweep", "sweep_configs", "sweep_id", "sweep_landscape",
           "sweep_runs", "sweep_table", "write_landscape"]
