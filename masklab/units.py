"""One unit per quantity in everything masklab shows: command-line output, index pages and figures.

Tables (DataFrames, CSV, Parquet) hold fractions; what a reader sees is converted here, once:

- accuracy: percent (``96.61%``); accuracy differences and the **error barrier**: percentage points
  (``2.11 points``);
- **percent matching**: percent (``51.23%``);
- **Jaccard index** and **normalised Hamming distance**: fractions (``0.3412``);
- loss and the **loss barrier**: nats (mean cross-entropy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

PERCENT_METRICS = ("matching",)  # metrics shown in %; the others as fractions


def percent(value: float, digits: int = 2) -> str:
    """A fraction as a percentage: 0.96612 -> "96.61%"."""
    return f"{100 * value:.{digits}f}%" if np.isfinite(value) else "n/a"


def points(value: float, digits: int = 2) -> str:
    """A difference of fractions in percentage points: 0.0211 -> "2.11 points"."""
    return f"{100 * value:.{digits}f} points" if np.isfinite(value) else "n/a"


def count(n: int, noun: str) -> str:
    """A number of things with the noun agreeing and thousands separated: (1, "pair") -> "1 pair",
    (12000, "mask") -> "12,000 masks"."""
    return f"{int(n):,} {noun}" + ("" if int(n) == 1 else "s")


def signed_sd(value: float) -> str:
    """An effect size in standard deviations with its sign: 2.14 -> "+2.1"; "n/a" when not finite."""
    return f"{value:+.1f}" if np.isfinite(value) else "n/a"


def metric_value(metric: str, value: float) -> str:
    """A distance or overlap in its unit: matching in %, Jaccard and the Hamming distances as fractions."""
    if not np.isfinite(value):
        return "n/a"
    return percent(value) if metric in PERCENT_METRICS else f"{value:.4f}"


def shown_by_metric(table: pd.DataFrame, columns: Sequence[str], metric_column: str = "metric") -> pd.DataFrame:
    """`table` with the value `columns` written out in each row's metric's unit (strings), for printing."""
    out = table.copy()
    for column in columns:
        if column in out.columns:
            out[column] = [metric_value(str(m), float(v)) for m, v in zip(out[metric_column], out[column])]
    return out


def shown_accuracy(table: pd.DataFrame, columns: Sequence[str], kind: str = "percent") -> pd.DataFrame:
    """`table` with the accuracy `columns` in % ("percent") or percentage points ("points"), for printing."""
    out = table.copy()
    write = percent if kind == "percent" else points
    for column in columns:
        if column in out.columns:
            out[column] = [write(float("nan") if v is None else float(v)) for v in out[column]]  # None: not measured
    return out


def sparsity_text(value: float) -> str:
    """A sparsity (the fraction removed) in percent, as many digits as it has: 0.5 -> "50%", 0.995 -> "99.5%"."""
    return f"{100 * value:.6g}%" if np.isfinite(value) else "n/a"


def missing(value) -> bool:
    """Whether a shown value is absent (None or NaN): shown as "n/a" everywhere."""
    return value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA


def setting_text(setting: str, value) -> str:
    """A run setting (`Run.settings`) as shown: sparsity in %, other numbers as given, absent values "n/a"."""
    if missing(value):
        return "n/a"
    if setting == "sparsity":
        return sparsity_text(float(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def shown_settings(table: pd.DataFrame) -> pd.DataFrame:
    """A settings table (`Run.settings`) with its values as text (`setting_text`), for printing."""
    return table.assign(value=[setting_text(s, v) for s, v in zip(table["setting"], table["value"])])


__all__ = ["PERCENT_METRICS", "count", "metric_value", "missing", "percent", "points", "setting_text", "shown_accuracy",
           "shown_by_metric", "shown_settings", "signed_sd", "sparsity_text"]


def ranges(ids: Sequence[int], dash: str = "-") -> str:
    """Integer ids as runs: [0, 1, 2, 5] -> "0-2, 5" (with `dash` ".." -> "0..2, 5")."""
    parts, start = [], None
    ids = list(ids)
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}{dash}{i}")
            start = None
    return ", ".join(parts)
