import numpy as np
import pytest
import torch

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.nn.stacked import stacked_layers
from masklab.train import make_model, train_mask
from masklab.train.recycling import rebuild_weights
from masklab.train.score_sgd import FusedScoreSGD
from masklab.train.stacked import make_stacked_model, score_optimizer
from masklab.train.trainer import train_masks


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
@pytest.mark.parametrize("fused", [False, True])
def test_one_step_scores_match_separate_optimisers(digits, method, fused):
    """Four stacked masks after two SGD steps equal four separate single-mask models, both through
    autograd + torch.optim.SGD and through the CPU trainer's FusedScoreSGD."""
    config = RunConfig(device="cpu", method=method)
    indices = [0, 1, 2, 3]
    stacked = make_stacked_model(config, digits, indices)
    layers = stacked_layers(stacked)
    if fused:
        opt = score_optimizer([l for _, l in layers], 0.1, 0.9, 1e-4, torch.device("cpu"))
        assert isinstance(opt, FusedScoreSGD)
    else:
        opt = torch.optim.SGD([l.scores for _, l in layers], lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = next(iter(digits.train_batches(64, 0, 0)))
    for _ in range(2):  # two steps so that momentum matters
        opt.zero_grad()
        logits = stacked(x)
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.expand(4, -1), reduction="none").mean(1) \
            .sum().backward()
        opt.step()
    for k, i in enumerate(indices):
        model = make_model(config, digits, config.seeds(i)[1])
        params = [p for p in model.parameters() if p.requires_grad]
        o = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
        for _ in range(2):
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            o.step()
        for p, (_, layer) in zip(params, layers):
            assert torch.allclose(p, layer.scores[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw", [{}, {"method": "biprop"}, {"vary_data_seed": True}])
def test_full_stacked_run_equals_separate_runs_exactly(digits, kw):
    config = RunConfig(device="cpu", epochs=5, **kw)
    stacked = train_masks(config, [0, 1, 2, 3], dataset=digits)
    for result in stacked:
        alone = train_mask(config, result.index, dataset=digits)
        assert (result.score_seed, result.data_seed) == (alone.score_seed, alone.data_seed)
        assert [int(m.sum()) for m in result.masks] == result.n_keep == alone.n_keep
        assert all(np.array_equal(a, b) for a, b in zip(result.masks, alone.masks))
        assert all(np.array_equal(a, b) for a, b in zip(result.scores, alone.scores))
        assert result.metrics == {**alone.metrics, "seconds": result.metrics["seconds"]}


@pytest.mark.parametrize("recycle", ["iwr", "iterand"])
def test_recycling_inside_a_stack_is_per_mask_and_rebuildable(digits, recycle, monkeypatch):
    import masklab.train.trainer as trainer

    config = RunConfig(device="cpu", epochs=4, recycle=recycle, recycle_every=1, width=0.5)
    finals = {}
    original = trainer._recycle

    def spy(cfg, layers, maps, t):  # the stack's weights after each recycling
        out = original(cfg, layers, maps, t)
        finals["w"] = [[layer.weight_of(k).detach().clone() for _, layer in layers] for k in range(layers[0][1].K)]
        return out

    monkeypatch.setattr(trainer, "_recycle", spy)
    results = train_masks(config, [0, 1, 2], dataset=digits)
    monkeypatch.undo()
    key = "src" if recycle == "iwr" else "draw"
    maps = [getattr(r, key) for r in results]
    assert not all(np.array_equal(maps[0][0], m[0]) for m in maps[1:])  # each mask recycles its own weights
    for result in results:
        alone = train_mask(config, result.index, dataset=digits)
        assert all(np.array_equal(a, b) for a, b in zip(getattr(result, key), getattr(alone, key)))
    # the stack's final weights are exactly what the maps rebuild from the seed
    for k, result in enumerate(results):
        for i, shape in enumerate(result.layer_shapes):
            w = rebuild_weights(shape, i, 0, config.resolved("weight_init"), config.resolved("scale_fan"),
                                config.keep, **{key: torch.as_tensor(getattr(result, key)[i])})
            assert torch.equal(w, finals["w"][k][i])


def test_stacked_final_metrics_are_exactly_the_rebuilt_subnetworks():
    """BatchNorm statistics are kept per mask and the recorded figures are the rebuilt model's own."""
    from masklab.train.evaluate import evaluate
    from masklab.train.rebuild import rebuild_trained

    data = load_dataset("synthetic", input_shape=(3, 8, 8))
    config = RunConfig(device="cpu", dataset="synthetic", input_shape="3x8x8", model="resnet18", width=0.125, epochs=2,
                       batch_size=256)
    results = train_masks(config, [0, 1], dataset=data)
    assert results[0].buffers and not np.array_equal(results[0].buffers["bn1.running_mean"],
                                                     results[1].buffers["bn1.running_mean"])
    for result in results:
        loss, acc = evaluate(rebuild_trained(config, data, result), data)
        assert (loss, acc) == (result.metrics["test_loss"], result.metrics["test_acc"])


def test_generate_with_a_stack_rebuilds_recorded_figures(tmp_path, digits):
    import masklab

    run = masklab.generate(runs_dir=tmp_path, data=digits, device="cpu", masks=3, epochs=2, width=0.25, stack=2,
                           method="biprop", recycle="iwr", recycle_every=1)
    assert run.table["mask_id"].tolist() == [0, 1, 2]
    for i in run.ids:
        assert run.evaluate(i, data=digits) == (run.record(i)["test_loss"], run.record(i)["test_acc"])


def test_cuda_stack_size_follows_free_memory_and_counts_each_weight_once(monkeypatch):
    """`--stack auto` on CUDA (mem_get_info patched): K = free / 4 / (bytes per mask), where a mask costs 6
    float32 per prunable weight and 3 per activation of each sample. Conv-4 on CIFAR-shaped input has
    2,425,024 weights and 427,018 activations per sample (64x32x32 x 4, 64x16x16, 128x16x16 x 4, 128x8x8 x 2,
    256 x 4, 10): 24 x 2,425,024 + 4 x 128 x 3 x 427,018 = 714,100,224 bytes, so 30 masks fit a quarter of
    80 GiB and 15 of 40 GiB (counting the scores as weights too gave 27 and 13)."""
    from types import SimpleNamespace

    from masklab.train.stacked import auto_stack, stack_memory

    config = RunConfig(device="cpu", dataset="synthetic", model="conv4", batch_size=128)
    cifar = SimpleNamespace(input_shape=(3, 32, 32), n_classes=10)
    assert stack_memory(config, cifar) == 24 * 2_425_024 + 4 * 128 * 3 * 427_018 == 714_100_224
    cuda = torch.device("cuda")
    for gib, expected in ((80, 30), (40, 15), (1, 1)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, gib=gib: (gib << 30, 80 << 30))
        assert auto_stack(config, cifar, cuda, 64) == expected
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 50, 1 << 50))
    assert auto_stack(config, cifar, cuda, 64) == 32  # the cap
    assert auto_stack(config, cifar, cuda, 5) == 5  # the masks left
