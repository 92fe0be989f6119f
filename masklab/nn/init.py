"""Weight and score initialisation, each layer from its own seeded generator.

Each (seed, stream, layer index) triple gets an independent torch.Generator, so a layer's weights depend
only on the weight seed and its position, and its scores only on the score seed: never on how many masks
are trained together or in which order layers are built.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from masklab.nn.layers import masked_layers

WEIGHT_STREAM, SCORE_STREAM, ITERAND_STREAM = 0, 1, 2


def generator(seed: int, stream: int, layer_index: int, step: int = 0) -> torch.Generator:
    """An independent CPU generator for one (seed, stream, layer, step)."""
    state = np.random.SeedSequence([int(seed), int(stream), int(layer_index), int(step)])
    g = torch.Generator(device="cpu")
    g.manual_seed(int(state.generate_state(1, np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return g


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs feeding one output: in_features for linear, in_channels * kh * kw for conv."""
    return int(shape[1] * math.prod(shape[2:])) if len(shape) > 1 else int(shape[0])


def init_weight(shape: tuple[int, ...], kind: str, keep: float = 1.0, scale_fan: bool = False,
                gen: torch.Generator | None = None) -> torch.Tensor:
    """Frozen random weights. `std = sqrt(2 / fan)` with `fan = fan_in * keep` when `scale_fan`.

    - "signed-constant": sign(w0) * std with w0 ~ N(0, 1) (Edge-Popup's default);
    - "kaiming-normal": N(0, std^2) (Biprop's default);
    - "unsigned-constant": std everywhere.
    """
    fan = fan_in(shape) * (keep if scale_fan else 1.0)
    std = math.sqrt(2.0 / fan)
    w0 = torch.randn(shape, generator=gen)
    if kind == "signed-constant":
        return torch.where(w0 >= 0, std, -std)
    if kind == "kaiming-normal":
        return w0 * std
    if kind == "unsigned-constant":
        return torch.full(shape, std)
    raise ValueError(f"unknown weight init {kind!r}; choose signed-constant, kaiming-normal, unsigned-constant")


def init_scores(shape: tuple[int, ...], gen: torch.Generator | None = None) -> torch.Tensor:
    """Kaiming uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in never scaled."""
    bound = 1.0 / math.sqrt(fan_in(shape))
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


def init_model(model: torch.nn.Module, weight_seed: int, score_seed: int, weight_init: str,
               scale_fan: bool = False, keep: float = 1.0) -> torch.nn.Module:
    """Fill every masked layer's weights from the weight seed and its scores from the score seed."""
    with torch.no_grad():
        for index, (_, layer) in enumerate(masked_layers(model)):
            shape = tuple(layer.weight.shape)
            layer.weight.copy_(weight_values(shape, index, weight_seed, weight_init, scale_fan, keep))
            if layer.scores is not None:
                layer.scores.copy_(init_scores(shape, generator(score_seed, SCORE_STREAM, index)))
            layer.invalidate()
    return model


def weight_values(shape: tuple[int, ...], index: int, weight_seed: int, weight_init: str,
                  scale_fan: bool = False, keep: float = 1.0, step: int = 0) -> torch.Tensor:
    """The initial weights of layer `index` (step 0), or IteRand's fresh draw number `step`."""
    stream = WEIGHT_STREAM if step == 0 else ITERAND_STREAM
    return init_weight(shape, weight_init, keep, scale_fan, generator(weight_seed, stream, index, step))
