"""The null model (masklab.analysis.null): the exact Jaccard moments against enumeration, the delta method
against them, and the hypergeometric pmf against scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import masklab.analysis.null as null


def brute_force_jaccard(n: int, count_a: int, count_b: int) -> tuple[float, float]:
    """E and sd of the Jaccard index over every pair of subsets of sizes count_a, count_b of n items."""
    values = []
    for a in itertools.combinations(range(n), count_a):
        for b in itertools.combinations(range(n), count_b):
            union = len(set(a) | set(b))
            values.append(len(set(a) & set(b)) / union if union else 1.0)
    return float(np.mean(values)), float(np.std(values))


@pytest.mark.parametrize("n, count_a, count_b", [(6, 3, 2), (7, 3, 3), (5, 0, 0), (5, 5, 2), (8, 1, 6)])
def test_exact_jaccard_expectation_against_enumeration(n, count_a, count_b):
    mean, std, exact = null.layer_jaccard_moments(n, count_a, count_b)
    assert exact
    expected_mean, expected_std = brute_force_jaccard(n, count_a, count_b)
    assert mean[0] == pytest.approx(expected_mean, abs=1e-12)
    assert std[0] == pytest.approx(expected_std, abs=1e-12)


def test_delta_method_is_tight_for_large_layers(monkeypatch):
    n, counts = np.array([5000, 20000]), np.array([[2500, 5000]])
    exact_mean, exact_std, exact = null.layer_jaccard_moments(n, counts, counts)
    total_mean, total_std, total_exact = null.total_jaccard_moments(n, counts, counts)
    assert exact and total_exact
    monkeypatch.setattr(null, "EXACT_PMF_POINTS", 0)
    delta_mean, delta_std, exact = null.layer_jaccard_moments(n, counts, counts)
    total_delta_mean, total_delta_std, total_exact = null.total_jaccard_moments(n, counts, counts)
    assert not exact and not total_exact
    np.testing.assert_allclose(delta_mean, exact_mean, rtol=1e-7)
    np.testing.assert_allclose(delta_std, exact_std, rtol=1e-2)
    np.testing.assert_allclose(total_delta_mean, total_mean, rtol=1e-7)


@pytest.mark.parametrize("n, count_a, count_b", [(65536, 32768, 32768), (2560, 256, 1280), (100, 99, 3),
                                                 (10, 10, 4), (7, 0, 3), (500, 2, 498)])
def test_intersection_pmf_against_scipy(n, count_a, count_b):
    from scipy.stats import hypergeom

    first, pmf = null.intersection_pmf(n, count_a, count_b)
    support = np.arange(first, first + len(pmf))
    expected = hypergeom.pmf(support, n, count_a, count_b)
    np.testing.assert_allclose(pmf, expected / expected.sum(), rtol=1e-9, atol=1e-300)
    assert expected.sum() == pytest.approx(1.0, abs=1e-12)   # the window holds all of the probability
