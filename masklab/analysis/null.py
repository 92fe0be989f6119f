"""The null model: what distances random masks would have, in closed and exact hypergeometric forms.

Two masks drawn independently and uniformly among all masks with the same per-layer kept counts as the
masks compared. In a layer of n bits with counts c_a and c_b the intersection I is then
hypergeometric,

    E[I] = c_a c_b / n,      Var[I] = c_a c_b (n - c_a)(n - c_b) / (n^2 (n - 1)),

and layers are independent, so the whole mask ("all") has the sums of the layers' means and variances.
Hamming, normalised Hamming and matching are affine in I, so their expectations are exact. With
c_a = c_b = k n the expected matching is exactly ``k^2 + (1 - k)^2``; Jaccard ``I / (c_a + c_b - I)`` is not
affine, and its expectation is computed exactly from the hypergeometric pmf (summed over the window of
+-40 standard deviations around the mean, which holds all of the probability to double precision), for
the whole mask by convolving the layers' pmfs. When that would take too long (more than
`EXACT_PMF_POINTS` pmf points, or thousands of distinct count combinations, as for masks whose counts
all differ), a second-order delta method is used instead,
``E[f(I)] ~ f(mu) + f''(mu) Var[I] / 2``, whose error is below 1e-7 for layers of 1,000 bits or more; the
column ``exact`` of `masklab.analysis.baselines.random_baseline` says which. The papers' closed form for
independent bits of density k, ``k / (2 - k)``, is reported beside it as ``jaccard_iid`` (it and the exact
value agree to O(1/n)).
"""

from __future__ import annotations

import numpy as np

from masklab.analysis.distances import metric_values

EXACT_PMF_POINTS = 4_000_000      # pmf points summed at most for the exact Jaccard moments
EXACT_MAX_COMBINATIONS = 2_000    # distinct (n, c_a, c_b) per layer handled exactly
EXACT_MAX_TOTALS = 64             # distinct pairs of count vectors whose whole-mask pmf is convolved
PMF_HALF_WIDTH_SD = 40.0


# ---- hypergeometric intersections -----------------------------------------------------------------

def intersection_moments(n_bits, count_a, count_b) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the intersection of two independent uniform masks with fixed counts."""
    n = np.asarray(n_bits, dtype=np.float64)
    ca = np.asarray(count_a, dtype=np.float64)
    cb = np.asarray(count_b, dtype=np.float64)
    mean = ca * cb / n
    denominator = n * n * (n - 1)
    var = np.divide(ca * cb * (n - ca) * (n - cb), denominator, out=np.zeros(np.broadcast(n, ca, cb).shape),
                    where=denominator > 0)
    return mean, var


def intersection_pmf(n_bits: int, count_a: int, count_b: int) -> tuple[int, np.ndarray]:
    """The hypergeometric pmf of the intersection over mean +- 40 sd: (first value, probabilities).

    Computed from the ratio of consecutive terms, ``p(i + 1) / p(i) = (c_a - i)(c_b - i) / ((i + 1)
    (n - c_a - c_b + i + 1))``, summed in logs and normalised over the window: exact to rounding (about
    1e-13 relative), and a thousand times faster than evaluating each term on its own.
    """
    n, ca, cb = int(n_bits), int(count_a), int(count_b)
    low, high = max(0, ca + cb - n), min(ca, cb)
    mean, var = intersection_moments(n, ca, cb)
    half_width = PMF_HALF_WIDTH_SD * np.sqrt(var) + 1
    first, last = max(low, int(np.floor(mean - half_width))), min(high, int(np.ceil(mean + half_width)))
    i = np.arange(first, last, dtype=np.float64)
    log_ratio = np.log(ca - i) + np.log(cb - i) - np.log(i + 1) - np.log(n - ca - cb + i + 1)
    log_pmf = np.concatenate([[0.0], np.cumsum(log_ratio)])
    pmf = np.exp(log_pmf - log_pmf.max())
    return first, pmf / pmf.sum()


def _jaccard_of(intersection, count_sum):
    union = count_sum - intersection
    return np.divide(intersection, union, out=np.ones(np.shape(union)), where=union > 0)


def _pmf_moments(first: int, pmf: np.ndarray, count_sum: int) -> tuple[float, float]:
    jaccard = _jaccard_of(np.arange(first, first + len(pmf), dtype=np.float64), float(count_sum))
    mean = float(pmf @ jaccard)
    return mean, float(np.sqrt(max(0.0, pmf @ (jaccard - mean) ** 2)))


def _delta_jaccard(mean_i, var_i, count_sum) -> tuple[np.ndarray, np.ndarray]:
    """Second-order delta method for E and sd of I / (S - I)."""
    s = np.asarray(count_sum, dtype=np.float64)
    gap = s - mean_i
    safe_gap = np.where(gap > 0, gap, 1.0)
    mean = np.where(gap > 0, mean_i / safe_gap + s * var_i / safe_gap ** 3, 1.0)
    std = np.where(gap > 0, s * np.sqrt(var_i) / safe_gap ** 2, 0.0)
    return mean, std


def _unique_combinations(n: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (n, c_a, c_b) rows and the index of each input among them (1-D keys: fast for millions)."""
    sizes, size_index = np.unique(n, return_inverse=True)
    key = (size_index * (sizes.max(initial=0) + 1) + ca) * (sizes.max(initial=0) + 1) + cb \
        if (sizes.max(initial=0) + 1) ** 2 * len(sizes) < 2 ** 62 else None
    if key is None:
        combos, inverse = np.unique(np.column_stack([n, ca, cb]), axis=0, return_inverse=True)
        return combos, inverse.ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return np.column_stack([n[first], ca[first], cb[first]]), inverse.ravel()


def _pmf_points(n_bits, count_a, count_b) -> np.ndarray:
    _, var = intersection_moments(n_bits, count_a, count_b)
    width = 2 * (PMF_HALF_WIDTH_SD * np.sqrt(var) + 1) + 1
    return np.minimum(width, np.minimum(count_a, count_b) + 1)


def layer_jaccard_moments(n_bits, count_a, count_b) -> tuple[np.ndarray, np.ndarray, bool]:
    """E and sd of Jaccard under the null for arrays of (n, c_a, c_b); exact unless too many points."""
    n, ca, cb = (np.asarray(x, dtype=np.int64).ravel() for x in np.broadcast_arrays(n_bits, count_a, count_b))
    combos, inverse = _unique_combinations(n, ca, cb)
    exact = len(combos) <= EXACT_MAX_COMBINATIONS and _pmf_points(*combos.T).sum() <= EXACT_PMF_POINTS
    if exact:
        moments = np.array([_pmf_moments(*intersection_pmf(int(m), int(a), int(b)), int(a + b))
                            for m, a, b in combos]).reshape(-1, 2)
        mean, std = moments[:, 0], moments[:, 1]
    else:
        mean_i, var_i = intersection_moments(combos[:, 0], combos[:, 1], combos[:, 2])
        mean, std = _delta_jaccard(mean_i, var_i, combos[:, 1] + combos[:, 2])
    return mean[inverse], std[inverse], bool(exact)


def total_jaccard_moments(layer_bits, counts_a, counts_b) -> tuple[np.ndarray, np.ndarray, bool]:
    """E and sd of whole-mask Jaccard for pairs of per-layer count vectors (P, L) under the null.

    The whole-mask intersection is the sum of independent per-layer hypergeometrics: exact by
    convolving the layers' pmfs, or the delta method on its exact mean and variance.
    """
    layer_bits = np.asarray(layer_bits, dtype=np.int64)
    ca, cb = np.atleast_2d(counts_a).astype(np.int64), np.atleast_2d(counts_b).astype(np.int64)
    points = _pmf_points(layer_bits[None, :], ca, cb).sum()
    mean_i, var_i = intersection_moments(layer_bits[None, :], ca, cb)
    count_sum = ca.sum(axis=1) + cb.sum(axis=1)
    if points > EXACT_PMF_POINTS or len(ca) > EXACT_MAX_TOTALS:
        mean, std = _delta_jaccard(mean_i.sum(axis=1), var_i.sum(axis=1), count_sum)
        return mean, std, False
    pairs = [_pmf_moments(*_convolved_pmf(layer_bits, a, b), s) for a, b, s in zip(ca, cb, count_sum)]
    moments = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    return moments[:, 0], moments[:, 1], True


def _convolved_pmf(layer_bits: np.ndarray, count_a: np.ndarray,
                   count_b: np.ndarray) -> tuple[int, np.ndarray]:
    first, pmf = 0, np.ones(1)
    for n, a, b in zip(layer_bits, count_a, count_b):
        layer_first, layer_pmf = intersection_pmf(int(n), int(a), int(b))
        first += layer_first
        pmf = np.convolve(pmf, layer_pmf) if min(len(pmf), len(layer_pmf)) < 64 else \
            np.clip(_fft_convolve(pmf, layer_pmf), 0.0, None)
    return first, pmf / pmf.sum()


def _fft_convolve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Full linear convolution by real FFT (what scipy.signal.fftconvolve does, without importing it)."""
    size = len(x) + len(y) - 1
    fft_size = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, fft_size) * np.fft.rfft(y, fft_size), fft_size)[:size]


# ---- per pair of count vectors --------------------------------------------------------------------

def null_stats(layer_bits: np.ndarray, counts_a: np.ndarray, counts_b: np.ndarray) -> dict[str, np.ndarray]:
    """Null moments for P pairs of count vectors (P, L): arrays (P, L + 1), column 0 the whole mask."""
    mean_i, var_i = intersection_moments(layer_bits[None, :], counts_a, counts_b)
    layer_jaccard, layer_jaccard_std, layer_exact = layer_jaccard_moments(layer_bits[None, :], counts_a,
                                                                          counts_b)
    total_jaccard, total_jaccard_std, total_exact = total_jaccard_moments(layer_bits, counts_a, counts_b)
    shape = counts_a.shape
    return {
        "n_bits": np.concatenate([[layer_bits.sum()], layer_bits]),
        "count_a": np.column_stack([counts_a.sum(axis=1), counts_a]),
        "count_b": np.column_stack([counts_b.sum(axis=1), counts_b]),
        "mean_i": np.column_stack([mean_i.sum(axis=1), mean_i]),
        "var_i": np.column_stack([var_i.sum(axis=1), var_i]),
        "jaccard": np.column_stack([total_jaccard, layer_jaccard.reshape(shape)]),
        "jaccard_std": np.column_stack([total_jaccard_std, layer_jaccard_std.reshape(shape)]),
        "exact": np.array([total_exact] + [layer_exact] * shape[1]),
    }


def null_metric(metric: str, stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Expectation and sd of `metric` under the null, from `null_stats`."""
    n, ca, cb = stats["n_bits"][None, :], stats["count_a"], stats["count_b"]
    sd_i = np.sqrt(stats["var_i"])
    if metric == "jaccard":
        return stats["jaccard"], stats["jaccard_std"]
    mean = metric_values(metric, stats["mean_i"], ca, cb, n)
    scale = {"hamming": 2.0, "hamming_norm": 2.0 / n, "matching": 2.0 / n}[metric]
    return mean, scale * sd_i


def pair_weights(n_masks: int, multiplicity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs (u <= v) of distinct count vectors and how many mask pairs each stands for."""
    u, v = np.triu_indices(len(multiplicity))
    weights = np.where(u == v, multiplicity[u] * (multiplicity[u] - 1) / 2, multiplicity[u] * multiplicity[v])
    if n_masks < 2:
        weights = np.where(u == v, 1.0, 0.0)
    keep = weights > 0
    return u[keep], v[keep], weights[keep].astype(np.float64)
