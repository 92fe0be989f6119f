"""Barriers of interpolation curves, and their correlation with distance: numpy and pandas only (no torch),
so that figures and notebooks compute them from a curve table without building a model.

The one definition (DESIGN.md), for a curve of loss `L(t)` and error `E(t) = 1 - accuracy` with `t` rescaled
to [0, 1] between its first and last point:

- loss barrier ``max_t L(t) - ((1 - t) L(0) + t L(1))``: the largest excess over the straight line joining
  the ends' losses (0 when the curve never rises above it; it cannot be negative, the ends are on the line);
- error barrier ``max_t E(t) - (E(0) + E(1)) / 2``: the worst error along the path above the mean of the
  ends' errors (a fraction here; shown in percentage points on pages, figures and the command line).

`curve_barrier` computes both for one curve; `barrier` for every (mask_a, mask_b, path, order) of a curve
table; `barrier_correlation` correlates the barriers of many pairs with their Hamming distance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.errors import UserError

CURVE_KEYS = ("mask_a", "mask_b", "path", "order")  # one curve per value of these (those present)
BARRIER_COLUMNS = ["loss_barrier", "error_barrier", "t_loss_barrier", "t_error_barrier", "loss_a", "loss_b",
                   "error_a", "error_b", "max_loss", "max_error"]
CORRELATION_COLUMNS = ["path", "barrier", "against", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]


def curve_error(curve: pd.DataFrame) -> np.ndarray:
    """The curve's error as a fraction: its `error` column, else `1 - acc` (acc as a fraction)."""
    if "error" in curve.columns:
        return curve["error"].to_numpy(dtype=float)
    if "acc" in curve.columns:
        return 1.0 - curve["acc"].to_numpy(dtype=float)
    raise UserError("a barrier needs the curve's error or acc column")


def curve_barrier(curve: pd.DataFrame) -> dict[str, float]:
    """Barriers of ONE curve (columns t, loss, and error or acc; optionally point): the keys of
    `BARRIER_COLUMNS`: both barriers, the t where each peaks, the ends' loss and error, the largest of each."""
    missing = [c for c in ("t", "loss") if c not in curve.columns]
    if missing:
        raise UserError(f"a barrier needs the curve's columns t and loss; missing: {', '.join(missing)}")
    if len(curve) == 0:
        raise UserError("the curve is empty: nothing to compute a barrier from")
    c = curve.sort_values(["t", "point"] if "point" in curve.columns else ["t"], kind="stable")
    t = c["t"].to_numpy(dtype=float)
    loss = c["loss"].to_numpy(dtype=float)
    error = curve_error(c)
    span = t[-1] - t[0]
    s = (t - t[0]) / span if span > 0 else np.zeros_like(t)
    excess = loss - ((1.0 - s) * loss[0] + s * loss[-1])
    i, e = int(np.argmax(excess)), int(np.argmax(error))
    return {"loss_barrier": float(excess[i]), "error_barrier": float(error[e] - 0.5 * (error[0] + error[-1])),
            "t_loss_barrier": float(t[i]), "t_error_barrier": float(t[e]),
            "loss_a": float(loss[0]), "loss_b": float(loss[-1]), "error_a": float(error[0]),
            "error_b": float(error[-1]), "max_loss": float(loss.max()), "max_error": float(error.max())}


def curve_groups(curve: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """The curves of a curve table: (the values of its keys among CURVE_KEYS, rows), in order of appearance."""
    keys = [k for k in CURVE_KEYS if k in curve.columns]
    if not keys:
        return [({}, curve)]
    out = []
    for key, rows in curve.groupby(keys, sort=False, dropna=False):
        values = key if isinstance(key, tuple) else (key,)
        out.append((dict(zip(keys, values)), rows))
    return out


def barrier(curve: pd.DataFrame) -> pd.DataFrame:
    """Barriers of the curves in `curve` (`interpolate` output, or several concatenated): a DataFrame with
    one row per (mask_a, mask_b, path, order) present (one row for a single curve), those key columns and
    `BARRIER_COLUMNS` (see the module docstring for the definitions)."""
    if len(curve) == 0:
        raise UserError("the curve is empty: nothing to compute a barrier from")
    rows = [{**key, **curve_barrier(rows)} for key, rows in curve_groups(curve)]
    keys = [k for k in CURVE_KEYS if k in curve.columns]
    return pd.DataFrame(rows, columns=[*keys, *BARRIER_COLUMNS])


def barrier_correlation(df: pd.DataFrame, against: str = "hamming_norm", *,
                        min_pairs: int = MIN_CORRELATION_PAIRS) -> pd.DataFrame:
    """Pearson and Spearman correlation of each barrier (loss_barrier, error_barrier) with Hamming distance
    over the rows of a `barrier_matrix` (per path when it holds several): columns path, barrier, against,
    n, pearson_r, pearson_p, spearman_rho, spearman_p. NaN (with the n) where fewer than `min_pairs` rows
    (default 10, `masklab.analysis.thresholds`: from 3 pairs every ordering gives rho = +-1) or a constant
    column."""
    if against not in df.columns:
        raise UserError(f"the barrier table has no column {against!r}; pass one of {', '.join(df.columns)}")
    groups = df.groupby("path", sort=False) if "path" in df.columns else [(None, df)]
    rows = []
    for path, g in groups:
        x = g[against].to_numpy(dtype=float)
        for name in ("loss_barrier", "error_barrier"):
            if name not in g.columns:
                continue
            y = g[name].to_numpy(dtype=float)
            n, values = _correlations(x, y, min_pairs)
            rows.append({"path": path, "barrier": name, "against": against, "n": n, **values})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def spearman(x: np.ndarray, y: np.ndarray, *, min_pairs: int = MIN_CORRELATION_PAIRS) -> float:
    """Spearman's rho of finite (x, y) pairs; NaN below `min_pairs` pairs or for a constant column."""
    return _correlations(x, y, min_pairs)[1]["spearman_rho"]


def _correlations(x, y, min_pairs: int) -> tuple[int, dict[str, float]]:
    """(finite pairs, Pearson r and p, Spearman rho and p): NaN below `min_pairs` (at least 3) pairs or for a
    constant column."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    out = dict.fromkeys(("pearson_r", "pearson_p", "spearman_rho", "spearman_p"), float("nan"))
    if ok.sum() < max(3, int(min_pairs)) or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return int(ok.sum()), out
    # imported here: scipy.stats costs half of torch's import (7 s against 15 s on the shared machine), and this
    # module is loaded by every `analyze` (through the plots) where only an interpolation correlates
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r, p = stats.pearsonr(x[ok], y[ok])
        rho, sp = stats.spearmanr(x[ok], y[ok])
    out.update(pearson_r=float(r), pearson_p=float(p), spearman_rho=float(rho), spearman_p=float(sp))
    return int(ok.sum()), out


__all__ = ["BARRIER_COLUMNS", "CURVE_KEYS", "barrier", "barrier_correlation", "curve_barrier", "curve_error",
           "curve_groups", "spearman"]
