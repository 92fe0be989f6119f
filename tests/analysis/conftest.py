"""Mask sets shared by the analysis tests: masks of fixed per-layer counts (baselines, random mask sets)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from masklab.store.bits import MaskSet


def _fixed_count_masks(n_masks: int, sizes, density: float, seed: int) -> MaskSet:
    rng = np.random.default_rng(seed)
    matrix = np.zeros((n_masks, sum(sizes)), dtype=bool)
    offsets = np.cumsum([0, *sizes])
    for row in range(n_masks):
        for k, n in enumerate(sizes):
            matrix[row, offsets[k] + rng.permutation(n)[:round(density * n)]] = True
    return MaskSet.from_bool(matrix, sizes)


@pytest.fixture(scope="session")
def fixed_count_masks() -> Callable[..., MaskSet]:
    """`fixed_count_masks(n_masks, sizes, density, seed)`: masks over layers of `sizes` bits, each keeping exactly
    round(density * n) uniformly chosen bits of every layer of n bits."""
    return _fixed_count_masks
