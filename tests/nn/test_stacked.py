import pytest
import torch

from masklab.nn import build_model, init_model, masked_layers
from masklab.nn.select import topk_mask
from masklab.nn.stacked import StackedLayerMaker, init_stacked, stacked_layers
from masklab.nn.straight_through import topk_rows


def test_topk_rows_equals_per_row_selection_with_ties():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (6, 50), generator=g).float()  # many ties
    mask = topk_rows(values, 17)
    for row in range(6):
        assert torch.equal(mask[row], topk_mask(values[row], 17))


def pair(model_name, shape, method, K=1, score_seeds=(0,), width=0.25):
    single = [init_model(build_model(model_name, shape, 10, width, method, 0.5), 0, s, "kaiming-normal")
              for s in score_seeds]
    stacked = build_model(model_name, shape, 10, width, maker=StackedLayerMaker(method, 0.5, K))
    init_stacked(stacked, 0, list(score_seeds), "kaiming-normal")
    return single, stacked


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
@pytest.mark.parametrize("model_name,shape", [("mlp", (1, 8, 8)), ("conv2", (3, 8, 8)),
                                              ("resnet18", (3, 8, 8))])
def test_k1_stack_equals_unstacked(model_name, shape, method):
    (single,), stacked = pair(model_name, shape, method)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    out_single, out_stacked = single(x), stacked(x)
    assert out_stacked.shape == (1, 5, 10)
    assert torch.allclose(out_single, out_stacked[0], atol=1e-5)
    out_single.square().sum().backward()
    out_stacked.square().sum().backward()
    for (_, a), (_, b) in zip(masked_layers(single), stacked_layers(stacked)):
        assert torch.equal(a.mask(), b.mask(0))  # bit for bit
        scale = a.scores.grad.abs().max()
        assert torch.allclose(a.scores.grad, b.scores.grad[0], rtol=1e-4, atol=1e-5 * float(scale))


@pytest.mark.parametrize("model_name,shape", [("mlp", (1, 8, 8)), ("conv4", (3, 16, 16)), ("resnet18", (3, 8, 8))])
def test_k4_stack_matches_four_separate_models(model_name, shape):
    seeds = (3, 7, 11, 12)
    singles, stacked = pair(model_name, shape, "edge-popup", K=4, score_seeds=seeds)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(2))
    out = stacked(x)
    for k, single in enumerate(singles):
        assert torch.allclose(single(x), out[k], atol=1e-5)
    # mask k depends on its own seed only: the same seed in another stack position gives the same mask
    _, other = pair(model_name, shape, "edge-popup", K=2, score_seeds=(11, 99))
    for (_, a), (_, b) in zip(stacked_layers(stacked), stacked_layers(other)):
        assert torch.equal(a.mask(2), b.mask(0))


def test_per_mask_inputs_are_routed_to_their_mask():
    singles, stacked = pair("conv2", (3, 8, 8), "edge-popup", K=2, score_seeds=(0, 1))
    xs = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    both = torch.stack(xs, 1).reshape(4, 6, 8, 8)  # (B, K*C, H, W)
    out = stacked(both)
    for k in range(2):
        assert torch.allclose(singles[k](xs[k]), out[k], atol=1e-5)
