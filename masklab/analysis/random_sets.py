"""Random mask sets: uniform random masks with the layout and per-layer kept counts of given masks, and
the empirical null distribution of distances they give (for what has no closed form; the closed and exact
forms are in `masklab.analysis.null` and `masklab.analysis.baselines`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from masklab.analysis.distances import METRICS, distances
from masklab.analysis.kernels import before_load, layer_bounds, row_counts
from masklab.errors import UserError
from masklab.store.bits import MaskSet


def layer_counts(masks: MaskSet) -> np.ndarray:
    """Kept bits of every mask in every layer: an (N, L) int64 array (what the random masks copy)."""
    return row_counts(masks.bits, layer_bounds(masks.layers["word_start"], masks.layers["word_stop"]))


def random_masks(masks: MaskSet, n_masks: int | None = None, random_state=None) -> MaskSet:
    """Uniform random masks with the same layout and per-layer counts as `masks`.

    Random mask r copies the per-layer counts of mask ``r % len(masks)``; every layer's kept positions are
    a uniform random subset of that size. Ids are 0 .. n_masks - 1.

    How (fast, and exactly uniform): each layer starts as independent random bits of about the layer's
    density, made straight from random 64-bit words (``x = r | y`` or ``r & y`` per binary digit of the
    density), and is then brought to its exact count by flipping uniformly chosen bits: kept bits off when
    there are too many, free bits on when too few (rejection sampling of positions). Every step treats all
    positions alike, so the result is invariant under any permutation of the layer's positions; being of
    fixed count, it is therefore uniform over the subsets of that size. No bool matrix is ever made.
    """
    rng = np.random.default_rng(random_state)
    n_masks = len(masks) if n_masks is None else int(n_masks)
    if n_masks < 1 or len(masks) == 0:
        raise UserError(f"need at least one mask to copy counts from and n_masks >= 1, got {n_masks}")
    return MaskSet(random_mask_bits(masks.layers, layer_counts(masks), n_masks, rng), masks.layers.copy())


def random_mask_bits(layers: pd.DataFrame, counts: np.ndarray, n_masks: int, rng: np.random.Generator) -> np.ndarray:
    """The packed words of `random_masks`: (n_masks, W) uint64, random mask r with the per-layer counts
    ``counts[r % len(counts)]`` (an (N, L) array) over the layout `layers` (MaskSet.layers)."""
    n_bits = layers["n_bits"].to_numpy(np.int64)
    starts, stops = layers["word_start"].to_numpy(np.int64), layers["word_stop"].to_numpy(np.int64)
    bits = np.zeros((int(n_masks), int(stops[-1]) if len(stops) else 0), dtype=np.uint64)
    rows = np.arange(int(n_masks)) % len(counts)
    for k in range(len(n_bits)):
        w0, w1 = int(starts[k]), int(stops[k])
        bits[:, w0:w1] = _random_layer_words(rng, int(n_bits[k]), w1 - w0, counts[rows, k])
    return bits


DENSITY_DIGITS = 10  # binary digits of the starting density: within 1/2048 of the target, the fix-up is small
_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _random_words(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(_ONES, size=shape, dtype=np.uint64, endpoint=True)


def _bernoulli_words(rng: np.random.Generator, shape, density: float) -> np.ndarray:
    """Words whose bits are independent with P(1) = `density` rounded to DENSITY_DIGITS binary digits."""
    scaled = int(round(density * (1 << DENSITY_DIGITS)))
    if density > 0 and scaled == 0:
        scaled = 1
    if scaled <= 0:
        return np.zeros(shape, dtype=np.uint64)
    if scaled >= 1 << DENSITY_DIGITS:
        return np.full(shape, _ONES, dtype=np.uint64)
    words: np.ndarray | None = None
    # from the last binary digit to the first: digit 1 -> r | y (P = 1/2 + P(y)/2), digit 0 -> r & y (P(y)/2)
    for digit in range(DENSITY_DIGITS - 1, -1, -1):
        bit = (scaled >> (DENSITY_DIGITS - 1 - digit)) & 1
        if words is None:
            if bit:
                words = _random_words(rng, shape)
            continue
        r = _random_words(rng, shape)
        words = (r | words) if bit else (r & words)
    assert words is not None, "0 < scaled < 2^DENSITY_DIGITS has a 1 among its binary digits"
    return words


def _random_layer_words(rng: np.random.Generator, n_bits: int, n_words: int, counts: np.ndarray) -> np.ndarray:
    """(R, n_words) packed rows, row r a uniform random subset of `counts[r]` of the layer's `n_bits` bits."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros((len(counts), n_words), dtype=np.uint64)
    used = min(n_words, -(-n_bits // 64))
    if used == 0:
        return out
    words = _bernoulli_words(rng, (len(counts), used), float(counts.mean()) / n_bits)
    tail = n_bits - 64 * (used - 1)
    if tail < 64:
        words[:, -1] &= np.uint64((1 << tail) - 1)
    while True:
        have = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
        excess = have - counts
        todo = np.flatnonzero(excess)
        if len(todo) == 0:
            out[:, :used] = words
            return out
        _flip_some(rng, words, todo, excess[todo], have[todo], n_bits)


SMALL_FLIP_DRAWS = 1 << 16  # below this many candidates numpy takes ~1 ms: less than loading numba's kernel


def _flip_kernel(n_candidates: int | None = None):
    """The numba kernel of `_flip_some`, or None without numba, or for fewer than `SMALL_FLIP_DRAWS`
    candidates while the kernel is not loaded yet (its first use in a process costs ~0.2 s; numpy makes the
    same choice)."""
    if n_candidates is not None and before_load(n_candidates, SMALL_FLIP_DRAWS, "masklab.analysis._numba_random"):
        return None
    try:
        from masklab.analysis._numba_random import flip_to_counts  # here: see the docstring (numba's load)
    except ImportError:
        return None
    return flip_to_counts


def _flip_some(rng, words: np.ndarray, todo: np.ndarray, excess: np.ndarray, have: np.ndarray,
               n_bits: int) -> None:
    """In each row of `todo`, flip up to |excess| distinct uniformly chosen bits that are 1 (excess > 0) or
    0 (excess < 0): candidates are uniform positions, kept in draw order if in the right state and new."""
    need = np.abs(excess)
    ones = excess > 0
    share = np.where(ones, have, n_bits - have) / n_bits
    draws = int(min(4 * n_bits + 64, np.ceil((need / np.maximum(share, 1.0 / n_bits)).max() * 1.25) + 32))
    candidates = rng.integers(0, n_bits, size=(len(todo), draws))
    kernel = _flip_kernel(candidates.size)
    if kernel is not None:  # the same choice in one compiled pass (numpy's sorts cost 10x more)
        kernel(words, todo.astype(np.int64), excess.astype(np.int64), candidates)
        return
    word_index, shift = candidates >> 6, (candidates & 63).astype(np.uint64)
    state = ((words[todo[:, None], word_index] >> shift) & np.uint64(1)).astype(bool)
    usable = state == ones[:, None]
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros(ranked.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # later draws of a position already drawn
    seen = np.empty_like(repeat)
    np.put_along_axis(seen, order, repeat, axis=1)
    usable &= ~seen
    chosen = usable & (np.cumsum(usable, axis=1) <= need[:, None])
    row, column = np.nonzero(chosen)
    np.bitwise_xor.at(words, (todo[row], word_index[row, column]), np.uint64(1) << shift[row, column])


def random_baseline_samples(masks: MaskSet, n_samples: int | None = None,
                            metric: str | Sequence[str] = METRICS, per_layer: bool = True,
                            random_state=None) -> pd.DataFrame:
    """The empirical null distribution: distances among `n_samples` random masks (see `random_masks`).

    Parameters
    ----------
    masks : MaskSet
        Supplies the layout and the per-layer counts.
    n_samples : int, optional
        Random masks to draw (default: as many as `masks`, so the pairs match the observed table one to
        one); their n_samples (n_samples - 1) / 2 pairs are the samples. Pairwise intersections of
        independent fixed-count random masks are pairwise independent, so each pair is a fair sample.
    metric, per_layer
        As for `masklab.distances`.
    random_state : int or numpy Generator, optional

    Returns
    -------
    DataFrame
        The long distance table of the random masks (mask_a, mask_b, layer, metric, value).
    """
    n_samples = max(2, len(masks)) if n_samples is None else int(n_samples)
    if n_samples < 2:
        raise UserError(f"n_samples must be at least 2 (one pair), got {n_samples}")
    return distances(random_masks(masks, n_samples, random_state), metric=metric, per_layer=per_layer)
