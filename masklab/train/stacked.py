"""The models a run trains: one mask's (`make_model`) and K masks' trained in one pass, its optimiser, and how
many masks `--stack auto` puts together.

A mask's result does not depend on the stack (see `masklab.nn.stacked`), so K is chosen for speed
alone, from the rule `bench/bench_stack_rule.py` measures.
"""

from __future__ import annotations

import os

import torch

from masklab.config import RunConfig
from masklab.data import Shaped
from masklab.nn.init import init_model
from masklab.nn.layers import MaskedConv2d, masked_layers
from masklab.nn.models import build_model
from masklab.nn.stacked import StackedLayerMaker, init_stacked
from masklab.train.score_sgd import FusedScoreSGD, fused_available

# `--stack auto`, measured by bench/bench_stack_rule.py (2-core CPU): linear-only models gain up to K = 8
# (lenet-300-100: 2x per-mask throughput); models with convolutions do not gain on a CPU (one convolution
# per mask either way, and the weight gradient runs single-threaded for exactness), so they train alone.
CPU_CAP = {"linear": 8, "conv": 1}
CUDA_CAP = 32  # one grouped convolution for the stack: not measured yet (no GPU lent)


def make_model(config: RunConfig, dataset: Shaped, score_seed: int | None = None) -> torch.nn.Module:
    """The run's single-mask model with weights from the weight seed and scores from `score_seed` (CPU)."""
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, config.method,
                        config.sparsity)
    return init_model(model, config.weight_seed, config.score_seed if score_seed is None else score_seed,
                      config.resolved("weight_init"), config.resolved("scale_fan"), config.keep)


def make_stacked_model(config: RunConfig, dataset: Shaped, indices: list[int]) -> torch.nn.Module:
    """The run's model for masks `indices`: shared weights from the weight seed (per mask once recycling
    can change them), mask k's scores from its own score seed."""
    per_mask_weights = config.recycle != "none"
    maker = StackedLayerMaker(config.method, config.sparsity, len(indices), per_mask_weights)
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, maker=maker)
    return init_stacked(model, config.weight_seed, [config.seeds(i)[1] for i in indices],
                        config.resolved("weight_init"), config.resolved("scale_fan"), config.keep)


def layer_kind(config: RunConfig, dataset: Shaped) -> str:
    """"conv" when the model has a convolution, else "linear"."""
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, "dense")
    return "conv" if any(isinstance(m, MaskedConv2d) for m in model.modules()) else "linear"


def auto_stack(config: RunConfig, dataset: Shaped, device: torch.device, n_masks: int) -> int:
    """K for `--stack auto`: the measured rule for the device and layer kind (CPU_CAP, CUDA_CAP), at most
    the masks left, and no more than fit a quarter of free memory (`stack_memory`)."""
    if config.method == "dense":
        return 1
    cap = CUDA_CAP if device.type == "cuda" else CPU_CAP[layer_kind(config, dataset)]
    if cap == 1:
        return 1
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, min(cap, n_masks, int(free // 4 // max(stack_memory(config, dataset), 1))))


def stack_memory(config: RunConfig, dataset: Shaped) -> int:
    """Bytes one more mask in a stack takes, estimated: 6 float32 per prunable weight (its scores, their
    gradient, momentum, the effective weight, the mask, its own weights once recycled) and, per sample of a
    batch, 3 float32 per activation (the forward value, its gradient, a temporary).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> config = RunConfig(model="conv4", batch_size=128)
    >>> stack_memory(config, SimpleNamespace(input_shape=(3, 32, 32), n_classes=10)) // 2**20  # MiB
    681
    """
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, config.method,
                        config.sparsity)
    n_weights = sum(layer.weight.numel() for _, layer in masked_layers(model))  # (not the scores: counted above)
    return 6 * 4 * n_weights + 4 * config.batch_size * 3 * _activation_floats(model, dataset)


def _activation_floats(model, dataset) -> int:
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel())) for m in model.modules()
             if not list(m.children())]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, *dataset.input_shape))
    for h in hooks:
        h.remove()
    return int(sum(sizes))


def score_optimizer(layers: list, lr: float, momentum: float, weight_decay: float, device: torch.device):
    """SGD over the stacked layers' scores: fused with the selection on CPU (`FusedScoreSGD`, the same
    updates without autograd's temporaries), torch.optim.SGD through autograd elsewhere."""
    if fused_available(device):
        return FusedScoreSGD(layers, lr, momentum, weight_decay)
    return torch.optim.SGD([layer.scores for layer in layers], lr=lr, momentum=momentum, weight_decay=weight_decay)

