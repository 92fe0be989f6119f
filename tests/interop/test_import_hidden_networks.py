"""`masklab.import_masks(..., format="hidden-networks")`: their key layout, their keep rule exactly, their
forward pass's accuracy, Biprop's rate and gain, weights that must be shared."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import masklab
from masklab.errors import UserError
from masklab.keep import n_keep, reference_keep_count
from masklab.nn.layers import masked_layers
from masklab.store.run import Run

FASHION = Path("/usr/share/datasets/fashion-mnist")
MLP_SIZES = [(64, 64), (64, 64), (10, 64)]  # masklab's mlp at width 0.25 on digits


@pytest.fixture(scope="module")
def imported(mlp_checkpoints, tmp_path_factory, digits):
    paths, _ = mlp_checkpoints
    return masklab.import_masks(paths, "hidden-networks", keep=0.9, model="mlp", dataset="digits", width=0.25,
                                runs_dir=tmp_path_factory.mktemp("runs"))


def test_their_rule_keeps_one_more_weight_than_masklabs_at_keep_0_9():
    assert reference_keep_count(1000, 0.9) == 901
    assert n_keep(1000, 0.1) == 900
    assert reference_keep_count(640, 0.9) == 577 and n_keep(640, 0.1) == 576


def test_each_mask_is_their_top_k_layer_by_layer(imported, mlp_checkpoints, ref):
    _, states = mlp_checkpoints
    assert imported.ids == [0, 1, 2]
    for i, state in enumerate(states):
        for layer, key in zip(imported.mask_layers(i), ref.FC_KEYS):
            theirs = ref.get_subnet(state[f"{key}.scores"].abs(), 0.9).bool().reshape(layer.shape).numpy()
            assert np.array_equal(layer, theirs), (i, key)
    # the last layer (640 weights) keeps 577 under their rule, where masklab's sparsity 0.1 keeps 576
    assert list(imported.layers["n_keep"]) == [3687, 3687, 577]
    assert imported.config.keep_rule == "reference" and imported.config.keep_fraction == 0.9


def test_the_run_records_the_rule_the_sources_and_the_mapping(imported, mlp_checkpoints):
    paths, _ = mlp_checkpoints
    section = imported.imported
    assert section["format"] == "hidden-networks" and section["method"] == "edge-popup"
    assert section["keep_rule"] == "reference" and section["keep_fraction"] == 0.9
    assert section["mapping"] == {"linear.0": "fc1", "linear.2": "fc2", "linear.4": "fc3"}
    assert section["weights"] == "shared" and "weights.npy" in imported.meta["files"]
    assert [s["sha256"] for s in section["sources"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert [s["prefix"] for s in section["sources"]] == ["", "module.", ""]
    assert section["sources"][0]["reported"]["best_acc1"] == 83.25 and section["sources"][0]["reported"]["epoch"] == 20
    assert imported.config.imported == section["digest"]
    assert list(imported.layers["layer"]) == ["fc1", "fc2", "fc3"]


def test_metrics_are_measured_and_equal_the_rebuilt_and_the_reference_forward(imported, mlp_checkpoints, ref,
                                                                                 digits):
    _, states = mlp_checkpoints
    table = imported.table
    assert {"test_acc", "best_test_acc", "test_loss", "seconds"} <= set(table.columns)
    for i, state in enumerate(states):
        loss, acc = imported.evaluate(i)
        assert acc == table["test_acc"][i] and loss == table["test_loss"][i]
        assert acc == ref.accuracy(state, ref.FC_KEYS, 0.9, digits)
        x = next(iter(digits.test_batches(64)))[0]
        theirs = ref.forward(state, ref.FC_KEYS, 0.9, x)
        torch.testing.assert_close(imported.model(i)(x), theirs, rtol=1e-5, atol=1e-6)


def test_the_stored_weights_rebuild_the_imported_subnetwork(imported, mlp_checkpoints):
    _, states = mlp_checkpoints
    for i in imported.ids:
        for (_, layer), key, stored in zip(masked_layers(imported.model(i)), ["linear.0", "linear.2", "linear.4"],
                                           imported.weights(i)):
            theirs = states[i][f"{key}.weight"].reshape(layer.weight.shape)
            assert torch.equal(layer.weight, theirs) and np.array_equal(stored, theirs.numpy())
    assert not imported.per_mask_weights


def test_scores_are_kept_for_score_paths_and_interpolation_works(imported):
    assert imported.has_extra(0, "scores")
    curve = masklab.interpolate(imported, 0, 1, points=3)
    assert len(curve) == 3 and curve["acc"].notna().all()
    assert curve["acc"].iloc[0] == pytest.approx(imported.table["test_acc"][0])


def test_importing_the_same_files_again_finds_the_same_run(imported, mlp_checkpoints):
    paths, _ = mlp_checkpoints
    again = masklab.import_masks(paths, "hidden-networks", keep=0.9, model="mlp", dataset="digits", width=0.25,
                                 runs_dir=imported.path.parent)
    assert again.path == imported.path and again.ids == [0, 1, 2]
    other = masklab.import_masks(paths[:2], "hidden-networks", keep=0.9, model="mlp", dataset="digits", width=0.25,
                                 runs_dir=imported.path.parent)
    assert other.id != imported.id and other.id.startswith("import-hidden-networks-mlp-")


def test_without_a_model_the_bits_are_imported_for_the_analyses(mlp_checkpoints, imported, tmp_path):
    paths, _ = mlp_checkpoints
    run = masklab.import_masks(paths, "hidden-networks", keep=0.9, runs_dir=tmp_path)
    assert list(run.layers["layer"]) == ["linear.0", "linear.2", "linear.4"]
    assert [tuple(s) for s in run.layers["shape"]] == [(64, 64, 1, 1), (64, 64, 1, 1), (10, 64, 1, 1)]
    assert run.table["test_acc"].isna().all() and run.table["test_loss"].isna().all()
    assert np.array_equal(np.asarray(run.masks.bits), np.asarray(imported.masks.bits))
    assert len(masklab.distances(run.masks)) > 0
    with pytest.raises(UserError, match="without --model and --dataset"):
        run.model(0)
    assert Run(run.path).imported["mapping"] == {k: k for k in ["linear.0", "linear.2", "linear.4"]}


def test_a_layer_of_1000_weights_keeps_901_at_keep_0_9_and_the_run_opens(tmp_path, ref):
    weights = ref.fc_weights([(10, 100), (10, 10)])
    ref.hn_checkpoint(tmp_path / "a.pth", weights, 0, keys=["linear.0", "linear.2"])
    run = masklab.import_masks([tmp_path / "a.pth"], "hidden-networks", keep=0.9, runs_dir=tmp_path / "runs")
    assert list(run.layers["n_keep"]) == [901, 91]
    assert int(run.mask_layers(0)[0].sum()) == 901
    Run(run.path).verify()  # integrity: the reference counts are the rule of this run


def test_ties_are_broken_by_index(tmp_path, ref):
    scores = [torch.zeros(4, 5, 1, 1), torch.ones(3, 4, 1, 1)]
    scores[0].view(-1)[:3] = 1.0  # 3 clear winners, 17 tied at 0 of which 7 more are kept at keep 0.5
    ref.hn_checkpoint(tmp_path / "t.pth", ref.fc_weights([(4, 5), (3, 4)]), 0, keys=["linear.0", "linear.2"],
                      scores=scores)
    run = masklab.import_masks([tmp_path / "t.pth"], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")
    first = run.mask_layers(0)[0].reshape(-1)
    # stable ascending sort: among the tied zeros, the lower indices are pruned first, the higher ones kept
    assert first.tolist() == [True] * 3 + [False] * 10 + [True] * 7
    assert "stable" in run.imported["tie_break"]


def test_biprop_checkpoints_give_their_rate_method_and_gain(tmp_path, ref, digits):
    weights = ref.fc_weights(MLP_SIZES, seed=3, signed=False)
    states = [ref.hn_checkpoint(tmp_path / f"b{i}.pth", weights, i, extra=ref.biprop_extra(0.9, in_args=(i == 1)))
              for i in range(2)]
    run = masklab.import_masks([tmp_path / "b0.pth", tmp_path / "b1.pth"], "hidden-networks", model="mlp",
                               dataset="digits", width=0.25, runs_dir=tmp_path / "runs")
    assert run.config.method == "biprop" and run.config.keep_fraction == 0.9
    assert "Biprop" in run.imported["method_from"]
    assert run.imported["gain_counts"] == [int(0.9 * n) for n in (4096, 4096, 640)]
    assert run.imported["sources"][1]["reported"]["seed"] == 7
    for i, state in enumerate(states):
        assert run.table["test_acc"][i] == ref.accuracy(state, ref.FC_KEYS, 0.9, digits, biprop=True)
        x = next(iter(digits.test_batches(32)))[0]
        torch.testing.assert_close(run.model(i)(x), ref.forward(state, ref.FC_KEYS, 0.9, x, biprop=True),
                                   rtol=1e-5, atol=1e-6)
        assert run.record(i)["alphas"] is not None
    with pytest.raises(UserError, match="trained at keep 0.9"):
        masklab.import_masks([tmp_path / "b0.pth"], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")


def test_a_checkpoint_without_its_rate_needs_keep(mlp_checkpoints, tmp_path):
    paths, _ = mlp_checkpoints
    with pytest.raises(UserError, match="pass --keep K"):
        masklab.import_masks(paths[:1], "hidden-networks", runs_dir=tmp_path)
    run = masklab.import_masks(paths[:1], "hidden-networks", sparsity=0.1, runs_dir=tmp_path)
    assert run.config.keep_fraction == 0.9  # --sparsity S is their keep 1 - S


def test_global_pruning_and_missing_scores_are_refused(tmp_path, ref):
    ref.hn_checkpoint(tmp_path / "g.pth", ref.fc_weights([(4, 5)]), 0, keys=["linear.0"],
                      extra={"conv_type": "GlobalSubnetConv", "prune_rate": 0.5})
    with pytest.raises(UserError, match="GlobalSubnetConv"):
        masklab.import_masks([tmp_path / "g.pth"], "hidden-networks", runs_dir=tmp_path / "runs")
    torch.save({"state_dict": {"fc.weight": torch.ones(3, 4)}}, tmp_path / "dense.pth")
    with pytest.raises(UserError, match="no `<layer>.scores`"):
        masklab.import_masks([tmp_path / "dense.pth"], "hidden-networks", keep=0.5, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_files_with_other_weights_are_refused_unless_allowed(mlp_checkpoints, tmp_path, ref, digits):
    paths, _ = mlp_checkpoints
    other = ref.hn_checkpoint(tmp_path / "other.pth", ref.fc_weights(MLP_SIZES, seed=9), 5)
    with pytest.raises(UserError, match=r"other\.pth has other weights than .*mask0\.pth \(first in layer linear\.0\)"):
        masklab.import_masks([paths[0], tmp_path / "other.pth"], "hidden-networks", keep=0.9, runs_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    run = masklab.import_masks([paths[0], tmp_path / "other.pth"], "hidden-networks", keep=0.9, model="mlp",
                               dataset="digits", width=0.25, runs_dir=tmp_path / "r", allow_different_weights=True)
    assert run.imported["weights"] == "per-mask" and run.per_mask_weights
    assert run.imported["different_weights"]["layer"] == "linear.0"
    assert "weights.npy" not in run.meta.get("files", {}) and run.has_extra(1, "weights")
    w = [layer.weight for _, layer in masked_layers(run.model(1))]
    assert torch.equal(w[0], other["linear.0.weight"].reshape(64, 64))
    assert run.table["test_acc"][1] == ref.accuracy(other, ref.FC_KEYS, 0.9, digits)


def test_layers_that_do_not_fit_the_model_name_the_first_one(mlp_checkpoints, tmp_path):
    paths, _ = mlp_checkpoints
    with pytest.raises(UserError, match=r"layer linear\.0 \(64, 64, 1, 1\) does not fit model mlp \(width 1\) on "
                                        r"digits, whose layer 1 fc1 is \(256, 64\)"):
        masklab.import_masks(paths, "hidden-networks", keep=0.9, model="mlp", dataset="digits", runs_dir=tmp_path)
    with pytest.raises(UserError, match="does not fit model conv2"):
        masklab.import_masks(paths, "hidden-networks", keep=0.9, model="conv2", dataset="digits", runs_dir=tmp_path)
    with pytest.raises(UserError, match="--model and --dataset together"):
        masklab.import_masks(paths, "hidden-networks", keep=0.9, model="mlp", runs_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed at /usr/share/datasets/fashion-mnist")
def test_a_hidden_networks_fc_checkpoint_on_fashion_mnist_is_lenet_300_100(tmp_path, ref):
    from masklab.data import load_dataset

    data = load_dataset("fashion-mnist")
    weights = ref.fc_weights([(300, 784), (100, 300), (10, 100)], seed=5)
    state = ref.hn_checkpoint(tmp_path / "fc.pth", weights, 0, module=True)
    run = masklab.import_masks([tmp_path / "fc.pth"], "hidden-networks", keep=0.5, model="lenet-300-100",
                               dataset="fashion-mnist", runs_dir=tmp_path / "runs")
    assert run.imported["mapping"] == {"linear.0": "fc1", "linear.2": "fc2", "linear.4": "fc3"}
    assert run.table["test_acc"][0] == ref.accuracy(state, ref.FC_KEYS, 0.5, data)
    assert run.evaluate(0)[1] == run.table["test_acc"][0]


def test_list_runs_and_analyze_take_imports_without_a_model(mlp_checkpoints, tmp_path):
    paths, _ = mlp_checkpoints
    run = masklab.import_masks(paths, "hidden-networks", keep=0.9, runs_dir=tmp_path / "runs")
    listed = masklab.list_runs(tmp_path / "runs")
    assert listed["run_id"].tolist() == [run.id] and listed["error"].isna().all()
    report = masklab.analyze(run, figures_dir=tmp_path / "figures", embedding=False, formats=("png",))
    assert "distances" in report.tables and "barriers" not in report.tables  # no architecture: no interpolation
