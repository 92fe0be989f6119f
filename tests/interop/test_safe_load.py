"""Checkpoints load with torch.load(weights_only=True) and a short list of extra types; anything else is refused
and nothing in it runs."""

from __future__ import annotations

import argparse
import os
import pickle

import numpy as np
import pytest
import torch

import masklab
from masklab.cli import main
from masklab.errors import UserError
from masklab.interop.checkpoint import load_torch, safe_globals


class Planted:
    """What a malicious checkpoint holds: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker, legacy: bool = False):
    obj = {"epoch": 1, "arch": "FC", "state_dict": {"linear.0.weight": torch.ones(2, 3, 1, 1),
                                                   "linear.0.scores": torch.ones(2, 3, 1, 1)},
           "best_acc1": Planted(marker)}
    if legacy:  # a plain pickle (torch.load reads those too): protocol 2 as torch's legacy format, or the default
        path.write_bytes(pickle.dumps(obj, protocol=2 if legacy == 2 else pickle.DEFAULT_PROTOCOL))
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("legacy", [False, 2, True])
@pytest.mark.parametrize("fmt", ["hidden-networks", "torch-prune"])
def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path, capsys, legacy, fmt):
    marker = tmp_path / "PWNED"
    _plant(tmp_path / "evil.pth", marker, legacy)
    code = main(["import", str(tmp_path / "evil.pth"), "--format", fmt, "--keep", "0.5", "--runs-dir",
                 str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "is not a safe checkpoint" in err and "weights_only=True" in err
    if legacy is False:  # (a plain pickle is refused at its first frame or at whatever global comes first)
        assert "(it names posix.system)" in err
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def test_a_pickled_module_is_refused_with_a_hint(tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"it names torch\.nn\.modules\.linear\.Linear.*save `model\.state_dict\(\)`"):
        load_torch(tmp_path / "model.pt", (tmp_path / "model.pt").read_bytes())


def test_numpy_scalars_namespaces_and_paths_load(tmp_path):
    import pathlib

    obj = {"epoch": np.int64(3), "best_acc1": np.float64(91.5), "x": np.float32(1.5), "flag": np.bool_(True),
           "args": argparse.Namespace(prune_rate=0.5, ckpt=pathlib.PosixPath("/a/b"), layers=[1, 2]),
           "state_dict": {"w": torch.zeros(2)}}
    torch.save(obj, tmp_path / "ok.pth")
    loaded = load_torch(tmp_path / "ok.pth", (tmp_path / "ok.pth").read_bytes())
    assert loaded["epoch"] == 3 and loaded["best_acc1"] == 91.5 and loaded["args"].prune_rate == 0.5
    assert loaded["args"].ckpt == pathlib.PosixPath("/a/b")
    names = {g if isinstance(g, type) else g[1] if isinstance(g, tuple) else g for g in safe_globals()}
    assert argparse.Namespace in names and "numpy._core.multiarray.scalar" in names
    assert len(safe_globals()) < 25


def test_truncated_or_foreign_files_are_one_line_errors(tmp_path, ref):
    ref.hn_checkpoint(tmp_path / "a.pth", ref.fc_weights([(4, 5)]), 0, keys=["linear.0"])
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pth is not a torch checkpoint"):
        masklab.import_masks([tmp_path / "cut.pth"], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")
    with pytest.raises(UserError, match="does not exist"):
        masklab.import_masks([tmp_path / "nope.pth"], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")
    with pytest.raises(UserError, match="not a regular file"):
        masklab.import_masks([tmp_path], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds a list, not a hidden-networks checkpoint"):
        masklab.import_masks([tmp_path / "list.pth"], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
