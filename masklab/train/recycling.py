"""Weight recycling between epochs: Iterative Weight Recycling (IWR) and the IteRand baseline.

Both keep a per-layer record from which the final weights are rebuilt exactly from the weight seed:
- IWR only copies existing values, so `src[i]` is the initial position whose value position i holds;
- IteRand draws fresh values, so `draw[i]` is the recycling count t whose fresh draw position i holds
  (0: still the initial value); draw t of a layer is regenerated from (weight seed, layer, t).
"""

from __future__ import annotations

import torch

from masklab.nn.init import ITERAND_STREAM, generator, weight_values
from masklab.nn.layers import MaskedLayer


def recycles_after(epoch: int, epochs: int, every: int, warmup: int) -> bool:
    """REFERENCE.md's schedule, epochs counted from 0: recycle at the end of epoch e iff e > 0,
    e % every == 0, e > warmup and e is not the last epoch."""
    return epoch > 0 and epoch % every == 0 and epoch > warmup and epoch != epochs - 1


def recycle_positions(scores: torch.Tensor, rate: float, donors: str = "top") -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) flat positions: the r lowest |scores| and their donors (r = int(rate * n)).

    Positions are ordered by |s| ascending (stable, so ties go by index); `low = idx[:r]`; donors are the
    top block `idx[n-r:]` (ascending, so low[i] receives high[i]) or, for the ablation, `idx[r:2r]`.
    """
    a = scores.detach().abs().reshape(-1)
    r = int(rate * a.numel())
    order = torch.argsort(a, stable=True)
    low = order[:r]
    high = order[a.numel() - r:] if donors == "top" else order[r:2 * r]
    return low, high


@torch.no_grad()
def iwr_apply(weight: torch.Tensor, scores: torch.Tensor, src: torch.Tensor, rate: float,
              donors: str = "top") -> int:
    """IWR on one layer's weight tensor (modified in place) given its scores; returns r."""
    low, high = recycle_positions(scores, rate, donors)
    w = weight.view(-1)
    w[low] = w[high]
    src[low] = src[high]
    return int(low.numel())


@torch.no_grad()
def iterand_apply(weight: torch.Tensor, mask: torch.Tensor, draw: torch.Tensor, rate: float, index: int,
                  weight_seed: int, t: int, weight_init: str, scale_fan: bool, keep: float) -> int:
    """IteRand on one layer's weight tensor (in place): each pruned weight, with probability `rate`,
    takes fresh draw number t (the same draw for every mask of a run). Returns the count replaced."""
    shape = tuple(weight.shape)
    fresh = weight_values(shape, index, weight_seed, weight_init, scale_fan, keep, step=t)
    coin = torch.rand(shape, generator=_coin_generator(weight_seed, index, t))
    replace = (~mask.cpu()) & (coin < rate)
    weight[replace.to(weight.device)] = fresh[replace].to(weight.device, weight.dtype)
    draw.view(-1)[replace.view(-1).to(draw.device)] = t
    return int(replace.sum())


def iwr_step(layer: MaskedLayer, src: torch.Tensor, rate: float, donors: str = "top") -> int:
    """Copy the donors' weights into the lowest-scoring positions; scores untouched. Returns r."""
    assert layer.scores is not None, "IWR needs scores (not a dense layer)"
    r = iwr_apply(layer.weight, layer.scores, src, rate, donors)
    layer.invalidate()
    return r


def iterand_step(layer: MaskedLayer, draw: torch.Tensor, rate: float, index: int, weight_seed: int, t: int,
                 weight_init: str, scale_fan: bool, keep: float) -> int:
    """Replace each currently pruned weight, with probability `rate`, by fresh draw number t. Returns count."""
    count = iterand_apply(layer.weight, layer.mask(), draw, rate, index, weight_seed, t, weight_init, scale_fan,
                          keep)
    layer.invalidate()
    return count


def _coin_generator(weight_seed: int, index: int, t: int) -> torch.Generator:
    return generator(weight_seed, ITERAND_STREAM + 1, index, t)


def rebuild_weights(shape: tuple[int, ...], index: int, weight_seed: int, weight_init: str, scale_fan: bool,
                    keep: float, src: torch.Tensor | None = None, draw: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's final weights from the seed plus its IWR source map or IteRand draw map."""
    w = weight_values(shape, index, weight_seed, weight_init, scale_fan, keep).reshape(-1)
    if src is not None:
        w = w[src.reshape(-1).long()]
    if draw is not None:
        draw = draw.reshape(-1)
        for t in torch.unique(draw[draw > 0]).tolist():
            fresh = weight_values(shape, index, weight_seed, weight_init, scale_fan, keep, step=int(t)).reshape(-1)
            hit = draw == t
            w[hit] = fresh[hit]
    return w.reshape(shape)
