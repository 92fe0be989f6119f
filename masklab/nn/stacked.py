"""Stacked subnet layers: K masks over the same frozen weights, trained in one pass.

Layout of activations (so the model builders in `models.py` work unchanged):
- conv activations are (B, K*C, H, W), mask-major channels; a conv is one grouped convolution
  (groups = K), and BatchNorm over K*C channels keeps statistics per mask for free;
- linear activations are (K, B, F); a linear is one batched matmul;
- Flatten of (B, K*C, H, W) gives (B, K*F), which a stacked linear reads as (K, B, F): each mask's
  features stay in the same C-order as in the unstacked model;
- the model input is shared by all K masks, (B, *input_shape), or per mask, (B, K*C, H, W) resp.
  (B, K*F) when each mask sees its own batch.
Logits come out as (K, B, classes). Scores are (K, *shape); the weights are shared (shape) or, once
recycling can change them, per mask (K, *shape). Mask k's scores start from its own score seed, so a
mask's result depends neither on K nor on which masks share its stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from masklab.nn.init import SCORE_STREAM, generator, init_scores, weight_values
from masklab.nn.select import SelectState, select_rows, topk_mask
from masklab.nn.select import n_keep as count_keep


def topk_rows(values: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """Per row of a (K, n) tensor, the bool mask of its k largest entries (lower index wins ties),
    exactly as `topk_mask` selects in each row."""
    n = values.shape[1]
    if k >= n or k <= 0:
        return torch.full_like(values, k >= n, dtype=torch.bool)
    if values.device.type == "cpu":
        return torch.stack([topk_mask(row, k, absolute) for row in values])
    values = values.abs() if absolute else values
    threshold = torch.kthvalue(values, n - k + 1, dim=1, keepdim=True).values
    mask = values >= threshold
    for row in torch.nonzero(mask.sum(1) != k).reshape(-1).tolist():  # ties at a row's threshold
        mask[row] = topk_mask(values[row], k)
    return mask


def _row_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    K = scores.shape[0]
    return topk_rows(scores.detach().reshape(K, -1), k, absolute=True).view_as(scores)


class _StraightThroughRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(scores)
        return _row_masks(scores, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scores,) = ctx.saved_tensors
        return grad * torch.sign(scores), None


class _BipropGainRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, abs_weight: torch.Tensor, k: int) -> torch.Tensor:
        K = scores.shape[0]
        mask = _row_masks(scores, k).to(scores.dtype)
        alpha = (abs_weight * mask).reshape(K, -1).sum(1) / k
        ctx.save_for_backward(scores, abs_weight)
        return alpha.view((K,) + (1,) * (scores.dim() - 1)) * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scores, abs_weight = ctx.saved_tensors
        return grad * abs_weight * torch.sign(scores), None, None


class StackedLayer(nn.Module):
    """K masks of one layer: weight (shape) or (K, *shape), scores (K, *shape)."""

    def __init__(self, shape: tuple[int, ...], K: int, method: str, sparsity: float, per_mask_weights: bool):
        super().__init__()
        if method not in ("edge-popup", "biprop"):
            raise ValueError(f"stacked layers train masks; method {method!r} is not edge-popup or biprop")
        self.K, self.shape, self.method = K, tuple(shape), method
        self.n_weights = int(torch.Size(shape).numel())
        self.n_keep = count_keep(self.n_weights, sparsity)
        wshape = (K, *shape) if per_mask_weights else tuple(shape)
        self.weight = nn.Parameter(torch.empty(wshape), requires_grad=False)
        self.scores = nn.Parameter(torch.empty((K, *shape)))
        self._cache: tuple | None = None
        # Fused mode (CPU, see masklab.train.score_sgd): the forward computes with `_w_eff`, a leaf tensor
        # whose .grad autograd fills, and FusedScoreSGD updates scores and `_w_eff` in place. Its writes
        # do not bump the tensors' version counters, so `generation` counts them for the cache keys.
        self.fused = False
        self.generation = 0
        self._w_eff: torch.Tensor | None = None
        self._w_eff_key: tuple | None = None
        self._grad: torch.Tensor | None = None
        self._grad_filled = False
        self._gain: tuple | None = None
        self.select_state: SelectState | None = None

    @property
    def per_mask_weights(self) -> bool:
        return self.weight.dim() == len(self.shape) + 1

    def weight_of(self, k: int) -> torch.Tensor:
        return self.weight[k] if self.per_mask_weights else self.weight

    def _key(self) -> tuple:
        return (self.weight._version, self.weight.data_ptr(), self.scores._version, self.scores.data_ptr(),
                self.generation)

    def invalidate(self) -> None:
        self._cache = None
        self._w_eff_key = None

    # ---- fused mode -----------------------------------------------------------------------------
    def set_fused(self, on: bool) -> None:
        self.fused = on
        self.invalidate()

    def fused_weight(self) -> torch.Tensor:
        """(K, *shape) effective weights as one leaf tensor (requires grad), recomputed by `select_rows`
        when the scores or weights changed since."""
        if self._w_eff is None:
            self._w_eff = torch.empty(self.scores.shape, requires_grad=True)
        if self.select_state is None:
            self.select_state = SelectState(self.K, self.n_weights)
        key = self._key()
        if self._w_eff_key != key:
            select_rows(self.scores.detach(), self.weight.detach(), self.n_keep, self.method == "biprop",
                        self._w_eff.detach(), self.select_state)
            self._apply_gain()
            self._w_eff_key = key
        return self._w_eff

    @torch.no_grad()
    def _apply_gain(self) -> None:
        """Biprop: turn the 0/1 masks the selection wrote into sign(W) * alpha * mask, with alpha computed
        by the same torch expression as `masks()` and the autograd path (bit-identical gains: Biprop's
        pre-activations are sums of +-alpha * x and sit exactly on ReLU's kink often enough that one ulp
        of alpha changes a gradient)."""
        if self.method != "biprop":
            return
        values = self._w_eff.detach()
        key = (self.weight._version, self.weight.data_ptr())
        if self._gain is None or self._gain[0] != key:  # |W|, sign(W) and a scratch buffer, kept between steps
            self._gain = (key, self.weight.detach().abs(), torch.sign(self.weight.detach()), torch.empty_like(values))
        _, abs_weight, sign_weight, scratch = self._gain
        alphas = torch.mul(abs_weight, values, out=scratch).view(self.K, -1).sum(1) / self.n_keep
        values.mul_(torch.mul(sign_weight, alphas.view((self.K,) + (1,) * len(self.shape)), out=scratch))

    def grad_buffer(self) -> torch.Tensor:
        """The persistent (K, *shape) buffer a fused backward writes dL/dW_eff into (StackedLinear)."""
        if self._grad is None:
            self._grad = torch.empty(self.scores.shape)
        self._grad_filled = True
        return self._grad

    def fused_grad(self) -> torch.Tensor | None:
        """dL/dW_eff of the last backward: the persistent buffer, or autograd's .grad of the leaf."""
        return self._grad if self._grad_filled else self.fused_weight().grad

    def fused_zero_grad(self) -> None:
        self._grad_filled = False
        if self._w_eff is not None:
            self._w_eff.grad = None

    def fused_updated(self) -> None:
        """Scores and effective weights (for Biprop: masks) were just updated in place by FusedScoreSGD."""
        self._apply_gain()
        self.generation += 1
        self._w_eff_key = self._key()

    def masks(self) -> torch.Tensor:
        """(K, *shape) bool masks, cached until scores or weights change."""
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                masks = _row_masks(self.scores, self.n_keep)
                w = self.weight.expand(self.K, *self.shape)
                alphas = (w.abs() * masks).reshape(self.K, -1).sum(1) / self.n_keep
                values = masks.to(self.weight.dtype)
                if self.method == "biprop":
                    w_eff = torch.sign(w) * alphas.view((self.K,) + (1,) * len(self.shape)) * values
                else:
                    w_eff = w * values
            self._cache = (key, masks, alphas, w_eff)
        return self._cache[1]

    def mask(self, k: int) -> torch.Tensor:
        return self.masks()[k]

    def alphas(self) -> torch.Tensor:
        self.masks()
        return self._cache[2]

    def effective_weight(self) -> torch.Tensor:
        """(K, *shape): the weights each mask computes with."""
        if self.fused:
            return self.fused_weight()
        if not (torch.is_grad_enabled() and self.scores.requires_grad):
            self.masks()
            return self._cache[3]
        if self.method == "biprop":
            w = self.weight.expand(self.K, *self.shape)
            return torch.sign(w) * _BipropGainRows.apply(self.scores, w.abs(), self.n_keep)
        return self.weight * _StraightThroughRows.apply(self.scores, self.n_keep)

    def extra_repr(self) -> str:
        return f"K={self.K}, shape={self.shape}, method={self.method}, keep={self.n_keep}"


def _per_mask_input(x: torch.Tensor, K: int, n_in: int) -> torch.Tensor:
    """(K, B, in) from (K, B, in) or from (B, K*in), the flatten of stacked conv activations."""
    return x.view(x.shape[0], K, n_in).transpose(0, 1) if x.dim() == 2 else x


def _stacked_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    K, n_out, n_in = w.shape
    if x.dim() == 2 and x.shape[1] == n_in:  # input shared by all masks: one GEMM for all K
        out = F.linear(x, w.reshape(K * n_out, n_in))
        return out.view(x.shape[0], K, n_out).transpose(0, 1)  # a (K, B, out) view; bmm reads it as it is
    return torch.bmm(_per_mask_input(x, K, n_in), w.transpose(1, 2))


class _FusedLinear(torch.autograd.Function):
    """A stacked linear in fused mode: the weight gradient goes into the layer's persistent buffer
    (`out=`), not into a fresh (K, out, in) tensor per step, whose page faults cost as much as a
    quarter of the GEMM that fills it. Returns no gradient for `w`: FusedScoreSGD reads the buffer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, layer: StackedLinear) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.layer = layer
        return _stacked_linear(x, w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, w = ctx.saved_tensors
        K, n_out, n_in = w.shape
        grad_w = ctx.layer.grad_buffer()
        grad_x = None
        if x.dim() == 2 and x.shape[1] == n_in:
            go = grad_out.transpose(0, 1).reshape(x.shape[0], K * n_out)
            torch.mm(go.t(), x, out=grad_w.view(K * n_out, n_in))
            if ctx.needs_input_grad[0]:
                grad_x = go @ w.view(K * n_out, n_in)
        else:
            torch.bmm(grad_out.transpose(1, 2), _per_mask_input(x, K, n_in), out=grad_w)
            if ctx.needs_input_grad[0]:
                grad_x = torch.bmm(grad_out, w)
                grad_x = grad_x.transpose(0, 1).reshape(x.shape) if x.dim() == 2 else grad_x
        return grad_x, None, None


class StackedLinear(StackedLayer):
    def __init__(self, in_features, out_features, K, method, sparsity, per_mask_weights=False):
        super().__init__((out_features, in_features), K, method, sparsity, per_mask_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and torch.is_grad_enabled():
            return _FusedLinear.apply(x, self.fused_weight(), self)
        return _stacked_linear(x, self.effective_weight())


class StackedConv2d(StackedLayer):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, K, method, sparsity,
                 per_mask_weights=False):
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), K, method, sparsity, per_mask_weights)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_c, in_c = self.shape[0], self.shape[1]
        w = self.effective_weight().reshape(self.K * out_c, in_c, *self.shape[2:])
        groups = 1 if x.shape[1] == in_c else self.K  # shared input: one conv makes all K outputs
        return F.conv2d(x, w, None, self.stride, self.padding, 1, groups)


@dataclass(frozen=True)
class StackedLayerMaker:
    """The `maker` for `build_model` that creates stacked layers."""

    method: str
    sparsity: float
    K: int
    per_mask_weights: bool = False

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return StackedLinear(in_features, out_features, self.K, self.method, self.sparsity, self.per_mask_weights)

    def conv(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1) -> nn.Module:
        return StackedConv2d(in_channels, out_channels, kernel_size, stride, padding, self.K, self.method,
                             self.sparsity, self.per_mask_weights)

    def batchnorm(self, channels: int) -> nn.Module:
        """One non-affine BatchNorm over the K*C stacked channels: statistics per mask and channel."""
        return nn.BatchNorm2d(self.K * channels, affine=False)


def stacked_layers(model: nn.Module) -> list[tuple[str, StackedLayer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, StackedLayer)]


def init_stacked(model: nn.Module, weight_seed: int, score_seeds: list[int], weight_init: str,
                 scale_fan: bool = False, keep: float = 1.0) -> nn.Module:
    """Weights from the weight seed (the same draw as the unstacked model), mask k's scores from its seed."""
    with torch.no_grad():
        for index, (_, layer) in enumerate(stacked_layers(model)):
            w = weight_values(layer.shape, index, weight_seed, weight_init, scale_fan, keep)
            layer.weight.copy_(w.expand_as(layer.weight))
            for k, seed in enumerate(score_seeds):
                layer.scores[k].copy_(init_scores(layer.shape, generator(seed, SCORE_STREAM, index)))
            layer.invalidate()
    return model
