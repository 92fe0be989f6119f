"""FusedScoreSGD against its definition: torch.optim.SGD over the scores, gradients through autograd's
straight-through selection, on the same stacked model."""

import pytest
import torch
import torch.nn.functional as F

from masklab.nn import build_model
from masklab.nn.stacked import StackedLayerMaker, init_stacked, stacked_layers
from masklab.train.score_sgd import FusedScoreSGD


def stacked(model_name, shape, method, per_mask_weights, K=3):
    model = build_model(model_name, shape, 10, 0.25, maker=StackedLayerMaker(method, 0.6, K, per_mask_weights))
    init_stacked(model, 0, [5, 6, 7], "kaiming-normal", True, 0.4)
    if per_mask_weights:  # give each mask its own weights, as after recycling
        with torch.no_grad():
            for _, layer in stacked_layers(model):
                layer.weight.mul_(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(1)) + 0.5)
    return model


def train(model, optimizer, x, y, steps, lr_schedule=(0.1, 0.05, 0.02)):
    K = stacked_layers(model)[0][1].K
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule[step % len(lr_schedule)]
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        F.cross_entropy(logits.transpose(1, 2), y.expand(K, -1), reduction="none").mean(1).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
@pytest.mark.parametrize("per_mask_weights", [False, True])
@pytest.mark.parametrize("model_name,shape", [("mlp", (1, 8, 8)), ("conv2", (3, 8, 8))])
def test_fused_steps_equal_torch_sgd_through_autograd(model_name, shape, method, per_mask_weights):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    reference = stacked(model_name, shape, method, per_mask_weights)
    fused = stacked(model_name, shape, method, per_mask_weights)
    ref_layers = [layer for _, layer in stacked_layers(reference)]
    fused_layers = [layer for _, layer in stacked_layers(fused)]
    train(reference, torch.optim.SGD([l.scores for l in ref_layers], lr=0.1, momentum=0.9, weight_decay=1e-3),
          x, y, 4)
    optimizer = FusedScoreSGD(fused_layers, lr=0.1, momentum=0.9, weight_decay=1e-3)
    train(fused, optimizer, x, y, 4)
    for a, b, buf in zip(ref_layers, fused_layers, optimizer.buffers):
        scale = float(a.scores.detach().abs().max())
        assert torch.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6 * scale)
        assert torch.equal(a.masks(), b.masks())
        with torch.no_grad():  # the fused forward computes with the same effective weights
            assert torch.allclose(a.effective_weight(), b.fused_weight(), rtol=1e-6, atol=1e-7)
        assert float(buf.abs().max()) > 0  # momentum was used
    with torch.no_grad():
        assert torch.allclose(reference(x), fused(x), rtol=1e-4, atol=1e-5)


def test_fused_effective_weights_follow_weight_changes():
    """Recycling changes weights in place: the next forward must select and multiply again."""
    model = stacked("mlp", (1, 8, 8), "edge-popup", True)
    layers = [layer for _, layer in stacked_layers(model)]
    FusedScoreSGD(layers, lr=0.1)
    layer = layers[0]
    before = layer.fused_weight().detach().clone()
    with torch.no_grad():
        layer.weight.mul_(2.0)
    assert torch.equal(layer.fused_weight().detach(), 2.0 * before)
    assert torch.equal(layer.fused_weight().detach() != 0, layer.masks())


def test_step_without_a_backward_changes_nothing():
    model = stacked("mlp", (1, 8, 8), "edge-popup", False)
    layers = [layer for _, layer in stacked_layers(model)]
    optimizer = FusedScoreSGD(layers, lr=0.1, momentum=0.9)
    before = [layer.scores.detach().clone() for layer in layers]
    optimizer.zero_grad()
    optimizer.step()
    assert all(torch.equal(a, layer.scores) for a, layer in zip(before, layers))


def test_one_thread_and_two_threads_give_identical_masks():
    """With one torch thread the serial build of the kernel runs, with two the parallel one: each mask's
    row is computed the same way by both, bit for bit."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = stacked("mlp", (1, 8, 8), "biprop", True)
            layers = [layer for _, layer in stacked_layers(model)]
            train(model, FusedScoreSGD(layers, lr=0.1, momentum=0.9, weight_decay=1e-3), x, y, 3)
            results.append([(layer.scores.detach().clone(), layer.masks().clone()) for layer in layers])
    finally:
        torch.set_num_threads(old)
    for (s1, m1), (s2, m2) in zip(*results):
        assert torch.equal(m1, m2) and torch.allclose(s1, s2, rtol=1e-6, atol=1e-8)
