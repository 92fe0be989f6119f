"""Stacked subnet layers: K masks over the same frozen weights, trained in one pass.

Layout of activations (so the model builders in `models.py` work unchanged):
- conv activations are (B, K*C, H, W), mask-major channels; BatchNorm over K*C channels keeps statistics
  per mask for free;
- linear activations are (K, B, F); a linear is one batched matmul (one product per mask);
- Flatten of (B, K*C, H, W) gives (B, K*F), which a stacked linear reads as (K, B, F): each mask's
  features stay in the same C-order as in the unstacked model;
- the model input is shared by all K masks, (B, *input_shape), or per mask, (B, K*C, H, W) resp.
  (B, K*F) when each mask sees its own batch.
Logits come out as (K, B, classes). Scores are (K, *shape); the weights are shared (shape) or, once
recycling can change them, per mask (K, *shape).

Mask k's numbers depend only on its own seeds, never on K or on its neighbours (see `masklab.nn.exact`):
every product is one per mask, with the shapes a lone mask has (a batched matmul; on CPU a loop of
convolutions, on CUDA one grouped convolution, `grouped_conv2d`, which is fast there but not bit-exact), and every
per-mask reduction runs in a fixed order. With K = 1 this is the one training path of every mask run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from masklab.keep import n_keep as count_keep
from masklab.nn.device_path import cpu_path
from masklab.nn.exact import BatchNorm2d, biprop_alpha, one_thread, per_mask_bmm
from masklab.nn.init import SCORE_STREAM, generator, init_scores, weight_values
from masklab.nn.select import SelectState, select_rows
from masklab.nn.straight_through import per_row, row_masks, straight_through


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
        # Fused mode (CPU, see masklab.train.score_sgd): the forward computes with `_w_eff`, a leaf tensor,
        # the backward writes dL/dW_eff into `_grad`, and FusedScoreSGD updates scores and `_w_eff` in place.
        # Its writes do not bump the tensors' version counters, so `generation` counts them for cache keys.
        self.fused = False
        self.generation = 0
        self._w_eff: torch.Tensor | None = None
        self._w_eff_key: tuple | None = None
        self._grad: torch.Tensor | None = None
        self._grad_filled = False
        self._sign: tuple | None = None
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
        """Forget what was computed from the scores and weights (also sign(W): a sub-stack's weights are views
        whose version counter does not see writes through the stack's, see masklab.train.substacks)."""
        self._cache = None
        self._w_eff_key = None
        self._sign = None

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
        """Biprop: turn the 0/1 masks the selection wrote into sign(W) * alpha * mask, with alpha from
        `biprop_alpha`, as every other path computes it (bit-identical gains matter: Biprop's
        pre-activations are sums of +-alpha * x and sit exactly on ReLU's kink often enough that one ulp
        of alpha changes a gradient)."""
        if self.method != "biprop":
            return
        assert self._w_eff is not None
        values = self._w_eff.detach()
        key = (self.weight._version, self.weight.data_ptr())
        if self._sign is None or self._sign[0] != key:  # sign(W) and a scratch buffer, kept between steps
            self._sign = (key, torch.sign(self.weight.detach()), torch.empty_like(values))
        _, sign_weight, scratch = self._sign
        alphas = biprop_alpha(self.weight, values, self.n_keep)
        values.mul_(torch.mul(sign_weight, per_row(alphas, values), out=scratch))

    def grad_buffer(self) -> torch.Tensor:
        """The persistent (K, *shape) buffer a fused backward writes dL/dW_eff into."""
        if self._grad is None:
            self._grad = torch.empty(self.scores.shape)
        self._grad_filled = True
        return self._grad

    def fused_grad(self) -> torch.Tensor | None:
        """dL/dW_eff of the last backward (the persistent buffer), None if no backward reached the layer."""
        return self._grad if self._grad_filled else None

    def fused_zero_grad(self) -> None:
        self._grad_filled = False

    def fused_updated(self) -> None:
        """Scores and effective weights (for Biprop: masks) were just updated in place by FusedScoreSGD."""
        self._apply_gain()
        self.generation += 1
        self._w_eff_key = self._key()

    # ---- masks ----------------------------------------------------------------------------------
    def masks(self) -> torch.Tensor:
        """(K, *shape) bool masks, cached until scores or weights change."""
        return self._cached()[1]

    def _cached(self) -> tuple:
        """(key, masks, alphas, effective weights), recomputed when the scores or weights changed."""
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                masks = row_masks(self.scores, self.n_keep)
                w = self.weight.expand(self.K, *self.shape)
                alphas = biprop_alpha(self.weight, masks, self.n_keep)
                values = masks.to(self.weight.dtype)
                if self.method == "biprop":
                    w_eff = torch.sign(w) * per_row(alphas, values) * values
                else:
                    w_eff = w * values
            self._cache = (key, masks, alphas, w_eff)
        return self._cache

    def mask(self, k: int) -> torch.Tensor:
        return self.masks()[k]

    def alphas(self) -> torch.Tensor:
        return self._cached()[2]

    def effective_weight(self) -> torch.Tensor:
        """(K, *shape): the weights each mask computes with."""
        if self.fused:
            return self.fused_weight()
        if not (torch.is_grad_enabled() and self.scores.requires_grad):
            return self._cached()[3]
        return straight_through(self.scores, self.n_keep, self.weight, self.method)

    def _weight_for_forward(self) -> tuple[torch.Tensor, bool]:
        """(the effective weights, whether the backward writes their gradient into `grad_buffer`)."""
        fused = self.fused and torch.is_grad_enabled()
        return (self.fused_weight() if fused else self.effective_weight()), fused

    def extra_repr(self) -> str:
        return f"K={self.K}, shape={self.shape}, method={self.method}, keep={self.n_keep}"


# ---- linear ---------------------------------------------------------------------------------------------
def _per_mask_input(x: torch.Tensor, K: int, n_in: int) -> torch.Tensor:
    """(K, B, in) from (K, B, in), from (B, K*in) (the flatten of stacked conv activations) or from a
    (B, in) input that every mask shares."""
    if x.dim() == 2:
        return x.expand(K, *x.shape) if x.shape[1] == n_in else x.view(x.shape[0], K, n_in).transpose(0, 1)
    return x


def _stacked_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    K, n_out, n_in = w.shape
    return per_mask_bmm(_per_mask_input(x, K, n_in), w.transpose(1, 2))


class _StackedLinear(torch.autograd.Function):
    """One product per mask (a batched matmul), forward and backward. With `buffer` (fused mode) the
    weight gradient goes into the layer's persistent buffer (`out=`), not into a fresh (K, out, in) tensor
    per step, whose page faults cost as much as a quarter of the GEMM that fills it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, layer: StackedLayer, fused: bool) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.layer, ctx.fused = layer, fused
        kind = x.device.type  # under autocast (--precision bf16) the backward's products are cast the same way
        ctx.autocast = (kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else None
        return _stacked_linear(x, w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.autocast is None:
            return _StackedLinear._backward(ctx, grad_out)
        with torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1]):
            return _StackedLinear._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        x, w = ctx.saved_tensors
        K, n_out, n_in = w.shape
        xs = _per_mask_input(x, K, n_in)
        grad_w = grad_x = None
        if ctx.fused:
            per_mask_bmm(grad_out.transpose(1, 2), xs, out=ctx.layer.grad_buffer())
        elif ctx.needs_input_grad[1]:
            grad_w = per_mask_bmm(grad_out.transpose(1, 2), xs)
        if ctx.needs_input_grad[0]:
            per_mask = per_mask_bmm(grad_out, w)  # (K, B, in)
            if x.dim() == 3:
                grad_x = per_mask
            elif x.shape[1] == n_in:  # a shared input: the masks' gradients added in mask order
                grad_x = per_mask[0] if K == 1 else per_mask.sum(0)
            else:
                grad_x = per_mask.transpose(0, 1).reshape(x.shape)
        return grad_x, grad_w, None, None


class StackedLinear(StackedLayer):
    def __init__(self, in_features, out_features, K, method, sparsity, per_mask_weights=False):
        super().__init__((out_features, in_features), K, method, sparsity, per_mask_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, fused = self._weight_for_forward()
        if not torch.is_grad_enabled():
            return _stacked_linear(x, w)
        return _StackedLinear.apply(x, w, self, fused)


# ---- convolution ----------------------------------------------------------------------------------------
def _conv_inputs(x: torch.Tensor, K: int, in_c: int) -> list[torch.Tensor]:
    """Each mask's input: the shared (B, C, H, W) input, or mask k's channels of (B, K*C, H, W)."""
    if x.shape[1] == in_c:
        return [x] * K
    return [part.contiguous() for part in x.split(in_c, 1)]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """The masks' (B, C, H, W) activations side by side as (B, K*C, H, W); one mask's as it is (no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class _PerMaskConv(torch.autograd.Function):
    """K convolutions of a lone mask's shape (CPU), their weight gradients on one thread (see
    `masklab.nn.exact`); with `fused`, the weight gradients go into the layer's persistent buffer."""

    @staticmethod
    def forward(ctx, x, w, layer, fused):
        K, in_c = w.shape[0], layer.shape[1]
        xs = _conv_inputs(x, K, in_c)
        ctx.shared = x.shape[1] == in_c
        if ctx.shared:
            ctx.save_for_backward(x, w)
        else:
            ctx.save_for_backward(*xs, w)
        ctx.layer, ctx.fused = layer, fused
        return _cat([F.conv2d(xs[k], w[k], None, layer.stride, layer.padding) for k in range(K)])

    @staticmethod
    def backward(ctx, grad):
        *xs, w = ctx.saved_tensors
        layer, K = ctx.layer, w.shape[0]
        xs = xs * K if ctx.shared else xs
        grads = [g.contiguous() for g in grad.split(layer.shape[0], 1)]
        conv = ([layer.stride] * 2, [layer.padding] * 2, [1, 1], False, [0, 0], 1)
        backward = torch.ops.aten.convolution_backward
        need_x, need_w = ctx.needs_input_grad[0], ctx.fused or ctx.needs_input_grad[1]
        grad_x = [backward(grads[k], xs[k], w[k], None, *conv, [True, False, False])[0] for k in range(K)] \
            if need_x else None
        grad_w = None
        if need_w:
            out = layer.grad_buffer() if ctx.fused else torch.empty_like(w)
            with one_thread():  # the batch reduction must not be split across threads
                for k in range(K):
                    out[k].copy_(backward(grads[k], xs[k], w[k], None, *conv, [False, True, False])[1])
            grad_w = None if ctx.fused else out
        if grad_x is not None:
            if not ctx.shared:
                grad_x = _cat(grad_x)
            else:  # a shared input: the masks' gradients added in mask order
                total = grad_x[0]
                for g in grad_x[1:]:
                    total = total + g
                grad_x = total
        return grad_x, grad_w, None, None


class StackedConv2d(StackedLayer):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, K, method, sparsity,
                 per_mask_weights=False):
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), K, method, sparsity, per_mask_weights)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, fused = self._weight_for_forward()
        if cpu_path(x):
            if torch.is_grad_enabled():
                return _PerMaskConv.apply(x, w, self, fused)
            return _cat([F.conv2d(xk, w[k], None, self.stride, self.padding)
                         for k, xk in enumerate(_conv_inputs(x, self.K, self.shape[1]))])
        return grouped_conv2d(x, w, self.stride, self.padding)


def grouped_conv2d(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """K masks' convolutions as one convolution (the device path: one kernel launch for the stack).

    `w` is (K, out, in, kh, kw); `x` is the input every mask shares, (B, in, H, W), or each mask's own,
    (B, K*in, H, W). Returns (B, K*out, H', W'), mask-major channels, the numbers of K separate
    `F.conv2d(x_k, w[k])` up to the rounding of the algorithm cuDNN picks for the larger shape (not
    bit-exact: the CPU path runs one convolution per mask instead).

    Examples
    --------
    >>> x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 6, 3, 3, 3)
    >>> grouped_conv2d(x, w, padding=1).shape
    torch.Size([2, 24, 5, 5])
    """
    K, out_c, in_c = w.shape[:3]
    groups = 1 if x.shape[1] == in_c else K  # a shared input: one convolution makes all K outputs
    return F.conv2d(x, w.reshape(K * out_c, in_c, *w.shape[3:]), None, stride, padding, 1, groups)


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
        return BatchNorm2d(self.K * channels, affine=False)


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
