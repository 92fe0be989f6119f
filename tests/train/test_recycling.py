import numpy as np
import pytest
import torch

from masklab.config import RunConfig
from masklab.nn import MaskedLinear, build_model, init_model, masked_layers
from masklab.nn.init import init_scores, init_weight
from masklab.train import trainer as trainer_module
from masklab.train.recycling import iterand_step, iwr_step, rebuild_weights, recycles_after


def layer_with(n_out=10, n_in=20, sparsity=0.5, seed=0):
    layer = MaskedLinear(n_in, n_out, "edge-popup", sparsity)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(init_weight((n_out, n_in), "kaiming-normal", gen=g))
        layer.scores.copy_(init_scores((n_out, n_in), g))
    return layer


@pytest.mark.parametrize("donors", ["top", "next"])
def test_iwr_copies_in_rank_order_and_nothing_else(donors):
    layer = layer_with()
    w0, s0 = layer.weight.detach().clone().reshape(-1), layer.scores.detach().clone()
    n, rate = w0.numel(), 0.1
    src = torch.arange(n)
    r = iwr_step(layer, src, rate, donors)
    assert r == int(rate * n) == 20
    order = torch.argsort(s0.abs().reshape(-1))  # scores are distinct here, so no tie question
    low = order[:r]
    high = order[n - r:] if donors == "top" else order[r:2 * r]
    w1 = layer.weight.detach().reshape(-1)
    for i in range(r):  # the i-th lowest receives the i-th of the donor block (ascending)
        assert w1[low[i]] == w0[high[i]]
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[low] = False
    assert torch.equal(w1[untouched], w0[untouched])
    assert torch.equal(layer.scores.detach(), s0)  # scores unchanged
    assert torch.equal(w0[src], w1)  # the source map rebuilds the weights


def test_recycling_schedule_matches_reference():
    # epochs from 0; every 3, warmup 0, 20 epochs: after epochs 3, 6, ..., 18 (19 is the last)
    assert [e for e in range(20) if recycles_after(e, 20, 3, 0)] == [3, 6, 9, 12, 15, 18]
    assert [e for e in range(21) if recycles_after(e, 21, 10, 0)] == [10]
    assert [e for e in range(20) if recycles_after(e, 20, 10, 0)] == [10]
    assert [e for e in range(200) if recycles_after(e, 200, 10, 50)][:2] == [60, 70]
    assert [e for e in range(4) if recycles_after(e, 4, 1, 0)] == [1, 2]


def test_iterand_touches_only_pruned_positions():
    layer = layer_with(sparsity=0.7)
    mask = layer.mask().clone()
    w0 = layer.weight.detach().clone()
    draw = torch.zeros(w0.numel(), dtype=torch.int32)
    count = iterand_step(layer, draw, 0.5, 0, weight_seed=3, t=1, weight_init="kaiming-normal",
                         scale_fan=False, keep=0.3)
    changed = layer.weight.detach() != w0
    assert count == int(changed.sum()) > 0
    assert not (changed & mask).any()  # kept weights untouched
    assert 0.3 < count / int((~mask).sum()) < 0.7  # about `rate` of the pruned ones
    assert torch.equal(draw.view_as(mask) == 1, changed)


def trained_config(**kw):
    return RunConfig(device="cpu", epochs=5, width=0.25, **kw)


@pytest.mark.parametrize("recycle,extra", [("iwr", {"recycle_every": 1}), ("iterand", {})])
def test_final_weights_rebuild_exactly_from_seed(recycle, extra, monkeypatch):
    config = trained_config(recycle=recycle, **extra)
    finals = {}
    original = trainer_module._recycle

    def spy(cfg, layers, maps, t):
        out = original(cfg, layers, maps, t)
        finals["w"] = [layer.weight_of(0).detach().clone() for _, layer in layers]
        return out

    monkeypatch.setattr(trainer_module, "_recycle", spy)
    result = trainer_module.train_mask(config, 0)
    assert result.metrics["recycled"] == 3  # after epochs 1, 2, 3 of 5
    maps = result.src if recycle == "iwr" else result.draw
    identity = [np.arange(len(m)) if recycle == "iwr" else 0 for m in maps]
    assert any((m != ident).any() for m, ident in zip(maps, identity))  # something was recycled
    for i, shape in enumerate(result.layer_shapes):
        kw = {"src": torch.as_tensor(maps[i])} if recycle == "iwr" else {"draw": torch.as_tensor(maps[i])}
        rebuilt = rebuild_weights(shape, i, config.weight_seed, config.resolved("weight_init"),
                                  config.resolved("scale_fan"), config.keep, **kw)
        assert torch.equal(rebuilt, finals["w"][i])


def test_rebuild_without_maps_is_the_initial_model():
    config = trained_config(method="biprop")
    model = init_model(build_model("mlp", (1, 8, 8), 10, 0.25, "biprop"), 0, 0, "kaiming-normal", True, 0.5)
    for i, (_, layer) in enumerate(masked_layers(model)):
        w = rebuild_weights(tuple(layer.weight.shape), i, 0, config.resolved("weight_init"),
                            config.resolved("scale_fan"), config.keep)
        assert torch.equal(w, layer.weight.detach())
