"""Tests for masklab.limits: models and synthetic data too large for the limits or this machine's memory are
refused before anything is allocated."""

from __future__ import annotations

import pytest

from masklab import limits
from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.limits import check_fits


# ---- models too large to train ----------------------------------------------------------------------------
def test_check_fits_counts_prunable_weights_without_allocating(monkeypatch):
    assert check_fits(RunConfig(model="lenet-300-100"), (1, 28, 28), 10) == 784 * 300 + 300 * 100 + 100 * 10
    with pytest.raises(UserError, match=r"model conv4 \(width 1\) on samples of shape 1x1000x1000 has "
                                        r"2,048,326,720 prunable weights, more than the limit of 1,073,741,824"):
        check_fits(RunConfig(model="conv4"), (1, 1000, 1000), 10)
    # the limit is inclusive: a model of exactly MAX_WEIGHTS prunable weights passes, one more is refused
    lenet = 784 * 300 + 300 * 100 + 100 * 10
    monkeypatch.setattr(limits, "MAX_WEIGHTS", lenet)
    assert check_fits(RunConfig(model="lenet-300-100"), (1, 28, 28), 10) == lenet
    monkeypatch.setattr(limits, "MAX_WEIGHTS", lenet - 1)
    with pytest.raises(UserError, match="more than the limit of 266,199"):
        check_fits(RunConfig(model="lenet-300-100"), (1, 28, 28), 10)
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"model mlp \(width 100000\)"):
        check_fits(RunConfig(width=100_000), (1, 8, 8), 10)


def test_check_fits_refuses_what_memory_cannot_hold(monkeypatch):
    weights = 784 * 300 + 300 * 100 + 100 * 10
    monkeypatch.setattr(limits, "memory_bytes", lambda: 4 * weights * 10)
    check_fits(RunConfig(model="lenet-300-100", stack=3, masks=16), (1, 28, 28), 10)  # 1 + 3 * 3 floats per weight
    with pytest.raises(UserError, match=r"training 4 mask\(s\) at once needs at least 0\.0 GiB but this machine has "
                                        r"0\.0 GiB; use a smaller --stack"):
        check_fits(RunConfig(model="lenet-300-100", stack=4, masks=16), (1, 28, 28), 10)
    check_fits(RunConfig(model="lenet-300-100", stack=100, masks=3), (1, 28, 28), 10)  # only 3 masks to stack
    monkeypatch.setattr(limits, "memory_bytes", lambda: None)  # unknown: only the fixed limit applies
    check_fits(RunConfig(model="lenet-300-100", stack=10**6, masks=10**6), (1, 28, 28), 10)


def test_memory_bytes_is_positive_or_unknown():
    have = limits.memory_bytes()
    assert have is None or have > 2**20
