"""`masklab.export_mask(run, i, format, path)`, `masklab.plain_model` and the round trips import(export(x)) == x."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import masklab
from masklab.errors import StoreError, UserError
from masklab.keep import reference_keep_count
from masklab.nn.layers import MaskedLayer, masked_layers

TINY = {"width": 0.25, "epochs": 1, "masks": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """Runs trained by masklab: edge-popup and biprop mlps (sparsity 0.1: their rule needs another prune_rate),
    and a resnet18 with BatchNorm (width 0.1)."""
    root = tmp_path_factory.mktemp("runs")
    return {"edge-popup": masklab.generate(runs_dir=root, data=digits, sparsity=0.1, **TINY),
            "biprop": masklab.generate(runs_dir=root, data=digits, method="biprop", sparsity=0.5, **TINY),
            "resnet18": masklab.generate(runs_dir=root, data=digits, model="resnet18", width=0.1, epochs=1, masks=1,
                                         sparsity=0.3)}


def _x(run, digits):
    return next(iter(digits.test_batches(50)))[0]


def _weights(run, i):
    return [layer.weight.detach().numpy().copy() for _, layer in masked_layers(run.model(i))]


FORMATS = [("torch-prune", "pt"), ("hidden-networks", "pth"), ("npz", "npz")]


@pytest.mark.parametrize("kind", ["edge-popup", "biprop", "resnet18"])
@pytest.mark.parametrize("fmt,ext", FORMATS)
def test_import_of_an_export_gives_back_the_masks_and_weights(runs, kind, fmt, ext, tmp_path, digits):
    run = runs[kind]
    i = run.ids[-1]
    out = masklab.export_mask(run, i, fmt, tmp_path / f"mask.{ext}")
    back = masklab.import_masks([out], fmt, model=run.config.model, dataset="digits", width=run.config.width,
                                runs_dir=tmp_path / "runs")
    assert list(back.layers["layer"]) == list(run.layers["layer"])
    assert list(back.layers["n_keep"]) == list(run.layers["n_keep"])
    for a, b in zip(back.mask_layers(0), run.mask_layers(i)):
        assert np.array_equal(a, b)
    if fmt == "torch-prune" and run.config.method == "biprop":
        # torch-prune multiplies weight_orig by the mask: Biprop's weights travel as sign(W) * alpha, the function
        # is the same, the raw W is not carried
        assert back.config.method == "edge-popup"
    else:
        for a, b in zip(back.weights(0), _weights(run, i)):
            assert np.array_equal(a, b)
        assert back.config.method == run.config.method
    assert back.buffers(0) is None if run.buffers(i) is None else \
        all(np.array_equal(back.buffers(0)[k], v) for k, v in run.buffers(i).items())
    x = _x(run, digits)
    with torch.no_grad():
        assert torch.equal(back.model(0)(x), run.model(i)(x))
    assert back.table["test_acc"][0] == run.evaluate(i)[1]


def test_a_hidden_networks_export_is_selected_exactly_by_their_rule(runs, tmp_path, ref, digits):
    run = runs["edge-popup"]
    path = masklab.export_mask(run, 0, "hidden-networks", tmp_path / "m.pth")
    obj = torch.load(path, weights_only=True)
    keep = obj["prune_rate"]
    # masklab's sparsity 0.1 keeps n - int(0.1 n); their rule needs a prune_rate that keeps the same counts
    assert keep != 0.9
    assert [reference_keep_count(int(n), keep) for n in run.layers["n_bits"]] == list(run.layers["n_keep"])
    assert obj["arch"] is None and obj["masklab"]["run"] == run.id
    state = obj["state_dict"]
    assert list(state) == ["linear.0.weight", "linear.0.scores", "linear.2.weight", "linear.2.scores",
                           "linear.4.weight", "linear.4.scores"]
    for key, mask in zip(ref.FC_KEYS, run.mask_layers(0)):
        assert state[f"{key}.weight"].shape == (*mask.shape, 1, 1)
        assert np.array_equal(ref.get_subnet(state[f"{key}.scores"].abs(), keep).bool().reshape(mask.shape), mask)
    assert ref.accuracy(state, ref.FC_KEYS, keep, digits) == run.evaluate(0)[1]


def test_resnet_exports_use_their_names(runs, tmp_path):
    run = runs["resnet18"]
    path = masklab.export_mask(run, 0, "hidden-networks", tmp_path / "r.pth")
    state = torch.load(path, weights_only=True)["state_dict"]
    assert "layer2.0.shortcut.0.scores" in state and "layer4.1.conv2.weight" in state
    assert "layer1.0.bn1.running_mean" in state and "fc.weight" in state and state["fc.weight"].ndim == 4


@pytest.mark.parametrize("kind", ["edge-popup", "biprop", "resnet18"])
def test_the_state_dict_is_a_plain_model_that_computes_the_subnetwork(runs, kind, tmp_path, digits):
    run = runs[kind]
    path = masklab.export_mask(run, 0, "state-dict", tmp_path / "sd.pt")
    model = masklab.plain_model(run)
    assert not any(isinstance(m, MaskedLayer) for m in model.modules())
    assert all(type(m) in (nn.Linear, nn.Conv2d) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    x = _x(run, digits)
    with torch.no_grad():
        assert torch.equal(model(x), run.model(0)(x))
        assert torch.equal(masklab.plain_model(run, 0)(x), run.model(0)(x))
    for (name, _), mask in zip(masked_layers(run.model(0)), run.mask_layers(0)):
        assert torch.count_nonzero(model.get_parameter(f"{name}.weight")) == int(mask.sum())


@pytest.mark.parametrize("kind", ["edge-popup", "biprop", "resnet18"])
def test_torch_prune_applied_with_an_exported_mask_gives_the_same_outputs(runs, kind, tmp_path, digits):
    run = runs[kind]
    state = torch.load(masklab.export_mask(run, 0, "torch-prune", tmp_path / "tp.pt"), weights_only=True)
    model = masklab.plain_model(run)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            prune.custom_from_mask(module, "weight", state[f"{name}.weight_mask"])
    model.load_state_dict(state)
    model.eval()
    x = _x(run, digits)
    with torch.no_grad():
        assert torch.equal(model(x), run.model(0)(x))


def test_an_imported_run_exports_to_the_keys_it_came_with(mlp_checkpoints, tmp_path):
    paths, states = mlp_checkpoints
    run = masklab.import_masks(paths[1:2], "hidden-networks", keep=0.9, runs_dir=tmp_path / "runs")  # no model
    obj = torch.load(masklab.export_mask(run, 0, "hidden-networks", tmp_path / "back.pth"), weights_only=True)
    assert obj["prune_rate"] == 0.9 and obj["arch"] == "FC"
    for key in ("linear.0", "linear.2", "linear.4"):
        assert torch.equal(obj["state_dict"][f"{key}.weight"], states[1][f"{key}.weight"])
    back = masklab.import_masks([tmp_path / "back.pth"], "hidden-networks", runs_dir=tmp_path / "runs")
    assert np.array_equal(np.asarray(back.masks.bits), np.asarray(run.masks.bits))
    with pytest.raises(UserError, match="no architecture for a state dict"):
        masklab.export_mask(run, 0, "state-dict", tmp_path / "sd.pt")
    npz = masklab.export_mask(run, 0, "npz", tmp_path / "m.npz")
    again = masklab.import_masks([npz], "npz", runs_dir=tmp_path / "runs")
    assert np.array_equal(np.asarray(again.masks.bits), np.asarray(run.masks.bits))
    assert all(np.array_equal(a, b) for a, b in zip(again.weights(0), run.weights(0)))


def test_export_errors_are_one_line_and_write_nothing(runs, tmp_path):
    run = runs["edge-popup"]
    with pytest.raises(UserError, match="unknown export format 'onnx'"):
        masklab.export_mask(run, 0, "onnx", tmp_path / "x")
    with pytest.raises(StoreError, match="has no mask 9"):
        masklab.export_mask(run, 9, "npz", tmp_path / "x.npz")
    with pytest.raises(UserError, match="is a directory"):
        masklab.export_mask(run, 0, "npz", tmp_path)
    target = tmp_path / "elsewhere.npz"
    target.write_bytes(b"keep me")
    os.symlink(target, tmp_path / "link.npz")
    with pytest.raises(StoreError, match="symbolic link"):
        masklab.export_mask(run, 0, "npz", tmp_path / "link.npz")
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.npz", "link.npz"]


def test_export_into_a_run_directory_is_refused_and_the_runs_still_open(runs, tmp_path, capsys):
    """Issue 22, item 2: `export --out RUN/run.json` (or a mask file, of this run or another) replaced the file and
    the run no longer opened; now any output path inside a run directory is refused, whichever way it is named."""
    import shutil

    from masklab.cli import main

    source = runs["edge-popup"]
    copy = tmp_path / "runs" / source.id
    shutil.copytree(source.path, copy)
    other = runs["biprop"].path
    before = {p: p.read_bytes() for p in [*copy.rglob("*"), *other.rglob("*")] if p.is_file()}
    (tmp_path / "into").symlink_to(copy / "masks")
    targets = [copy / "run.json", copy / "masks" / "000001.mask", copy / "config.toml", other / "run.json",
               other / "masks" / "000000.json", copy / "new.pt", tmp_path / "into" / "000000.json"]
    for target in targets:
        assert main(["export", str(copy), "--mask", "0", "--format", "state-dict", "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is inside the run directory" in err[0], err
    assert {p: p.read_bytes() for p in before} == before
    assert not (copy / "new.pt").exists()
    masklab.open_run(copy).verify()
    assert len(masklab.open_run(copy)) == len(source)
