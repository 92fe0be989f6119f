"""Mask sets of known structure, shared by the analysis tests: planted clusters and coin-flip masks (clustering,
the structure test), masks of fixed per-layer counts (baselines, random mask sets)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from masklab.store.bits import MaskSet

N_PER, N_CENTRES, N_BITS, FLIP = 10, 3, 2000, 0.05
SIZES = [300, 1700]


def _planted(seed: int = 0) -> tuple[MaskSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.random((N_CENTRES, N_BITS)) < 0.5
    truth = np.repeat(np.arange(N_CENTRES), N_PER)
    rng.shuffle(truth)
    bits = centres[truth] ^ (rng.random((len(truth), N_BITS)) < FLIP)
    return MaskSet.from_bool(bits, layer_sizes=SIZES, ids=np.arange(100, 100 + len(truth))), truth


def _coin_masks(seed: int = 1, n: int = 30) -> MaskSet:
    rng = np.random.default_rng(seed)
    return MaskSet.from_bool(rng.random((n, N_BITS)) < 0.5, layer_sizes=SIZES)


@pytest.fixture(scope="session")
def planted() -> Callable[..., tuple[MaskSet, np.ndarray]]:
    """`planted(seed=0)`: 30 masks of 2,000 bits (layers of 300 and 1,700), noisy copies (5% of bits flipped)
    of 3 random centres, ids 100.. shuffled against the truth; returns (masks, true cluster of each)."""
    return _planted


@pytest.fixture(scope="session")
def coin_masks() -> Callable[..., MaskSet]:
    """`coin_masks(seed=1, n=30)`: n masks of the same layout, every bit a fair coin (no structure)."""
    return _coin_masks


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
