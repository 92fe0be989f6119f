"""Hostile and careless input at the commands and the Python API (issue 22, round three of the red team): sizes
that exhausted the machine (items 4, 6), wrong answers to wrong arguments (item 10), wrong exit codes and unclear
messages (items 14, 15, 17). The run directory's own corruption: tests/store/test_hostile.py. Each test failed on
the code before the fix."""

from __future__ import annotations

import shutil
import time

import pytest

import masklab
from masklab.analysis.interpolation import barrier_matrix
from masklab.analysis.paths.geometry import MAX_ORDERS, MAX_POINTS
from masklab.cli import main
from masklab.errors import UserError


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def copy(tiny_run, tmp_path):
    path = tmp_path / "runs" / tiny_run.id
    shutil.copytree(tiny_run.path, path)
    return path


# ---- item 6: interpolate --points (and --orders) are bounded ---------------------------------------------------
def test_interpolation_points_and_orders_are_bounded(tiny_run):
    """Issue 22, item 6: `interpolate --points 1e8` ran for over 5 minutes."""
    start = time.perf_counter()
    with pytest.raises(UserError, match=rf"points = 100,000,000 is more than the limit of {MAX_POINTS:,}"):
        masklab.interpolate(tiny_run, 0, 1, points=10**8)
    with pytest.raises(UserError, match=rf"orders = 100,000 is more than the limit of {MAX_ORDERS:,}"):
        masklab.interpolate(tiny_run, 0, 1, "hamming", orders=100_000)
    with pytest.raises(UserError, match="more than the limit"):
        barrier_matrix(tiny_run, points=MAX_POINTS + 1)
    assert time.perf_counter() - start < 60  # refused up front (a generous bound: the machine is shared)


@pytest.mark.parametrize("argv", [["interpolate", "{run}", "0", "1", "--points", "100000000"],
                                  ["interpolate", "{run}", "--pairs", "1", "--points", "100000000"],
                                  ["interpolate", "{run}", "0", "1", "--path", "hamming", "--orders", "100000"],
                                  ["analyze", "{run}", "--points", "100000000", "--quiet"]],
                         ids=["curve", "barriers", "orders", "analyze"])
def test_commands_refuse_too_many_points_before_any_work(copy, capsys, argv):
    assert main([a.format(run=copy) for a in argv]) == 2
    assert "is more than the limit of 1,000" in _error_line(capsys)
    assert not (copy / "analysis").exists() and not (copy.parent.parent / "figures").exists()
