"""`masklab sweep`: a grid of runs over methods, recycling and sparsities on one model and dataset.

Each cell of the grid is an ordinary run (its id is its config hash), so a sweep resumes where it
stopped and a second call with the same grid trains nothing. The `seeds` of a cell are the masks of its
run: they share the weights and differ in score seed (use several weight seeds for weight variation).
(Dense cells vary the data seed instead: without scores, score seeds would repeat one network.)
The result is one row per (method, sparsity) with final and best test accuracy, mean and std over seeds,
the epochs and chance (1 / classes), and, for CIFAR-10 with conv2/4/6/8, the published number and the
difference to it. A sweep has an id of its own (`sweep_id`: a hash of its grid and base config) that names
its outputs, so that two sweeps never overwrite each other's figure and table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from masklab.config import UNHASHED, RunConfig, method_label, parse_method
from masklab.errors import UserError
from masklab.published import published_for


def sweep_configs(base: RunConfig, methods: Sequence[str], sparsities: Sequence[float], seeds: int,
                  weight_seeds: Sequence[int] = (0,)) -> list[RunConfig]:
    """One validated RunConfig per cell; dense appears once per weight seed (it has no sparsity). A dense
    cell's seeds vary the data seed (batch order): dense training has no scores, so score seeds alone
    would repeat one network `seeds` times."""
    if seeds < 1:
        raise UserError(f"sweep seeds = {seeds} is invalid: use at least 1 seed (masks per cell)")
    if not sparsities:
        raise UserError("sweep needs at least one sparsity, e.g. --sparsities 0.5,0.9")
    configs = []
    for label, weight_seed in itertools.product(methods, weight_seeds):
        try:
            method, recycle = parse_method(label)
        except UserError as e:
            raise UserError(f"sweep {e}") from None
        for sparsity in ([0.0] if method == "dense" else sparsities):
            config = base.replace(method=method, recycle=recycle, sparsity=float(sparsity), masks=seeds,
                                  weight_seed=int(weight_seed), name=None,
                                  vary_data_seed=base.vary_data_seed or method == "dense")
            configs.append(config.validate())
    return configs


def sweep_id(base: RunConfig, methods: Sequence[str], sparsities: Sequence[float], seeds: int,
             weight_seeds: Sequence[int] = (0,)) -> str:
    """The sweep's own id, ``sweep-<dataset>-<model>-<8 hex digits>``: a hash of its grid (methods,
    sparsities, seeds, weight seeds; each as a set, so the order they are given in does not matter) and of
    its base config (every field set away from its default, except those a sweep sets per cell and those
    that never change a mask: data root, device, stack). The same sweep run again has the same id; any
    other grid or base config has another."""
    cell_fields = ("method", "recycle", "sparsity", "masks", "weight_seed", "name")
    base_fields = {k: v for k, v in base.to_dict(non_default=True).items()
                   if k not in cell_fields and k not in UNHASHED}
    grid = {"base": base_fields, "methods": sorted(str(m) for m in methods),
            "sparsities": sorted(float(x) for x in sparsities), "seeds": int(seeds),
            "weight_seeds": sorted(int(w) for w in weight_seeds)}
    digest = hashlib.sha256(json.dumps(grid, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"sweep-{base.dataset}-{base.model}-{digest[:8]}"


def sweep(base: RunConfig | dict | None = None, methods: Sequence[str] = ("edge-popup", "biprop"),
          sparsities: Sequence[float] = (0.5, 0.9), seeds: int = 3, weight_seeds: Sequence[int] = (0,), *,
          runs_dir: str | os.PathLike = "runs", quiet: bool = True,
          log: Callable[[str], None] | None = None, jobs: int | None = None, executor: str = "local",
          slurm=None, allow_device_change: bool = False) -> pd.DataFrame:
    """Train (or reuse) every cell's run and return the accuracy table (see `sweep_table`).

    `jobs=N`: N submitit jobs (`executor` local or slurm, `slurm` a SlurmOptions) train the cells at once,
    each job training one shard of every cell (masklab.scale.executors), so the work is balanced whatever the
    cells cost; the runs are the same as one process makes. `allow_device_change`: see `masklab.generate`."""
    from masklab.data import load_config_dataset
    from masklab.generation import generate
    from masklab.store.run import Run

    base = base if isinstance(base, RunConfig) else RunConfig.from_dict(base or {}, source="sweep")
    configs = sweep_configs(base, methods, sparsities, seeds, weight_seeds)
    if jobs is not None:
        from masklab.scale.executors import submit_shards

        submission = submit_shards(configs, runs_dir, jobs, executor, slurm=slurm, quiet=quiet, log=log,
                                   allow_device_change=allow_device_change)
        return sweep_table([Run(path) for path in submission.runs])
    data = load_config_dataset(base)  # shared by every cell
    runs = []
    for n, config in enumerate(configs, 1):
        if log is not None:
            log(f"[{n}/{len(configs)}] {method_label(config.method, config.recycle)} sparsity {config.sparsity:g} "
                f"weight seed {config.weight_seed}: {config.run_id}")
        runs.append(generate(config, runs_dir=runs_dir, resume=True, quiet=quiet, data=data,
                             allow_device_change=allow_device_change))
    return sweep_table(runs)


def sweep_table(runs: Sequence[Any]) -> pd.DataFrame:
    """Accuracy per (method, sparsity) over all masks of the given runs, with published numbers.

    Columns: method, sparsity, n (masks), acc_mean / acc_std (final test accuracy, fractions), best_mean /
    best_std (best over epochs), epochs, chance (1 / the dataset's classes; NaN when the runs do not record
    it), runs (run ids); for CIFAR-10 conv-N also `published` (%, best accuracy) and `best_minus_published`
    (percentage points).
    """
    rows = []
    for run in runs:
        table = run.table
        classes = getattr(run, "meta", {}).get("dataset", {}).get("n_classes")
        rows.append(pd.DataFrame({"method": method_label(run.config.method, run.config.recycle),
                                  "sparsity": run.config.sparsity, "test_acc": table["test_acc"],
                                  "best_test_acc": table["best_test_acc"], "epochs": int(run.config.epochs),
                                  "chance": 1.0 / classes if classes else float("nan"), "run": run.id}))
    if not rows:
        return pd.DataFrame(columns=["method", "sparsity", "n", "acc_mean", "acc_std", "best_mean", "best_std",
                                     "epochs", "chance"])
    masks = pd.concat(rows, ignore_index=True)
    grouped = masks.groupby(["method", "sparsity"], sort=False)
    out = grouped.agg(n=("test_acc", "size"), acc_mean=("test_acc", "mean"), acc_std=("test_acc", "std"),
                      best_mean=("best_test_acc", "mean"), best_std=("best_test_acc", "std"),
                      epochs=("epochs", "max"), chance=("chance", "mean"),
                      runs=("run", lambda s: ",".join(sorted(set(s))))).reset_index()
    first = runs[0].config
    published = published_for(first.dataset, first.model)
    if published is not None:
        out = out.merge(published, on=["method", "sparsity"], how="left")
        out["best_minus_published"] = out["best_mean"] * 100 - out["published"]
    return out
