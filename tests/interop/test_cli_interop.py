"""`masklab import` and `masklab export` on the command line (in process)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import masklab
from masklab.cli import main

MLP_SIZES = [(64, 64), (64, 64), (10, 64)]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("masklab: error: ") and "Traceback" not in captured.err
    return captured.err


def test_import_ends_with_the_run_directory_and_export_with_the_file(mlp_checkpoints, tmp_path, capsys):
    paths, _ = mlp_checkpoints
    runs = tmp_path / "runs"
    code = main(["import", *map(str, paths), "--format", "hidden-networks", "--keep", "0.9", "--model", "mlp",
                 "--width", "0.25", "--dataset", "digits", "--runs-dir", str(runs), "--name", "mine"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    run = masklab.open_run(out[-1])
    assert run.id.startswith("mine-") and run.ids == [0, 1, 2] and run.path.parent == runs
    assert any(line.startswith("test accuracy mean ") for line in out)
    # one unit per quantity: each mask's accuracy in % as the mean's, not a fraction first
    per_mask = [line for line in out if line.startswith("mask ")]
    assert len(per_mask) == 3 and all(re.search(r"test accuracy \d+\.\d{2}%, loss \d\.\d{4} nats", line)
                                      for line in per_mask), per_mask
    assert any("kept the reference rule at keep 0.9" in line for line in out)
    code = main(["export", run.id, "--runs-dir", str(runs), "--mask", "2", "--format", "npz", "--out",
                 str(tmp_path / "m2.npz")])
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "m2.npz")
    with np.load(tmp_path / "m2.npz") as z:
        assert np.array_equal(z["fc1"], run.mask_layers(2)[0])
    code = main(["import", *map(str, paths), "--format", "hidden-networks", "--keep", "0.9", "--quiet", "--runs-dir",
                 str(runs)])
    assert code == 0 and len(capsys.readouterr().out.strip().splitlines()) == 1


def test_bad_imports_are_one_line_and_write_nothing(mlp_checkpoints, tmp_path, capsys, ref):
    paths, _ = mlp_checkpoints
    runs = tmp_path / "runs"
    other = tmp_path / "other.pth"
    ref.hn_checkpoint(other, ref.fc_weights(MLP_SIZES, seed=4), 0)
    cases = [
        ([str(paths[0]), str(other), "--format", "hidden-networks", "--keep", "0.9"], "has other weights than"),
        ([str(paths[0]), "--format", "hidden-networks", "--keep", "0.9", "--model", "mlp", "--dataset", "digits"],
         "layer linear.0 (64, 64, 1, 1) does not fit model mlp"),
        ([str(paths[0]), "--format", "hidden-networks"], "pass --keep K"),
        ([str(paths[0]), "--format", "onnx", "--keep", "0.5"], "unknown import format 'onnx'"),
        ([str(paths[0]), "--format", "hidden-networks", "--keep", "0.5", "--sparsity", "0.5"], "not both"),
        ([str(paths[0]), "--format", "hidden-networks", "--keep", "1.5"], "must lie in (0, 1]"),
        ([str(paths[0]), "--format", "hidden-networks", "--keep", "0.5", "--name", "../x"], "config field 'name'"),
    ]
    for args, message in cases:
        assert main(["import", *args, "--runs-dir", str(runs)]) == 2, args
        assert message in _one_error_line(capsys), args
    assert not runs.exists()


def test_bad_exports_are_one_line(mlp_checkpoints, tmp_path, capsys):
    paths, _ = mlp_checkpoints
    run = masklab.import_masks(paths[:1], "hidden-networks", keep=0.9, runs_dir=tmp_path / "runs")
    for args, message in [(["--mask", "3", "--format", "npz"], "has no mask 3"),
                          (["--mask", "0", "--format", "pickle"], "unknown export format"),
                          (["--mask", "0", "--format", "state-dict"], "no architecture for a state dict"),
                          (["--mask", "0", "--format", "torch-prune"], "no architecture")]:
        assert main(["export", str(run.path), *args, "--out", str(tmp_path / "x.out")]) == 2
        assert message in _one_error_line(capsys)
    assert not (tmp_path / "x.out").exists()
    assert main(["export", str(tmp_path / "nope"), "--mask", "0", "--format", "npz", "--out", "x"]) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize("command", ["import", "export"])
def test_help_names_the_formats(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "hidden-networks" in text and "npz" in text
