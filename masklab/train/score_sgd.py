"""SGD on the scores of stacked layers, fused with the next step's mask selection (CPU).

torch.optim.SGD over (K, *shape) scores, plus autograd through the straight-through selection, costs about
ten passes over every score per step, most of them allocating (K, n) temporaries; on a CPU these cost as
much as the matrix products and keep K stacked masks from being faster than K separate runs. Here autograd
computes only dL/dW_eff (the gradient w.r.t. each layer's effective-weight tensor, a leaf), and one numba
kernel per layer, parallel over masks, does the rest in three streaming passes per mask (update; write
the weights above the bracketed threshold; collect the few inside it, see `masklab.nn.select`):

    g_s  = dL/dW_eff * W * sign(s)          the straight-through gradient (layers.py); for Biprop
                                            dL/dW_eff * sign(W) * |W| is the same number
    d    = g_s + weight_decay * s
    buf  = momentum * buf + d               torch.optim.SGD: dampening 0, no Nesterov
    s    = s - lr * buf
    W_eff = W * top-k(|s|)                  for the next forward (`select_rows`); for Biprop the kernel
                                            writes the mask and torch applies sign(W) * alpha, with the
                                            expression of the other paths, so that alpha is bit-identical

This is torch.optim.SGD step for step (a zero momentum buffer makes the first step `buf = d`, as torch's
clone does); results agree to float rounding (torch fuses `s - lr * buf` into one FMA, numba rounds twice).
Each mask's row only reads its own scores, gradient and buffer, so a mask's result does not depend on K;
every CPU mask run trains through this optimiser, K = 1 included (one training path).
"""

from __future__ import annotations

import numpy as np
import torch

from masklab.nn.device_path import cpu_path
from masklab.nn.select import match_torch_threads, numba, rows_view

if numba is not None:
    from numba import njit, prange

    from masklab.nn.select import _select_row

    @njit(cache=True, nogil=True)
    def _update_row(grad, weight, scores, buf, lr, momentum, weight_decay):
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for i in range(scores.size):  # branch-free, so that it vectorises
            s = scores[i]
            sign = (one if s > zero else zero) - (one if s < zero else zero)
            b = buf[i] * momentum + (grad[i] * weight[i] * sign + weight_decay * s)
            buf[i] = b
            scores[i] = s - lr * b

    @njit(cache=True, nogil=True)
    def _step_one(grad, weight, scores, buf, lr, momentum, weight_decay, k, biprop, out, state, candidates, r):
        w = weight[0] if weight.shape[0] == 1 else weight[r]
        _update_row(grad[r], w, scores[r], buf[r], lr, momentum, weight_decay)
        _select_row(scores[r].view(np.uint32), w, k, biprop, out[r], state[r], candidates[r])

    # Parallel over masks, or serial (see `match_torch_threads`).
    @njit(cache=True, parallel=True)
    def _step_rows_parallel(grad, weight, scores, buf, lr, momentum, weight_decay, k, biprop, out, state,
                            candidates):
        for r in prange(scores.shape[0]):
            _step_one(grad, weight, scores, buf, lr, momentum, weight_decay, k, biprop, out, state, candidates, r)

    @njit(cache=True, nogil=True)
    def _step_rows_serial(grad, weight, scores, buf, lr, momentum, weight_decay, k, biprop, out, state, candidates):
        for r in range(scores.shape[0]):
            _step_one(grad, weight, scores, buf, lr, momentum, weight_decay, k, biprop, out, state, candidates, r)


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused path runs here: the CPU path (`masklab.nn.device_path`) with numba."""
    return numba is not None and cpu_path(device)


class FusedScoreSGD:
    """torch.optim.SGD over the scores of `layers` (StackedLayer), fused with the straight-through
    gradient and the next selection. Same interface as the trainer uses: `param_groups[0]["lr"]`,
    `zero_grad()`, `step()`. Turns the layers' fused mode on (see `StackedLayer.effective_weight`)."""

    def __init__(self, layers: list, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 buffers: list[torch.Tensor] | None = None):
        self.layers = list(layers)
        self.param_groups = [{"lr": lr, "momentum": momentum, "weight_decay": weight_decay}]
        # the momentum buffers: zeros, or given (rows of a stack's buffers, see masklab.train.substacks)
        self.buffers = buffers if buffers is not None else \
            [torch.zeros_like(layer.scores, memory_format=torch.contiguous_format) for layer in self.layers]
        for layer in self.layers:
            if layer.scores.device.type != "cpu" or layer.scores.dtype != torch.float32:
                raise ValueError("FusedScoreSGD runs on CPU float32 scores only; use torch.optim.SGD elsewhere")
            layer.set_fused(True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for layer in self.layers:
            layer.fused_zero_grad()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, momentum, decay = (np.float32(group[key]) for key in ("lr", "momentum", "weight_decay"))
        step_rows = _step_rows_parallel if match_torch_threads() else _step_rows_serial
        for layer, buf in zip(self.layers, self.buffers):
            grad = layer.fused_grad()
            if grad is None:
                continue
            K = layer.K
            w_eff = layer.fused_weight()
            weight = layer.weight.detach()
            step_rows(rows_view(grad, K), rows_view(weight, K if layer.per_mask_weights else 1),
                       rows_view(layer.scores, K), rows_view(buf, K), lr, momentum, decay, layer.n_keep,
                       layer.method == "biprop", rows_view(w_eff, K), layer.select_state.rows,
                       layer.select_state.candidates)
            layer.fused_updated()

