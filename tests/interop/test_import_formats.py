"""`masklab.import_masks` of torch.nn.utils.prune state and of .npz masks."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import masklab
from masklab.errors import UserError


def plain_mlp(seed: int, bias: bool = False) -> nn.Sequential:
    """masklab's mlp at width 0.25 on digits (64 -> 64 -> 64 -> 10), as a plain torch model with its layer names."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc1", nn.Linear(64, 64, bias=bias)),
                                      ("relu1", nn.ReLU()), ("fc2", nn.Linear(64, 64, bias=bias)),
                                      ("relu2", nn.ReLU()), ("fc3", nn.Linear(64, 10, bias=bias))]))


def pruned(seed: int, mask_seed: int, bias: bool = False, how: str = "random") -> nn.Sequential:
    model = plain_mlp(seed, bias)
    torch.manual_seed(mask_seed)
    layers = [model.fc1, model.fc2, model.fc3]
    if how == "global":
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=0.5)
    else:
        for m in layers:
            prune.random_unstructured(m, "weight", amount=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def pruned_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp")
    models, paths = [], []
    for i in range(2):
        model = pruned(0, 10 + i)
        state = model.state_dict()
        path = folder / f"pruned{i}.pt"
        torch.save(state if i == 0 else {"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
        models.append(model)
        paths.append(path)
    return models, paths


def test_pruned_models_import_with_their_masks_and_compute_the_same(pruned_files, tmp_path, digits):
    models, paths = pruned_files
    run = masklab.import_masks(paths, "torch-prune", sparsity=0.5, model="mlp", dataset="digits", width=0.25,
                               runs_dir=tmp_path)
    assert run.config.keep_rule == "masklab" and run.config.sparsity == 0.5
    assert run.imported["mapping"] == {"fc1": "fc1", "fc2": "fc2", "fc3": "fc3"}
    x = next(iter(digits.test_batches(100)))[0]
    for i, model in enumerate(models):
        for layer, name in zip(run.mask_layers(i), ["fc1", "fc2", "fc3"]):
            assert np.array_equal(layer, getattr(model, name).weight_mask.bool().numpy())
        with torch.no_grad():
            assert torch.equal(run.model(i)(x), model(x))
        assert run.table["test_acc"][i] == run.evaluate(i)[1]


def test_torch_prune_without_a_rule_keeps_the_stored_counts(tmp_path, digits):
    model = pruned(0, 3, how="global")  # global pruning: every layer keeps its own fraction
    torch.save(model.state_dict(), tmp_path / "global.pt")
    run = masklab.import_masks([tmp_path / "global.pt"], "torch-prune", model="mlp", dataset="digits", width=0.25,
                               runs_dir=tmp_path / "runs")
    counts = [int(m.weight_mask.sum()) for m in (model.fc1, model.fc2, model.fc3)]
    assert run.config.keep_rule == "stored" and list(run.layers["n_keep"]) == counts == run.imported["n_keep"]
    with pytest.raises(UserError, match=f"layer fc1 keeps {counts[0]} of 4096 weights, but masklab.s rule at "
                                        "--sparsity 0.3 keeps 2868"):
        masklab.import_masks([tmp_path / "global.pt"], "torch-prune", sparsity=0.3, runs_dir=tmp_path / "runs")
    with pytest.raises(UserError, match="different fractions of its layers"):
        masklab.export_mask(run, 0, "hidden-networks", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_biases_fit_a_masklab_model_only_when_zero(tmp_path):
    model = pruned(1, 2, bias=True)
    torch.save(model.state_dict(), tmp_path / "b.pt")
    with pytest.raises(UserError, match="non-zero bias fc1.bias"):
        masklab.import_masks([tmp_path / "b.pt"], "torch-prune", model="mlp", dataset="digits", width=0.25,
                             runs_dir=tmp_path / "runs")
    run = masklab.import_masks([tmp_path / "b.pt"], "torch-prune", runs_dir=tmp_path / "runs")  # bits only
    assert run.imported["sources"][0]["ignored_keys"] == 3
    with torch.no_grad():
        for m in (model.fc1, model.fc2, model.fc3):
            m.bias.zero_()
    torch.save(model.state_dict(), tmp_path / "zero.pt")
    masklab.import_masks([tmp_path / "zero.pt"], "torch-prune", model="mlp", dataset="digits", width=0.25,
                         runs_dir=tmp_path / "runs")


def test_a_state_dict_without_prune_state_is_refused(tmp_path, ref):
    torch.save(plain_mlp(0).state_dict(), tmp_path / "dense.pt")
    with pytest.raises(UserError, match="no `<module>.weight_orig`"):
        masklab.import_masks([tmp_path / "dense.pt"], "torch-prune", runs_dir=tmp_path / "runs")
    ref.hn_checkpoint(tmp_path / "hn.pth", ref.fc_weights([(4, 5)]), 0, keys=["linear.0"])
    with pytest.raises(UserError, match="use --format hidden-networks"):
        masklab.import_masks([tmp_path / "hn.pth"], "torch-prune", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_npz_masks_with_and_without_weights(tmp_path):
    rng = np.random.default_rng(0)
    masks = {"fc1": rng.random((64, 64)) < 0.5, "fc2": rng.random((64, 64)) < 0.5, "fc3": rng.random((10, 64)) < 0.5}
    np.savez(tmp_path / "bits.npz", **masks)
    run = masklab.import_masks([tmp_path / "bits.npz"], "npz", runs_dir=tmp_path / "runs")
    assert run.imported["weights"] == "none" and run.config.keep_rule == "stored"
    assert all(np.array_equal(a, masks[k]) for a, k in zip(run.mask_layers(0), masks))
    assert run.weights(0) is None
    with pytest.raises(UserError, match="holds masks but no weights"):
        masklab.import_masks([tmp_path / "bits.npz"], "npz", model="mlp", dataset="digits", width=0.25,
                             runs_dir=tmp_path / "runs")
    weights = {f"{k}.weight": rng.standard_normal(m.shape).astype(np.float32) for k, m in masks.items()}
    np.savez(tmp_path / "full.npz", **masks, **weights)
    full = masklab.import_masks([tmp_path / "full.npz"], "npz", model="mlp", dataset="digits", width=0.25,
                                runs_dir=tmp_path / "runs")
    assert all(np.array_equal(a, weights[f"{k}.weight"]) for a, k in zip(full.weights(0), masks))
    assert full.table["test_acc"].notna().all()


def test_npz_with_other_arrays_or_objects_is_refused(tmp_path):
    np.savez(tmp_path / "floats.npz", fc1=np.zeros((3, 4), np.float32))
    with pytest.raises(UserError, match="unexpected array 'fc1'"):
        masklab.import_masks([tmp_path / "floats.npz"], "npz", runs_dir=tmp_path / "runs")
    np.savez(tmp_path / "obj.npz", fc1=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="allow_pickle=False"):
        masklab.import_masks([tmp_path / "obj.npz"], "npz", runs_dir=tmp_path / "runs")
    np.savez(tmp_path / "a.npz", fc1=np.ones((3, 4), bool))
    np.savez(tmp_path / "b.npz", fc1=np.ones((3, 5), bool))
    with pytest.raises(UserError, match=r"layer fc1 has shape \(3, 5\), .*a\.npz \(3, 4\)"):
        masklab.import_masks([tmp_path / "a.npz", tmp_path / "b.npz"], "npz", runs_dir=tmp_path / "runs")
    m = np.ones((3, 4), bool)
    m2 = m.copy()
    m2[0, 0] = False
    np.savez(tmp_path / "c.npz", fc1=m2)
    with pytest.raises(UserError, match="keeps 11 weights in layer fc1, .* keeps 12"):
        masklab.import_masks([tmp_path / "a.npz", tmp_path / "c.npz"], "npz", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
