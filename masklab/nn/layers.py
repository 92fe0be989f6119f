"""Subnet layers: frozen random weights, trainable scores, a top-k mask with a straight-through gradient.

One class per concept: `MaskedLayer` holds the weight, the scores and the method's effective weight;
`MaskedLinear` and `MaskedConv2d` only say how to apply it. Methods:
- "edge-popup": W_eff = W * mask(|s|); d|s| = dL/dW_eff * W (straight through the selection), then
  autograd passes it through abs to s, as the reference code does.
- "biprop": W_eff = sign(W) * alpha * mask(|s|), alpha = sum(|W| * mask) / n_keep per layer;
  d|s| = (dL/dW_eff * sign(W)) * |W|, alpha treated as a constant.
- "dense": W trained directly (the baseline), no scores.

The straight-through estimator is `masklab.nn.straight_through.StraightThrough` (one definition, used here with
K = 1) and Biprop's gain is `masklab.nn.exact.biprop_alpha`, so that a rebuilt subnetwork computes with
exactly the numbers its training did. Outside autograd (evaluation, export) the mask is computed once and
cached until the scores or weights change (tracked by the tensors' version counters), so evaluation does
not redo the selection per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config import METHODS
from masklab.keep import n_keep as count_keep
from masklab.nn.exact import biprop_alpha, conv2d
from masklab.nn.select import topk_mask
from masklab.nn.straight_through import straight_through


class MaskedLayer(nn.Module):
    """Base class: weight of `shape` (frozen unless dense), scores, and the effective weight."""

    def __init__(self, shape: tuple[int, ...], method: str = "edge-popup", sparsity: float = 0.5):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method {method!r} is unknown; choose one of {', '.join(METHODS)}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity {sparsity!r} must lie in [0, 1)")
        self.method = method
        self.sparsity = 0.0 if method == "dense" else float(sparsity)
        self.weight = nn.Parameter(torch.empty(shape), requires_grad=(method == "dense"))
        self.scores = None if method == "dense" else nn.Parameter(torch.empty(shape))
        self.n_keep = count_keep(self.weight.numel(), self.sparsity)
        self._cache: tuple | None = None
        self.pinned: torch.Tensor | None = None  # a fixed mask that replaces the top-k (see `pin`)
        # Biprop's gain divides by n_keep; runs imported from the Biprop code divide by its own count,
        # int(keep * n), which is one less than the kept count at rates like keep = 0.9 (masklab/interop)
        self.gain_count: int | None = None

    # ---- mask -----------------------------------------------------------------------------------
    def _key(self) -> tuple:
        s = self.scores
        return (self.weight._version, self.weight.data_ptr(),
                None if s is None else s._version, None if s is None else s.data_ptr(), id(self.pinned))

    def invalidate(self) -> None:
        """Forget the cached mask (call after changing weights or scores behind autograd's back)."""
        self._cache = None

    def pin(self, mask: torch.Tensor | None) -> None:
        """Compute with a fixed mask instead of the top-k of the scores (None: back to the scores).

        The mask may be bool (a stored mask, rebuilt exactly) or real-valued in [0, 1] (a point on a soft
        interpolation path). Biprop's gain becomes sum(|W| * m) / sum(m), which for a 0/1 mask of
        n_keep ones is exactly the training-time gain.
        """
        if mask is not None:
            if tuple(mask.shape) != tuple(self.weight.shape):
                raise ValueError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(self.weight.shape)}")
            mask = mask.to(self.weight.device)
        self.pinned = mask
        self._cache = None

    def mask(self) -> torch.Tensor:
        """The current mask (bool; real-valued only when a soft mask is pinned), cached until the
        scores or weights change."""
        if self.scores is None and self.pinned is None:
            return torch.ones_like(self.weight, dtype=torch.bool)
        return self._cached()[1]

    def _cached(self) -> tuple:
        """(key, mask, alpha, effective weight), recomputed when the scores, weights or pin changed."""
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                if self.pinned is not None:
                    mask = self.pinned
                else:
                    assert self.scores is not None
                    mask = topk_mask(self.scores, self.n_keep, absolute=True)
                values = mask.to(self.weight.dtype)
                # the gain only where the layer computes with it (Biprop): elsewhere it cost as much as the
                # selection, per mask rebuilt by analyze; `alpha()` works it out when asked
                alpha = self._gain(values) if self.method == "biprop" else None
                w_eff = self._effective(values, alpha)
            self._cache = (key, mask, alpha, w_eff)
        return self._cache

    def _gain(self, values: torch.Tensor) -> torch.Tensor:
        """Biprop's gain of the 0/1 (or soft, pinned) mask `values`."""
        with torch.no_grad():
            if self.pinned is not None:
                return biprop_alpha(self.weight, values[None])[0]
            count = self.n_keep if self.gain_count is None else self.gain_count
            return biprop_alpha(self.weight, values[None], count)[0]

    def alpha(self) -> torch.Tensor:
        """Biprop gain of the current mask (mean |W| over kept weights)."""
        key, mask, alpha, w_eff = self._cached()
        if alpha is None:
            alpha = self._gain(mask.to(self.weight.dtype))
            self._cache = (key, mask, alpha, w_eff)
        return alpha

    def _effective(self, mask: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
        if self.method == "biprop":
            assert alpha is not None
            return torch.sign(self.weight) * alpha * mask
        return self.weight * mask

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with (differentiable w.r.t. the scores when grad is on)."""
        if self.scores is None:
            return self.weight if self.pinned is None else self._cached()[3]
        if self.pinned is not None or not (torch.is_grad_enabled() and self.scores.requires_grad):
            return self._cached()[3]
        return straight_through(self.scores[None], self.n_keep, self.weight[None], self.method)[0]

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, method={self.method}, keep={self.n_keep}/{self.weight.numel()}"


class MaskedLinear(MaskedLayer):
    def __init__(self, in_features: int, out_features: int, method: str = "edge-popup", sparsity: float = 0.5):
        super().__init__((out_features, in_features), method, sparsity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight())


class MaskedConv2d(MaskedLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, method: str = "edge-popup", sparsity: float = 0.5):
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), method, sparsity)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.effective_weight(), self.stride, self.padding)


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedLayer]]:
    """The prunable layers of a model, in registration order (the order of the mask bits)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MaskedLayer)]
