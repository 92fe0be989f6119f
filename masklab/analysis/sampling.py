"""Samples of masks and of mask pairs for the stages that cannot take them all, each stating what it took.

A stage that subsamples says how many it used out of how many, how they were chosen and with which seed
(`Sample.row`, `Sample.describe`), so that the page and the tables can say it too.

- `mask_sample`: n of the N masks, uniformly at random without replacement. Every stage draws from ONE
  permutation of the masks fixed by the seed and takes its first n, so the samples of different sizes are
  nested (the 200 masks of the structure test are among the 2,000 clustered, which are among the 5,000
  embedded) and a cluster colour means the same masks in every figure.
- `stratified_pairs`: m of the N (N - 1) / 2 pairs, stratified by their whole-network Hamming distance: the
  pairs ranked by distance are cut into m strata of equal count and one pair is drawn uniformly in each, so
  the sample spans the whole range of distances (a correlation of barriers with distance then has range to
  work with; a uniform sample of pairs from 50 million would sit in the bulk). Exact and in O(N) memory
  beyond the counts: distances are integers, so the ranks come from a histogram of the distances (one pass
  over the pairs, block by block) and the pair of a given rank from a second pass; ties are ranked by pair
  order (row-major over i < j).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from masklab.analysis.distances import ALL, Intersections
from masklab.analysis.pairs import upper_blocks
from masklab.errors import UserError

SAMPLE_COLUMNS = ["stage", "n_used", "n_total", "unit", "how", "seed"]
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Sample:
    """What one stage used: `positions` (indices into the stage's population, sorted), out of `n_total`."""

    stage: str
    positions: np.ndarray
    n_total: int
    how: str
    seed: int | None
    unit: str = "masks"

    @property
    def n_used(self) -> int:
        return len(self.positions)

    @property
    def complete(self) -> bool:
        return self.n_used == self.n_total

    def row(self) -> dict:
        """One row of the samples table (SAMPLE_COLUMNS)."""
        return {"stage": self.stage, "n_used": self.n_used, "n_total": self.n_total, "unit": self.unit,
                "how": self.how, "seed": self.seed}

    def describe(self) -> str:
        """E.g. "2,000 of 10,000 masks (a uniform random sample, seed 0)" or "all 16 masks"."""
        if self.complete:
            return f"all {self.n_total:,} {self.unit}"
        seed = "" if self.seed is None else f", seed {self.seed}"
        return f"{self.n_used:,} of {self.n_total:,} {self.unit} ({self.how}{seed})"


def mask_sample(n_masks: int, n: int | None, seed: int = 0, stage: str = "") -> Sample:
    """`n` of `n_masks` masks (positions 0..n_masks-1, sorted), the first `n` of one seeded permutation, so that
    samples of one seed are nested; all of them when `n` is None or at least `n_masks`."""
    if n is not None and (isinstance(n, bool) or int(n) < 1):
        raise UserError(f"a sample of {n!r} masks is invalid: use at least 1 (or all)")
    if n is None or int(n) >= n_masks:
        return Sample(stage, np.arange(n_masks), n_masks, "all", None)
    order = np.random.default_rng(int(seed)).permutation(n_masks)
    return Sample(stage, np.sort(order[: int(n)]), n_masks, "a uniform random sample without replacement",
                  int(seed))


def pair_sample(n_masks: int, n: int | None, seed: int = 0, stage: str = "") -> Sample:
    """`n` of the n_masks (n_masks - 1) / 2 pairs i < j, uniformly at random without replacement (one generator
    seeded by `seed`); all of them when `n` is None or at least their number. Positions: the pairs' condensed
    indices (scipy's order, row-major over i < j), sorted; `condensed_pairs` turns them into (i, j)."""
    total = n_masks * (n_masks - 1) // 2
    if n is not None and (isinstance(n, bool) or int(n) < 1):
        raise UserError(f"a sample of {n!r} pairs is invalid: use at least 1 (or all)")
    if n is None or int(n) >= total:
        return Sample(stage, np.arange(total), total, "all", None, "pairs")
    chosen = np.random.default_rng(int(seed)).choice(total, int(n), replace=False)
    return Sample(stage, np.sort(chosen), total, "a uniform random sample without replacement", int(seed), "pairs")


def condensed_pairs(positions: np.ndarray, n_masks: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j of the condensed pair indices `positions` among `n_masks` masks (exact: integer row
    starts, no square root)."""
    positions = np.asarray(positions, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_masks - 1 - np.arange(max(0, n_masks - 1)), dtype=np.int64)])
    i = np.searchsorted(starts, positions, side="right") - 1
    return i, i + 1 + positions - starts[i]


def _upper_values(result: Intersections, start: int, stop: int) -> np.ndarray:
    """Whole-network Hamming distances of the pairs (i, j), start <= i < stop, j > i, in row-major order."""
    values = result.block("hamming", ALL, start, stop)
    upper = np.arange(values.shape[1])[None, :] > np.arange(start, stop)[:, None]
    return values[upper]


def hamming_histogram(result: Intersections, *, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """``counts[d]`` = number of pairs i < j at whole-network Hamming distance d (bits), for every pair."""
    n = len(result.ids_a)
    counts = np.zeros(int(result.n_bits[0]) + 1, dtype=np.int64)
    for start, stop in upper_blocks(n, max(1, block_bytes // max(1, 8 * n))):
        counts += np.bincount(_upper_values(result, start, stop), minlength=len(counts))
    return counts


def stratified_pairs(result: Intersections, n_pairs: int, seed: int = 0, *,
                     block_bytes: int = BLOCK_BYTES) -> tuple[pd.DataFrame, Sample]:
    """`n_pairs` pairs of one mask set stratified by whole-network Hamming distance (see the module docstring).

    Returns (pairs, sample): pairs has one row per pair, in stratum order: mask_a, mask_b (ids, a before b in
    the set's order), stratum (0 = the closest pairs), hamming (bits), stratum_min and stratum_max (the
    distance range of its stratum, bits); all pairs (stratum = rank) when `n_pairs` is at least their number.
    """
    if not result.symmetric:
        raise UserError("stratified_pairs takes the pairs of one mask set")
    n = len(result.ids_a)
    total = n * (n - 1) // 2
    if total == 0:
        raise UserError(f"a sample of pairs needs at least 2 masks; got {n}")
    if isinstance(n_pairs, bool) or int(n_pairs) < 1:
        raise UserError(f"pairs = {n_pairs!r} is invalid: use an integer >= 1")
    m = min(int(n_pairs), total)
    rng = np.random.default_rng(int(seed))
    bounds = (np.arange(m + 1) * total) // m          # stratum s holds the ranks bounds[s] .. bounds[s+1]-1
    ranks = bounds[:-1] + (rng.random(m) * np.diff(bounds)).astype(np.int64) if m < total else np.arange(total)
    histogram = hamming_histogram(result, block_bytes=block_bytes)
    below = np.concatenate([[0], np.cumsum(histogram)])  # below[d]: pairs closer than d
    value_of = np.searchsorted(below, ranks, side="right") - 1
    tie = ranks - below[value_of]                      # which of the pairs at that distance, in pair order
    wanted = np.unique(value_of)
    seen = dict.fromkeys(wanted.tolist(), 0)
    found = np.full(m, -1, dtype=np.int64)
    rows_a = np.empty(m, dtype=np.int64)
    rows_b = np.empty(m, dtype=np.int64)
    for start, stop in upper_blocks(n, max(1, block_bytes // max(1, 8 * n))):
        values = _upper_values(result, start, stop)
        hits = np.flatnonzero(np.isin(values, wanted))
        if hits.size == 0:
            continue
        offsets = np.concatenate([[0], np.cumsum(n - 1 - np.arange(start, stop))])  # first pair of each row
        for d in np.unique(values[hits]).tolist():
            at = hits[values[hits] == d]
            for s in np.flatnonzero((value_of == d) & (found < 0)):
                k = int(tie[s]) - seen[d]
                if 0 <= k < len(at):
                    position = int(at[k])
                    r = int(np.searchsorted(offsets, position, side="right")) - 1
                    rows_a[s], rows_b[s] = start + r, start + r + 1 + position - int(offsets[r])
                    found[s] = 1
            seen[d] += len(at)
        if (found >= 0).all():
            break
    low = np.searchsorted(below, bounds[:-1], side="right") - 1 if m < total else value_of
    high = np.searchsorted(below, bounds[1:] - 1, side="right") - 1 if m < total else value_of
    pairs = pd.DataFrame({"mask_a": result.ids_a[rows_a], "mask_b": result.ids_b[rows_b],
                          "stratum": np.arange(m), "hamming": value_of, "stratum_min": low, "stratum_max": high})
    if m == total:
        sample = Sample("barriers", np.arange(total), total, "all", None, unit="pairs")
    else:
        sample = Sample("barriers", ranks, total, f"stratified by whole-network Hamming distance: {m} strata of "
                        "equal count, one pair drawn uniformly in each", int(seed), unit="pairs")
    return pairs, sample


__all__ = ["SAMPLE_COLUMNS", "Sample", "condensed_pairs", "hamming_histogram", "mask_sample", "pair_sample",
           "stratified_pairs"]
