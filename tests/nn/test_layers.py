import pytest
import torch
import torch.nn.functional as F

from masklab.nn import MaskedConv2d, MaskedLinear, init_model, masked_layers
from masklab.nn import select as select_module
from masklab.nn.init import init_scores, init_weight
from masklab.nn.models import build_model


def make_layer(cls, method, sparsity=0.5, seed=0, **kw):
    layer = cls(**kw, method=method, sparsity=sparsity)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(init_weight(shape, "kaiming-normal", gen=g))
        if layer.scores is not None:
            layer.scores.copy_(init_scores(shape, g))
    return layer


def grad_of_effective_weight(layer, x):
    """dL/dW_eff for the layer's current mask, from a plain functional computation."""
    w_eff = layer.effective_weight().detach().requires_grad_(True)
    if isinstance(layer, MaskedLinear):
        out = F.linear(x, w_eff)
    else:
        out = F.conv2d(x, w_eff, None, layer.stride, layer.padding)
    (out.sin().sum()).backward()
    return w_eff.grad


@pytest.mark.parametrize("cls,kw,x_shape", [
    (MaskedLinear, {"in_features": 20, "out_features": 7}, (5, 20)),
    (MaskedConv2d, {"in_channels": 3, "out_channels": 4}, (2, 3, 6, 6)),
])
def test_edge_popup_forward_and_straight_through_gradient(cls, kw, x_shape):
    layer = make_layer(cls, "edge-popup", sparsity=0.6, **kw)
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(1))
    mask = layer.mask()
    assert int(mask.sum()) == layer.n_keep
    w_eff = layer.effective_weight()
    assert torch.equal(w_eff, layer.weight * mask)
    out = layer(x)
    out.sin().sum().backward()
    g = grad_of_effective_weight(layer, x)
    # d|s| = dL/dW_eff * W for every weight (kept or not); autograd then passes it through abs.
    expected = g * layer.weight.detach() * torch.sign(layer.scores.detach())
    assert torch.allclose(layer.scores.grad, expected, atol=1e-6)
    assert layer.weight.grad is None  # frozen


@pytest.mark.parametrize("cls,kw,x_shape", [
    (MaskedLinear, {"in_features": 30, "out_features": 9}, (4, 30)),
    (MaskedConv2d, {"in_channels": 2, "out_channels": 5}, (3, 2, 5, 5)),
])
def test_biprop_alpha_ternary_and_gradient(cls, kw, x_shape):
    layer = make_layer(cls, "biprop", sparsity=0.7, **kw)
    mask = layer.mask()
    w = layer.weight.detach()
    alpha = w.abs()[mask].mean()
    assert torch.allclose(layer.alpha(), alpha)
    w_eff = layer.effective_weight()
    a = layer.alpha().item()
    assert set(torch.unique(w_eff).tolist()) == {-a, 0.0, a}  # ternary, one gain per layer
    assert torch.equal(w_eff == 0, ~mask)
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(2))
    layer(x).sin().sum().backward()
    g = grad_of_effective_weight(layer, x)
    # incoming gradient (dL/dW_eff * sign W) times |W|, alpha constant, then through abs to s
    expected = g * torch.sign(w) * w.abs() * torch.sign(layer.scores.detach())
    assert torch.allclose(layer.scores.grad, expected, atol=1e-6)


def test_dense_trains_weights_and_has_no_scores():
    layer = make_layer(MaskedLinear, "dense", in_features=4, out_features=3)
    assert layer.scores is None and layer.weight.requires_grad and layer.mask().all()
    layer(torch.randn(2, 4)).sum().backward()
    assert layer.weight.grad is not None


def test_mask_is_computed_once_for_evaluation(monkeypatch):
    model = init_model(build_model("mlp", (1, 8, 8), 10), 0, 0, "signed-constant")
    calls = []
    original = select_module.topk_mask
    import masklab.nn.layers as layers_module
    monkeypatch.setattr(layers_module, "topk_mask", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    model.eval()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 1, 8, 8))
    assert len(calls) == 3  # once per layer, not once per batch
    with torch.no_grad():  # a change of the scores invalidates the cache
        masked_layers(model)[0][1].scores.mul_(-1.5)
        model(torch.randn(4, 1, 8, 8))
    assert len(calls) == 4


def test_cached_eval_matches_training_forward():
    model = init_model(build_model("mlp", (1, 8, 8), 10, method="biprop"), 0, 0, "kaiming-normal")
    x = torch.randn(8, 1, 8, 8)
    train_out = model(x)
    with torch.no_grad():
        eval_out = model(x)
    assert torch.allclose(train_out, eval_out, atol=1e-6)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        MaskedLinear(3, 3, sparsity=1.0)
    with pytest.raises(ValueError, match="method"):
        MaskedLinear(3, 3, method="lottery")


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_pinned_mask_reproduces_the_scored_layer_exactly(method):
    layer = make_layer(MaskedLinear, method, sparsity=0.8, in_features=40, out_features=12)
    x = torch.randn(6, 40)
    with torch.no_grad():
        before, mask, alpha = layer(x), layer.mask().clone(), layer.alpha().clone()
        layer.pin(mask)
        assert torch.equal(layer(x), before) and torch.equal(layer.alpha(), alpha)
        soft = mask.float() * 0.5
        layer.pin(soft)  # a soft mask scales edge-popup weights; biprop's gain renormalises it away
        w = layer.effective_weight()
        if method == "edge-popup":
            assert torch.allclose(w, layer.weight * 0.5 * mask)
        else:
            assert torch.allclose(w.abs()[mask], torch.full((int(mask.sum()),), alpha.item() * 0.5), atol=1e-6)
        layer.pin(None)
        assert torch.equal(layer(x), before)
