import pytest
import torch

from masklab.errors import UserError
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


@pytest.mark.parametrize("name,shape", [("conv4", (3, 32, 32)), ("mlp", (1, 8, 8)), ("conv2", (1, 8, 8))])
def test_forward_shapes(name, shape):
    model = init_model(build_model(name, shape, 7, width=0.25), 0, 0, "signed-constant")
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_bad_models_are_user_errors():
    with pytest.raises(UserError, match="width"):
        build_model("conv4", (3, 32, 32), 10, width=0.001)
    with pytest.raises(UserError, match="does not fit"):
        build_model("conv8", (1, 8, 8), 10)
    with pytest.raises(UserError, match="image inputs"):
        build_model("conv4", (64,), 10)
    with pytest.raises(UserError, match="unknown model"):
        build_model("vgg", (3, 32, 32), 10)
