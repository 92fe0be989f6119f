import pytest
import torch
import torch.nn.functional as F

from masklab.errors import UserError
from masklab.keep import n_keep
from masklab.nn import build_model, init_model, masked_layers

# REFERENCE.md's table: prunable weights for CIFAR-10 inputs
PUBLISHED = {"conv2": 4_300_992, "conv4": 2_425_024, "conv6": 2_261_184, "conv8": 5_275_840}


def n_prunable(model):
    return sum(layer.weight.numel() for _, layer in masked_layers(model))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_conv_counts_match_reference(name):
    assert n_prunable(build_model(name, (3, 32, 32), 10)) == PUBLISHED[name]


def test_lenet_and_mlp_counts():
    assert n_prunable(build_model("lenet-300-100", (1, 28, 28), 10)) == 784 * 300 + 300 * 100 + 100 * 10
    assert n_prunable(build_model("mlp", (1, 8, 8), 10)) == 64 * 256 + 256 * 256 + 256 * 10


def test_width_multiplier_scales_every_width():
    model = build_model("conv4", (3, 32, 32), 10, width=0.5)
    shapes = [tuple(l.weight.shape) for _, l in masked_layers(model)]
    assert shapes[0] == (32, 3, 3, 3) and shapes[3] == (64, 64, 3, 3)
    assert shapes[4] == (128, 64 * 8 * 8) and shapes[-1] == (10, 128)


def test_resnet18_forward_and_nonaffine_bn():
    model = init_model(build_model("resnet18", (3, 32, 32), 10, width=0.125), 0, 0, "kaiming-normal")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.affine for bn in bns)
    assert all(p.requires_grad is False or n.endswith("scores") for n, p in model.named_parameters())
    # the same seeds give the same network; the classifier's mask decides its output (no bias anywhere)
    again = init_model(build_model("resnet18", (3, 32, 32), 10, width=0.125), 0, 0, "kaiming-normal")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # train mode: batch statistics, so the forward above left no trace
        torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
        fc = model.fc
        fc.pin(torch.zeros_like(fc.weight, dtype=torch.bool))
        assert torch.count_nonzero(model(x)) == 0
        fc.pin(fc.weight.abs() >= 0)  # every weight kept: the dense classifier on the same features
        assert torch.count_nonzero(model(x)) == model(x).numel()


def _kept(layer, sparsity):
    """W * (top n_keep of |scores|), the Edge-Popup subnetwork's weight, selected here by torch.topk."""
    scores = layer.scores.detach().abs().reshape(-1)
    mask = torch.zeros_like(scores)
    mask[scores.topk(n_keep(scores.numel(), sparsity)).indices] = 1.0
    return layer.weight.detach() * mask.view(layer.weight.shape)


def _written_out(name, weights, x):
    """The architecture as REFERENCE.md states it, in plain torch.nn.functional: no biases; mlp: fc-relu-fc-relu-fc;
    conv-N: 3x3 convs (padding 1) with ReLU, 2x2 max-pool after every second conv, then fc-relu-fc-relu-fc."""
    h = x
    convs = [w for w in weights if w.dim() == 4]
    for i, w in enumerate(convs):
        h = F.relu(F.conv2d(h, w, padding=1))
        if i % 2 == 1:
            h = F.max_pool2d(h, 2)
    h = h.flatten(1)
    fcs = weights[len(convs):]
    for i, w in enumerate(fcs):
        h = h @ w.T
        if i < len(fcs) - 1:
            h = F.relu(h)
    return h


@pytest.mark.parametrize("name,shape", [("conv4", (3, 32, 32)), ("mlp", (1, 8, 8)), ("conv2", (1, 8, 8))])
def test_forward_is_the_written_out_masked_network(name, shape):
    """The output is the architecture's formula on W * mask(top-k |scores|), and the masks change it (the
    same network on the unmasked weights computes something else)."""
    model = init_model(build_model(name, shape, 7, width=0.25, sparsity=0.5), 0, 0, "signed-constant")
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        layers = [layer for _, layer in masked_layers(model)]
        expected = _written_out(name, [_kept(layer, 0.5) for layer in layers], x)
        unmasked = _written_out(name, [layer.weight.detach() for layer in layers], x)
    assert out.shape == (3, 7)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert not torch.allclose(out, unmasked, rtol=1e-2, atol=1e-2 * float(unmasked.abs().max()))


def test_bad_models_are_user_errors():
    with pytest.raises(UserError, match="width"):
        build_model("conv4", (3, 32, 32), 10, width=0.001)
    with pytest.raises(UserError, match="does not fit"):
        build_model("conv8", (1, 8, 8), 10)
    with pytest.raises(UserError, match="image inputs"):
        build_model("conv4", (64,), 10)
    with pytest.raises(UserError, match="unknown model"):
        build_model("vgg", (3, 32, 32), 10)


def test_resnet18_pools_without_adaptive_avg_pool2d(monkeypatch):
    """Its CUDA backward has no deterministic kernel (torch.use_deterministic_algorithms raises): the global
    average pool is a mean, which on CPU gives adaptive_avg_pool2d's bits, forward and backward."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    for shape in [(16, 512, 4, 4), (5, 64, 1, 1), (8, 4096, 4, 4), (3, 32, 2, 2)]:
        x = torch.randn(*shape, generator=g, requires_grad=True)
        grad = torch.randn(shape[:2], generator=g)
        pooled, mean = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), x.mean((2, 3))
        assert torch.equal(pooled, mean)
        assert torch.equal(torch.autograd.grad(pooled, x, grad)[0], torch.autograd.grad(mean, x, grad)[0])

    def refuse(*args, **kwargs):
        raise AssertionError("adaptive_avg_pool2d")

    monkeypatch.setattr(F, "adaptive_avg_pool2d", refuse)
    model = build_model("resnet18", (3, 8, 8), 10, 0.125, "edge-popup", 0.5)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
