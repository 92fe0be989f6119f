"""Barrier pairs as independent tasks: evaluated in this process, on a Dask cluster (`DaskEngine`) or by
submitit jobs (`masklab.scale.pair_jobs`), with the same numbers whatever runs them, and resumable.

A `BarrierTask` says what evaluating one pair needs (the run's directory, the path, its points and orders, the
evaluation set, the seed) and where the results go: a result folder (`analyze` keeps
``analysis/<settings id>/barriers/``) holding one JSON file per pair, ``<a>-<b>.json``, written atomically the
moment the pair is evaluated: its barrier rows (one per order) and its curve. A pair whose file is there is
never evaluated again, so after a kill (of the analysis, of a Dask worker or of a SLURM job) the same analysis
evaluates only the pairs that have no file yet. `evaluate_pairs(task, pairs)` is the one function every engine
runs on its share of the pairs; `run_pairs` evaluates what is missing with an engine and reads every result.

Identical numbers: every engine evaluates a pair with the same code on the same model (rebuilt from the store
for the run's first mask; the ends' masks and weights are pinned on it), the same evaluation set and the same
torch thread rule (`PathEvaluator.threads`: one thread for small models); the JSON keeps every float exactly
(Python writes the shortest repr that reads back to the same double). Workers read the run and write the
results by path: a Dask cluster or SLURM jobs need the run directory on a shared filesystem.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

from masklab import files as W
from masklab.analysis.paths.barriers import curve_barrier
from masklab.analysis.paths.evaluation import (
    CURVE_COLUMNS,
    DEFAULT_BN_SAMPLES,
    DEFAULT_EVAL_SAMPLES,
    PathEvaluator,
    batchnorm_batches,
    batchnorm_modules,
    evaluation_batches,
    torch_threads,
)
from masklab.analysis.paths.geometry import DEFAULT_POINTS, check_args, distance
from masklab.analysis.paths.sources import MaskSource, RunSource
from masklab.errors import StoreError
from masklab.store.run import Run, open_run
from masklab.train.trainer import resolve_device

RESULT_FORMAT = 1
BARRIER_KEYS = ["mask_a", "mask_b", "path", "order", "hamming", "hamming_norm"]

Pair = tuple[int, int]
Progress = Callable[[int], None]   # called with the number of pairs just finished


@dataclass(frozen=True)
class BarrierTask:
    """Everything a worker needs to evaluate pairs of one run and store their results (picklable)."""

    run_path: str
    folder: str                     # the result folder: one <a>-<b>.json per evaluated pair
    path: str = "soft"
    points: int = DEFAULT_POINTS
    orders: int = 1
    order: str = "random"
    random_state: int = 0
    eval_samples: int | None = DEFAULT_EVAL_SAMPLES
    bn_samples: int = DEFAULT_BN_SAMPLES
    recompute_bn: bool = True
    device: str = "cpu"

    def check(self) -> BarrierTask:
        check_args(self.path, self.points, self.orders, self.order)
        return self

    def fingerprint(self) -> dict:
        """What a stored result must have been computed with to be reused (all but the folder)."""
        values = asdict(self)
        values.pop("folder")
        values["run_path"] = Path(self.run_path).name  # the run id: a run directory may be moved
        return values


def result_path(task: BarrierTask, a: int, b: int) -> Path:
    return Path(task.folder) / f"{int(a)}-{int(b)}.json"


def _read_result(task: BarrierTask, a: int, b: int) -> dict | None:
    """The stored result of pair (a, b), or None when there is none (or one computed otherwise)."""
    try:
        stored = json.loads(result_path(task, a, b).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("format") != RESULT_FORMAT or \
            stored.get("task") != task.fingerprint():
        return None
    return stored


def pending_pairs(task: BarrierTask, pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs of `pairs` without a stored result, in order."""
    return [(int(a), int(b)) for a, b in pairs if _read_result(task, a, b) is None]


# ---- evaluating -------------------------------------------------------------------------------------------
def build_evaluator(source: MaskSource, model_id: int, eval_samples: int | None, bn_samples: int,
                    recompute_bn: bool, device: str) -> PathEvaluator:
    """The PathEvaluator of `source`: the model of mask `model_id`, the evaluation set and, where the model has
    BatchNorm, the batches its statistics are recomputed on."""
    where = resolve_device(str(device))
    dataset = source.dataset()
    model = source.model(where, model_id)
    bn = None
    if recompute_bn and batchnorm_modules(model):
        bn = batchnorm_batches(dataset, bn_samples, int(source.config.batch_size), where)
    return PathEvaluator(model, evaluation_batches(dataset, eval_samples, where), bn,
                         getattr(source.config, "precision", "fp32"))


_CACHE: dict[tuple, tuple[MaskSource, PathEvaluator]] = {}  # per process: a Dask worker builds it once


def _source_and_evaluator(task: BarrierTask, run: Run | None = None) -> tuple[MaskSource, PathEvaluator]:
    """The task's source and evaluator, built once per process; `run`, the task's run already open in this
    process, spares opening it again (reading and checking every mask's record: 1.2 s for 1,024 masks)."""
    key = (os.path.realpath(task.run_path), task.eval_samples, task.bn_samples, task.recompute_bn, task.device)
    if key not in _CACHE:
        given = run is not None and os.path.realpath(run.path) == key[0]
        source = RunSource(run if given and run is not None else open_run(task.run_path))
        _CACHE.clear()  # one run at a time: the model and the evaluation set are the memory that matters
        _CACHE[key] = (source, build_evaluator(source, source.ids[0], task.eval_samples, task.bn_samples,
                                               task.recompute_bn, task.device))
    return _CACHE[key]


def evaluate_pair(source: MaskSource, evaluator: PathEvaluator, a: int, b: int, *, path: str = "soft",
                  points: int = DEFAULT_POINTS, orders: int = 1, order: str = "random",
                  random_state: int = 0) -> tuple[list[dict], pd.DataFrame]:
    """One pair: (its barrier rows, one per order: BARRIER_KEYS and `curve_barrier`'s columns; its curve)."""
    sa, sb = source.subnet(int(a)), source.subnet(int(b))
    d = distance(sa.masks, sb.masks)
    n_bits = sum(m.numel() for m in sa.masks)
    curve = evaluator.curve(sa, sb, path, points, orders, order, random_state, ids=(int(a), int(b)))
    rows = [{"mask_a": int(a), "mask_b": int(b), "path": path, "order": int(k), "hamming": d,
             "hamming_norm": d / n_bits, **curve_barrier(g)} for k, g in curve.groupby("order", sort=True)]
    return rows, curve


def evaluate_pairs(task: BarrierTask, pairs: Sequence[Pair], progress: Progress | None = None, *,
                   run: Run | None = None) -> int:
    """Evaluate every pair of `pairs` that has no stored result yet and store each one's result as soon as it is
    evaluated (atomically). Returns how many were evaluated. What every engine runs; `run`: the task's run, when
    the caller has it open."""
    task.check()
    todo = pending_pairs(task, pairs)
    if not todo:
        return 0
    source, evaluator = _source_and_evaluator(task, run)
    folder = Path(task.folder)
    W.make_dirs(folder, root=folder.parent)
    done = 0
    with torch_threads(evaluator.threads):
        for a, b in todo:
            rows, curve = evaluate_pair(source, evaluator, a, b, path=task.path, points=task.points,
                                        orders=task.orders, order=task.order, random_state=task.random_state)
            result = {"format": RESULT_FORMAT, "task": task.fingerprint(), "mask_a": a, "mask_b": b,
                      "barriers": rows, "curve": {c: curve[c].tolist() for c in CURVE_COLUMNS}}
            W.atomic_write(result_path(task, a, b), json.dumps(result, allow_nan=True).encode(), root=folder,
                           durable=False)
            done += 1
            if progress is not None:
                progress(1)
    return done


def load_results(task: BarrierTask, pairs: Sequence[Pair]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(barriers, curves) of `pairs`, in their order, from the result folder; every pair must have a result."""
    rows: list[dict] = []
    curves = []
    for a, b in pairs:
        stored = _read_result(task, a, b)
        if stored is None:
            raise StoreError(f"no barrier result for masks {a} and {b} in {task.folder}; run the analysis again "
                             "(it evaluates the pairs that are missing)")
        rows += stored["barriers"]
        curves.append(pd.DataFrame(stored["curve"], columns=CURVE_COLUMNS))
    barriers = pd.DataFrame(rows)
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return barriers, curve


def remove_other_results(task: BarrierTask, pairs: Sequence[Pair]) -> int:
    """Delete the results in the folder of pairs not in `pairs` (of an earlier sample), so that none is left
    that the analysis does not show. Returns how many."""
    keep = {f"{int(a)}-{int(b)}.json" for a, b in pairs}
    folder = Path(task.folder)
    removed = 0
    if folder.is_dir():
        for path in folder.glob("*.json"):
            if path.name not in keep and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


# ---- engines ----------------------------------------------------------------------------------------------
class Engine(Protocol):
    """Evaluates pending pairs of a task into its result folder (by running `evaluate_pairs` somewhere)."""

    def __call__(self, task: BarrierTask, pairs: Sequence[Pair], progress: Progress | None = None) -> None: ...

    def describe(self) -> str: ...


class InProcess:
    """Evaluate the pairs here, one after the other (`run`: the task's run, when the caller has it open)."""

    def __init__(self, run: Run | None = None):
        self.run = run

    def __call__(self, task: BarrierTask, pairs: Sequence[Pair], progress: Progress | None = None) -> None:
        evaluate_pairs(task, pairs, progress, run=self.run)

    def describe(self) -> str:
        return "in process"


class DaskEngine:
    """Evaluate the pairs as tasks on a Dask cluster (`client`): chunks of `chunk` pairs (default: enough chunks
    for 4 per worker, at most 8 pairs each), each `evaluate_pairs` on a worker, which keeps the model and the
    evaluation set between its tasks. A task whose worker dies is rerun by the scheduler (retries=2); pairs
    finished before are not evaluated again."""

    def __init__(self, client, chunk: int | None = None):
        self.client = client
        self.chunk = chunk

    def __call__(self, task: BarrierTask, pairs: Sequence[Pair], progress: Progress | None = None) -> None:
        from distributed import as_completed  # here: only a Dask scheduler needs it (masklab.analysis.tiles)

        if not pairs:
            return
        workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        size = self.chunk or max(1, min(8, math.ceil(len(pairs) / (4 * workers))))
        chunks = [list(pairs[i:i + size]) for i in range(0, len(pairs), size)]
        futures = {self.client.submit(evaluate_pairs, task, chunk, pure=False, retries=2): len(chunk)
                   for chunk in chunks}
        for future in as_completed(futures):
            future.result()  # raises the task's error
            if progress is not None:
                progress(futures[future])

    def describe(self) -> str:
        workers = len(self.client.scheduler_info().get("workers", {}))
        return f"as tasks on a Dask cluster ({workers} workers)"


def run_pairs(task: BarrierTask, pairs: Sequence[Pair], engine: Engine | None = None,
              progress: Progress | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Evaluate the pairs that have no result yet with `engine` (default in process), then read all:
    (barriers, curves, number of pairs that were pending)."""
    task.check()
    pairs = [(int(a), int(b)) for a, b in pairs]
    todo = pending_pairs(task, pairs)
    if progress is not None and len(pairs) > len(todo):
        progress(len(pairs) - len(todo))
    if todo:
        (engine or InProcess())(task, todo, progress)
    barriers, curves = load_results(task, pairs)
    return barriers, curves, len(todo)


__all__ = ["BarrierTask", "DaskEngine", "Engine", "InProcess", "build_evaluator", "evaluate_pair", "evaluate_pairs",
           "load_results", "pending_pairs", "remove_other_results", "run_pairs"]
