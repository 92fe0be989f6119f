"""A stack of K masks trained as sub-stacks of k masks that share its tensors (CPU).

Every per-mask tensor of a stacked model is (K, ...) or (K*C,) mask-major: scores, per-mask weights, the
optimiser's momentum, the selection's bracket state, BatchNorm's running statistics. A sub-stack of masks
[a, b) is a model of b - a masks whose tensors are views of rows a..b of the stack's, so training it trains
those masks of the stack in place, and changing k between blocks of steps moves nothing. Mask k's numbers
do not depend on which sub-stack it is in (`masklab.nn.stacked`), so the stack size is chosen for speed
(`masklab.train.plan`); `--stack auto` measures k = K against k = 1.
"""

from __future__ import annotations

import torch
from torch import nn

from masklab.nn.models import build_model
from masklab.nn.select import SelectState
from masklab.nn.stacked import StackedLayerMaker, stacked_layers
from masklab.train.score_sgd import FusedScoreSGD


class _RowsState(SelectState):
    """Rows a..b of a stack's selection state (views)."""

    def __init__(self, whole: SelectState, a: int, b: int):  # noqa: D107 -- no allocation: views
        self.rows = whole.rows[a:b]
        self.candidates = whole.candidates[a:b]


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


class SubStacks:
    """The sub-stacks of size k of a stacked model (built once per k, their tensors views of the stack's)."""

    def __init__(self, config, dataset, model: nn.Module, optimizer: FusedScoreSGD):
        self.config, self.dataset, self.model, self.optimizer = config, dataset, model, optimizer
        self.layers = [layer for _, layer in stacked_layers(model)]
        self.K = self.layers[0].K
        self._parts: dict[int, list[tuple[int, int, nn.Module, FusedScoreSGD]]] = {}
        self._current: int | None = None
        for layer in self.layers:
            if layer.select_state is None:
                layer.select_state = SelectState(layer.K, layer.n_weights)

    def parts(self, k: int) -> list[tuple[int, int, nn.Module, FusedScoreSGD]]:
        """[(a, b, model, optimizer)] for sub-stacks of k masks (the last may be smaller); k >= K: the stack."""
        k = min(k, self.K)
        if k not in self._parts:
            if k == self.K:
                self._parts[k] = [(0, self.K, self.model, self.optimizer)]
            else:
                self._parts[k] = [self._make(a, min(a + k, self.K)) for a in range(0, self.K, k)]
        if self._current != k:  # scores moved under the other sub-stacks' cached effective weights
            self.invalidate()
            self._current = k
        for _, _, _, optimizer in self._parts[k]:
            optimizer.param_groups[0]["lr"] = self.optimizer.param_groups[0]["lr"]
        return self._parts[k]

    def invalidate(self) -> None:
        """Forget every cached effective weight (after the stack's tensors changed: recycling, a resume)."""
        for parts in self._parts.values():
            for _, _, model, _ in parts:
                for _, layer in stacked_layers(model):
                    layer.invalidate()
        for layer in self.layers:
            layer.invalidate()

    def sync_batchnorm(self, k: int) -> None:
        """After a block run as sub-stacks: BatchNorm's step counters back into the stack (all sub-stacks
        counted the same steps)."""
        parts = self.parts(k)
        if parts[0][2] is self.model:
            return
        for whole, part in zip(_batchnorms(self.model), _batchnorms(parts[0][2])):
            if whole.num_batches_tracked is not None and part.num_batches_tracked is not None:
                whole.num_batches_tracked.copy_(part.num_batches_tracked)

    def start_block(self, k: int) -> None:
        """Before a block run as sub-stacks: their BatchNorm step counters from the stack."""
        parts = self.parts(k)
        if parts[0][2] is self.model:
            return
        for _, _, model, _ in parts:
            for whole, part in zip(_batchnorms(self.model), _batchnorms(model)):
                if whole.num_batches_tracked is not None and part.num_batches_tracked is not None:
                    part.num_batches_tracked.copy_(whole.num_batches_tracked)

    def _make(self, a: int, b: int) -> tuple[int, int, nn.Module, FusedScoreSGD]:
        config, dataset = self.config, self.dataset
        maker = StackedLayerMaker(config.method, config.sparsity, b - a, config.recycle != "none")
        with torch.device("meta"):  # no memory: every tensor is replaced by a view below
            sub = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, maker=maker)
        for (_, part), whole in zip(stacked_layers(sub), self.layers):
            part.weight = whole.weight if not whole.per_mask_weights else \
                nn.Parameter(whole.weight.data[a:b], requires_grad=False)
            part.scores = nn.Parameter(whole.scores.data[a:b])
            assert whole.select_state is not None
            part.select_state = _RowsState(whole.select_state, a, b)
        for whole_bn, part_bn in zip(_batchnorms(self.model), _batchnorms(sub)):
            C = whole_bn.num_features // self.K
            part_bn.running_mean = whole_bn.running_mean[a * C:b * C]  # type: ignore[index]
            part_bn.running_var = whole_bn.running_var[a * C:b * C]  # type: ignore[index]
            if whole_bn.num_batches_tracked is not None:
                part_bn.num_batches_tracked = whole_bn.num_batches_tracked.clone()
        group = self.optimizer.param_groups[0]
        optimizer = FusedScoreSGD([layer for _, layer in stacked_layers(sub)], group["lr"], group["momentum"],
                                  group["weight_decay"], buffers=[buf[a:b] for buf in self.optimizer.buffers])
        sub.train(self.model.training)
        return a, b, sub, optimizer


__all__ = ["SubStacks"]
