"""Interpolation between two masks of one run: loss and accuracy along a path, barriers, barrier matrices.

The API (`interpolate`, `barrier_matrix`, `sample_pairs`; `masklab.interpolate` is `interpolate`) over the
rooms of `masklab.analysis.paths`, which define what it computes:

- `paths.geometry`: the soft, hamming and score paths from mask `a` to mask `b` (30 points by default, both
  ends included), with each point's Hamming distance to both ends;
- `paths.evaluation`: the fixed evaluation set (the test split, or 2000 fixed test samples of a larger one),
  BatchNorm statistics recomputed at every point where the model has them, one model for every path;
- `paths.sources`: the ends from a stored run or from masks trained in memory (`from_trained`);
- `paths.barriers`: loss barrier `max_t L(t) - ((1 - t) L(0) + t L(1))` and error barrier
  `max_t E(t) - (E(0) + E(1)) / 2`, and their correlation with Hamming distance (`barrier_correlation`).

The names of those rooms that a notebook uses are importable from here as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
import pandas as pd
from tqdm import tqdm  # the plain bar: tqdm.auto needs ipywidgets in a notebook (else a red warning)

from masklab.analysis.paths.barriers import barrier, barrier_correlation
from masklab.analysis.paths.evaluation import (
    CURVE_COLUMNS,
    DEFAULT_BN_SAMPLES,
    DEFAULT_EVAL_SAMPLES,
    PathEvaluator,
    batchnorm_batches,
    batchnorm_modules,
    evaluation_batches,
    recompute_batchnorm,
    torch_threads,
)
from masklab.analysis.paths.geometry import DEFAULT_POINTS, PATHS, PathPoint, Subnet, check_args, path_points
from masklab.analysis.paths.jobs import build_evaluator, evaluate_pair
from masklab.analysis.paths.sources import MaskSource, RunSource, TrainedSource, as_source, from_trained
from masklab.errors import UserError
from masklab.store.paths import check_mask_id


def _evaluator(source: MaskSource, model_id: int, eval_samples: int | None, bn_samples: int, recompute_bn: bool,
               device: str) -> PathEvaluator:
    return build_evaluator(source, model_id, eval_samples, bn_samples, recompute_bn, device)


def interpolate(run: object, a: int, b: int, path: str = "soft", *, points: int = DEFAULT_POINTS, orders: int = 1,
                order: str = "random", eval_samples: int | None = DEFAULT_EVAL_SAMPLES,
                bn_samples: int = DEFAULT_BN_SAMPLES, recompute_bn: bool = True, random_state: int = 0,
                device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Loss, accuracy and error along the `path` ("soft", "hamming" or "score") from mask `a` to mask `b` of
    `run` (a Run, a run path, or `from_trained(...)`): one row per point (and per order for
    `path="hamming", orders=k`), columns mask_a, mask_b, path, order, point, t, hamming_to_a and
    hamming_to_b (normalised by the number of bits), loss, acc, error. See the module docstring for the
    exact paths, the evaluation set and the BatchNorm handling. `progress`: a progress line (on stderr)
    counting the points evaluated."""
    check_args(path, points, orders, order)
    a, b = check_mask_id(a), check_mask_id(b)
    source = as_source(run)
    sa, sb = source.subnet(a), source.subnet(b)
    evaluator = _evaluator(source, a, eval_samples, bn_samples, recompute_bn, device)
    return evaluator.curve(sa, sb, path, points, orders, order, random_state, ids=(a, b), progress=progress)


def sample_pairs(ids: Sequence[int], pairs: int | None, random_state: int = 0) -> list[tuple[int, int]]:
    """`pairs` distinct unordered pairs (a < b) of `ids`, sampled without replacement by `random_state`
    (all pairs, in order, when `pairs` is None or at least their number)."""
    ids = sorted(int(i) for i in ids)
    n = len(ids)
    total = n * (n - 1) // 2
    if total == 0:
        raise UserError(f"a barrier matrix needs at least 2 masks; the run has {n}")
    if pairs is not None and (not isinstance(pairs, (int, np.integer)) or isinstance(pairs, bool) or pairs < 1):
        raise UserError(f"pairs = {pairs!r} is invalid: use an integer >= 1 (or None for all pairs)")
    if pairs is None or pairs >= total:
        return list(itertools.combinations(ids, 2))
    chosen = np.sort(np.random.default_rng(int(random_state)).choice(total, size=int(pairs), replace=False))
    # unrank: pair c is (i, j) with i the row whose block of n - 1 - i pairs holds c
    starts = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])
    rows = np.searchsorted(starts, chosen, side="right") - 1
    cols = rows + 1 + (chosen - starts[rows])
    return [(ids[i], ids[j]) for i, j in zip(rows.tolist(), cols.tolist())]


@overload
def barrier_matrix(run: object, pairs: int | None = ..., path: str = ..., *, points: int = ..., orders: int = ...,
                   order: str = ..., eval_samples: int | None = ..., bn_samples: int = ..., recompute_bn: bool = ...,
                   random_state: int = ..., device: str = ..., progress: bool = ...,
                   return_curves: Literal[False] = ...) -> pd.DataFrame: ...


@overload
def barrier_matrix(run: object, pairs: int | None = ..., path: str = ..., *, points: int = ..., orders: int = ...,
                   order: str = ..., eval_samples: int | None = ..., bn_samples: int = ..., recompute_bn: bool = ...,
                   random_state: int = ..., device: str = ..., progress: bool = ...,
                   return_curves: Literal[True]) -> tuple[pd.DataFrame, pd.DataFrame]: ...


def barrier_matrix(run: object, pairs: int | None = 10, path: str = "soft", *, points: int = DEFAULT_POINTS,
                   orders: int = 1, order: str = "random", eval_samples: int | None = DEFAULT_EVAL_SAMPLES,
                   bn_samples: int = DEFAULT_BN_SAMPLES, recompute_bn: bool = True, random_state: int = 0,
                   device: str = "cpu", progress: bool = False,
                   return_curves: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Barriers of `pairs` distinct mask pairs (sampled by `random_state`; None: all pairs) along `path`:
    a long DataFrame with one row per pair (and order): mask_a, mask_b, path, order, hamming (bits),
    hamming_norm, loss_barrier, error_barrier and the end values. With `return_curves`, also the
    concatenated curves. The model and the evaluation set are built once."""
    check_args(path, points, orders, order)
    source = as_source(run)
    chosen = sample_pairs(source.ids, pairs, random_state)
    evaluator = _evaluator(source, chosen[0][0], eval_samples, bn_samples, recompute_bn, device)

    rows: list[dict] = []
    curves: list[pd.DataFrame] = []
    cached = _Cached(source)
    with torch_threads(evaluator.threads):
        for i, j in tqdm(chosen, disable=not progress, desc=f"{path} barriers", unit="pair"):
            pair_rows, curve = evaluate_pair(cached, evaluator, i, j, path=path, points=points, orders=orders,
                                             order=order, random_state=random_state)
            rows += pair_rows
            if return_curves:
                curves.append(curve)
    out = pd.DataFrame(rows)
    if return_curves:
        return out, pd.concat(curves, ignore_index=True)
    return out


class _Cached:
    """A MaskSource that keeps the few most recently used ends (pairs come sorted, so `a` repeats)."""

    def __init__(self, source: MaskSource, size: int = 4):
        self.source, self.size = source, size
        self.config, self.ids = source.config, source.ids
        self.cache: dict[int, Subnet] = {}

    def dataset(self):
        return self.source.dataset()

    def model(self, device="cpu", i: int | None = None):
        return self.source.model(device, i)

    def subnet(self, i: int) -> Subnet:
        subnet = self.cache.pop(i) if i in self.cache else self.source.subnet(i)
        self.cache[i] = subnet
        if len(self.cache) > self.size:
            self.cache.pop(next(iter(self.cache)))
        return subnet


__all__ = ["CURVE_COLUMNS", "DEFAULT_EVAL_SAMPLES", "PATHS", "MaskSource", "PathEvaluator", "PathPoint", "RunSource",
           "Subnet", "TrainedSource", "as_source", "barrier", "barrier_correlation", "barrier_matrix",
           "batchnorm_batches", "batchnorm_modules", "evaluation_batches", "from_trained", "interpolate", "path_points",
           "recompute_batchnorm", "sample_pairs"]
