"""Hostile and careless input at the commands and the Python API (issue 22, round three of the red team): sizes
that exhausted the machine (items 4, 6), wrong answers to wrong arguments (item 10), wrong exit codes and unclear
messages (items 14, 15, 17). The run directory's own corruption: tests/store/test_hostile.py. Each test failed on
the code before the fix."""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pytest

import masklab
from masklab.analysis.interpolation import barrier_matrix
from masklab.analysis.paths.geometry import MAX_ORDERS, MAX_POINTS
from masklab.cli import main
from masklab.errors import UserError
from masklab.store.bits import MaskSet


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


# ---- item 10: wrong arguments are refused, not guessed ------------------------------------------------------
@pytest.mark.parametrize("a, b", [(0.5, 1), (0, True), (np.float64(1.0), 0), (-1, 0), ("0", 1)])
def test_mask_ids_that_are_not_integers_are_refused(tiny_run, a, b):
    """Issue 22, item 10: `interpolate(run, 0.5, 1)` silently used mask 0, and True was taken as mask 1."""
    bad = a if not (isinstance(a, int) and not isinstance(a, bool) and a >= 0) else b
    with pytest.raises(UserError, match=rf"mask id {re.escape(repr(bad))} is invalid: mask ids are integers >= 0"):
        masklab.interpolate(tiny_run, a, b, points=2)
    with pytest.raises(UserError, match="mask ids are integers >= 0"):
        tiny_run.record(bad)
    with pytest.raises(UserError, match="mask ids are integers >= 0"):
        tiny_run.masks.unpack(bad)
    assert tiny_run.record(np.int64(1))["mask_id"] == 1


@pytest.mark.parametrize("matrix", [np.array([[-1.0, 0.0, 1.0]]), np.array([[0.5, 0.0, 1.0]]), np.array([[2, 0, 1]])])
def test_a_matrix_that_is_not_boolean_is_refused(matrix):
    """Issue 22, item 10: `MaskSet.from_bool` turned -1.0 or 0.5 into "kept" bits."""
    with pytest.raises(UserError, match=r"values other than 0 and 1 .*say which entries are kept explicitly"):
        MaskSet.from_bool(matrix)
    kept = MaskSet.from_bool(matrix != 0)  # the rule stated explicitly
    assert _bool(kept) == (matrix != 0).tolist()


def _bool(masks: MaskSet) -> list:
    return [masks.unpack(i).tolist() for i in masks.ids]


def test_a_zero_one_matrix_of_numbers_is_the_boolean_one():
    ones = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert _bool(MaskSet.from_bool(ones)) == (ones == 1).tolist()
    assert _bool(MaskSet.from_bool(ones.astype(np.int8))) == (ones == 1).tolist()


def test_the_random_baseline_of_no_masks_is_refused():
    """Issue 22, item 10: `random_baseline` of an empty MaskSet returned NaN rows marked exact."""
    empty = MaskSet.from_bool(np.zeros((0, 8), dtype=bool))
    with pytest.raises(UserError, match="random_baseline needs at least one mask"):
        masklab.random_baseline(empty)


# ---- item 14: an import file of the wrong kind is named, with what it is ------------------------------------
@pytest.fixture
def import_files(tmp_path):
    import torch

    torch.save({"linear.0.weight": torch.zeros(4, 5), "linear.0.scores": torch.zeros(4, 5)}, tmp_path / "model.pt")
    np.savez(tmp_path / "mask.npz", fc1=np.ones((4, 5), dtype=bool))
    return tmp_path


@pytest.mark.parametrize("files, format, named, what, fix", [
    (["model.pt"], "npz", "model.pt", r"a torch checkpoint \(torch\.save\)", "--format hidden-networks"),
    (["mask.npz", "model.pt"], "npz", "model.pt", r"a torch checkpoint \(torch\.save\)", "--format hidden-networks"),
    (["mask.npz"], "hidden-networks", "mask.npz", r"an \.npz file of numpy arrays", "--format npz"),
    (["mask.npz"], "torch-prune", "mask.npz", r"an \.npz file of numpy arrays", "--format npz"),
], ids=["pt as npz", "npz and pt mixed", "npz as hidden-networks", "npz as torch-prune"])
def test_an_import_file_of_another_format_is_named(import_files, capsys, files, format, named, what, fix):
    """Issue 22, item 14: `import FILE.pt --format npz` (or npz files mixed with a checkpoint) ended in exit 1,
    AttributeError."""
    runs = import_files / "runs"
    argv = ["import", *(str(import_files / f) for f in files), "--format", format, "--keep", "0.5",
            "--runs-dir", str(runs), "--quiet"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert re.search(rf"{re.escape(str(import_files / named))} is {what}, not what --format {format} reads .*; "
                     rf"import it with {fix}", line), line
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


# ---- item 15: values float32 cannot hold are refused; a diverging weight decay is named ----------------------
@pytest.mark.parametrize("option, field", [("--lr", "lr"), ("--weight-decay", "weight_decay")])
def test_values_beyond_float32_are_refused_up_front(tmp_path, capsys, option, field):
    """Issue 22, item 15: `--lr 1e308` / `--weight-decay 1e308` printed a numpy RuntimeWarning (3 stderr lines)."""
    runs = tmp_path / "runs"
    assert main(["generate", option, "1e308", "--runs-dir", str(runs), "--quiet"]) == 2
    assert f"config field '{field}' = 1e+308 is invalid: more than float32, in which training computes, can hold" \
        in _error_line(capsys)
    assert not runs.exists()


def test_a_diverging_weight_decay_is_named_not_the_lr(tmp_path, capsys):
    """Issue 22, item 15: a diverging weight decay was blamed on --lr."""
    runs = tmp_path / "runs"
    argv = ["generate", "--masks", "1", "--epochs", "1", "--width", "0.25", "--weight-decay", "1e30",
            "--runs-dir", str(runs), "--quiet"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "training diverged in epoch 0" in line or "training diverged in epoch 1" in line
    assert "the weight decay diverged: lr x weight decay = 0.1 x 1e+30" in line and "--weight-decay" in line
    assert "use a smaller --lr" not in line
    assert not [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
