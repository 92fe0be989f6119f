"""The mask's straight-through estimator, the one definition every training path uses: `MaskedLayer` with
K = 1 row of scores, `StackedLayer` with K rows (and `FusedScoreSGD` computes the same expression in numba);
with the exact top-k of each row it selects from."""

from __future__ import annotations

import torch

from masklab.nn.device_path import cpu_path
from masklab.nn.exact import biprop_alpha
from masklab.nn.select import topk_mask, topk_rows_device


def topk_rows(values: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """Per row of a (K, n) tensor, the bool mask of its k largest entries (lower index wins ties),
    exactly as `topk_mask` selects in each row: row by row on the CPU path, all rows at once and without
    a host synchronisation on the device path (`topk_rows_device`)."""
    n = values.shape[1]
    if k >= n or k <= 0:
        return torch.full_like(values, k >= n, dtype=torch.bool)
    if cpu_path(values):
        return torch.stack([topk_mask(row, k, absolute) for row in values])
    return topk_rows_device(values.abs() if absolute else values, k)


def row_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(K, *shape) bool: per row, the top-k of |scores|."""
    K = scores.shape[0]
    return topk_rows(scores.detach().reshape(K, -1), k, absolute=True).view_as(scores)


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) values shaped to broadcast over the rows of `like` (K, *shape)."""
    return values.view((values.shape[0],) + (1,) * (like.dim() - 1))


class StraightThrough(torch.autograd.Function):
    """The mask's straight-through estimator, for K rows of scores (K, *shape).

    Forward: the 0/1 mask of each row's top-k |scores| (Edge-Popup), or for Biprop `alpha * mask` with
    alpha = sum(|W| * mask) / k per row. Backward: the gradient passes the selection unchanged (Biprop:
    times |W|, alpha held constant), then through abs, i.e. times sign(s). So for Edge-Popup
    d s = dL/dW_eff * W * sign(s), and for Biprop, whose effective weight is sign(W) * alpha * mask, the
    same number. The single definition: `MaskedLayer` uses it with K = 1, and `FusedScoreSGD` computes
    the same expression in numba."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, abs_weight: torch.Tensor | None = None) -> torch.Tensor:
        mask = row_masks(scores, k).to(scores.dtype)
        ctx.save_for_backward(scores, abs_weight)
        if abs_weight is None:
            return mask
        return per_row(biprop_alpha(abs_weight, mask, k), mask) * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scores, abs_weight = ctx.saved_tensors
        if abs_weight is not None:
            grad = grad * abs_weight
        return grad * torch.sign(scores), None, None


def straight_through(scores: torch.Tensor, k: int, weight: torch.Tensor, method: str) -> torch.Tensor:
    """The differentiable effective weights (K, *shape) of K rows of scores over `weight` (shared or per row)."""
    if method == "biprop":
        w = weight.expand(scores.shape) if weight.dim() < scores.dim() else weight
        return torch.sign(w) * StraightThrough.apply(scores, k, w.abs())
    return weight * StraightThrough.apply(scores, k)
