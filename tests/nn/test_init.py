import math

import pytest
import torch

from masklab.nn import build_model, init_model, masked_layers
from masklab.nn.init import fan_in, init_scores, init_weight


@pytest.mark.parametrize("shape", [(256, 64), (64, 3, 3, 3), (10, 100)])
def test_signed_constant_magnitude(shape):
    w = init_weight(shape, "signed-constant")
    std = math.sqrt(2 / fan_in(shape))
    assert torch.allclose(w.abs(), torch.full(shape, std))
    assert 0.3 < (w > 0).float().mean() < 0.7  # both signs present, roughly balanced


def test_fan_scaling_by_keep():
    shape = (128, 64, 3, 3)
    keep = 0.25
    w = init_weight(shape, "signed-constant", keep=keep, scale_fan=True)
    assert torch.allclose(w.abs(), torch.full(shape, math.sqrt(2 / (64 * 9 * keep))))
    u = init_weight(shape, "unsigned-constant", keep=keep, scale_fan=True)
    assert (u > 0).all() and torch.allclose(u, torch.full(shape, math.sqrt(2 / (64 * 9 * keep))))
    n = init_weight(shape, "kaiming-normal", keep=keep, scale_fan=True)
    assert n.std().item() == pytest.approx(math.sqrt(2 / (64 * 9 * keep)), rel=0.02)


def test_kaiming_normal_std():
    w = init_weight((512, 512), "kaiming-normal")
    assert w.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    assert w.mean().abs().item() < 0.01 * math.sqrt(2 / 512) * 10


def test_score_init_range_is_kaiming_uniform_a_sqrt5():
    shape = (300, 784)
    s = init_scores(shape)
    bound = 1 / math.sqrt(784)
    assert s.abs().max().item() <= bound
    assert s.abs().max().item() > 0.99 * bound  # fills the range
    # the same as torch's own kaiming_uniform_(a=sqrt(5)) bound
    ref = torch.empty(shape)
    torch.nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert ref.abs().max().item() <= bound + 1e-7


def test_weight_and_score_seeds_are_independent():
    def layers(ws, ss):
        m = init_model(build_model("mlp", (1, 8, 8), 10), ws, ss, "kaiming-normal")
        return [(l.weight.clone(), l.scores.clone()) for _, l in masked_layers(m)]

    a, b, c = layers(0, 0), layers(0, 1), layers(1, 0)
    for (wa, sa), (wb, sb), (wc, sc) in zip(a, b, c):
        assert torch.equal(wa, wb) and not torch.equal(sa, sb)  # score seed changes only scores
        assert torch.equal(sa, sc) and not torch.equal(wa, wc)  # weight seed changes only weights
