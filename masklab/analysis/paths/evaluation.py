"""Evaluating a model along a path: the fixed evaluation set, BatchNorm recompute, the path evaluator.

Evaluation: mean cross-entropy, accuracy and error (1 - accuracy) on the test split when it has at most
`eval_samples` samples (default 2000; None: always the whole split), else on a fixed subset of
`eval_samples` test samples (seed 0, the same for every pair and every `random_state`), in batches of 1000
as `masklab.train.evaluate` does, so that on the whole test split the ends reproduce each mask's recorded
test loss and accuracy exactly. Models with BatchNorm (resnet18) get their running statistics recomputed
at every point (reset, cumulative average over `bn_samples` = 1024 fixed, non-augmented training samples in
batches of the run's batch size, train mode, no gradient); models without BatchNorm are left alone.
With `recompute_bn=False` the model's statistics are used as they are, at every point: for a stored run
those stored with mask `a` if the run keeps them, else freshly initialised ones (mean 0, variance 1).

The model is built once (`PathEvaluator`) and only its pinned masks (and, for own-weight runs, its weights)
change from point to point; the points come from `masklab.analysis.paths.geometry`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm  # the plain bar: tqdm.auto needs ipywidgets in a notebook (else a warning)

from masklab.analysis.paths.geometry import DEFAULT_POINTS, Subnet, check_args, check_pair, path_points
from masklab.errors import UserError
from masklab.nn.layers import masked_layers
from masklab.train.evaluate import evaluate_batches
from masklab.train.precision import evaluation_settings

if TYPE_CHECKING:
    from masklab.data import Dataset

DEFAULT_EVAL_SAMPLES = 2000
DEFAULT_BN_SAMPLES = 1024
EVAL_SEED = 0  # the evaluation subset never depends on random_state: every pair is measured on the same samples
EVAL_BATCH = 1000  # as masklab.train.evaluate.evaluate, so that the ends reproduce the recorded figures exactly
SERIAL_EVAL_WORK = 1 << 28  # samples x masked weights of one evaluation below which it runs on one torch thread

CURVE_COLUMNS = ["mask_a", "mask_b", "path", "order", "point", "t", "hamming_to_a", "hamming_to_b", "loss", "acc",
                 "error"]


# ---- evaluation sets ----------------------------------------------------------------------------------------
def evaluation_batches(dataset: Dataset, eval_samples: int | None = DEFAULT_EVAL_SAMPLES, device="cpu",
                       seed: int = EVAL_SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed evaluation set: the whole test split when it has at most `eval_samples` samples (or when
    `eval_samples` is None), else `eval_samples` test samples picked by `seed` (kept in test-split order);
    normalised, in batches of 1000, on `device`."""
    if eval_samples is not None and (not isinstance(eval_samples, (int, np.integer)) or eval_samples < 1):
        raise UserError(f"eval_samples = {eval_samples!r} is invalid: use an integer >= 1 or None (the whole "
                        "test split)")
    if eval_samples is None or eval_samples >= dataset.n_test:
        return list(dataset.test_batches(EVAL_BATCH, device=device))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.sort(torch.randperm(dataset.n_test, generator=gen)[:int(eval_samples)]).values
    return [(dataset.normalize(dataset.x_test[idx[s:s + EVAL_BATCH]], device),
             dataset.y_test[idx[s:s + EVAL_BATCH]].to(device)) for s in range(0, len(idx), EVAL_BATCH)]


def batchnorm_batches(dataset: Dataset, bn_samples: int = DEFAULT_BN_SAMPLES, batch_size: int = 128, device="cpu",
                      seed: int = EVAL_SEED) -> list[torch.Tensor]:
    """`bn_samples` fixed training samples (not augmented), in batches of `batch_size`, for recomputing
    BatchNorm statistics."""
    if not isinstance(bn_samples, (int, np.integer)) or bn_samples < 1:
        raise UserError(f"bn_samples = {bn_samples!r} is invalid: use an integer >= 1")
    x, _ = dataset.eval_subset(int(bn_samples), seed, device)
    return [x[s:s + batch_size] for s in range(0, len(x), batch_size)]


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers (any dimension)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor]) -> bool:
    """Reset every BatchNorm's running statistics and recompute them as the cumulative average over
    `batches` (train mode, no gradient). Returns False (and does nothing) for a model without BatchNorm."""
    bns = batchnorm_modules(model)
    if not bns:
        return False
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return True


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch limited to `threads` intra-op threads (None: as it is), then restore."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(previous)


# ---- the core: one model, many paths ------------------------------------------------------------------------
class PathEvaluator:
    """Evaluates paths between masks on one model (built once): at each point it re-pins the layers' masks
    (and sets the weights of layers whose ends differ), recomputes BatchNorm statistics when `bn_batches`
    is given and the model has BatchNorm, and evaluates on `eval_batches`.

    The model must have the run's layers (e.g. `masklab.train.make_model(config, dataset)`); its masked
    layers' weights are the shared weights of ends that carry none. Its state (weights, pins, BatchNorm
    statistics) is restored after every path.
    """

    def __init__(self, model: nn.Module, eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 bn_batches: Sequence[torch.Tensor] | None = None, precision: str = "fp32"):
        self.model = model
        self.layers = [layer for _, layer in masked_layers(model)]
        if not self.layers:
            raise UserError("the model has no masked layers to interpolate")
        self.eval_batches = list(eval_batches)
        self.bn_batches = list(bn_batches) if bn_batches is not None and batchnorm_modules(model) else None
        self.device = self.layers[0].weight.device
        self.precision = precision  # on CUDA, the settings the masks trained under (`evaluation_settings`)
        # one evaluation of a small model is a few milliseconds: torch's second thread then costs more than it
        # gives (on a busy 2-core machine 2-6x slower than one thread), so small work runs on one thread
        samples = sum(len(y) for _, y in self.eval_batches) + sum(len(x) for x in self.bn_batches or [])
        work = samples * sum(layer.weight.numel() for layer in self.layers)
        self.threads = 1 if self.device.type == "cpu" and work < SERIAL_EVAL_WORK else None

    def evaluate(self) -> tuple[float, float]:
        if self.bn_batches is not None:
            recompute_batchnorm(self.model, self.bn_batches)
        return evaluate_batches(self.model, self.eval_batches)

    @torch.no_grad()
    def curve(self, a: Subnet, b: Subnet, path: str = "soft", points: int = DEFAULT_POINTS, orders: int = 1,
              order: str = "random", random_state: int = 0, ids: tuple = (None, None),
              progress: bool = False) -> pd.DataFrame:
        """Loss and accuracy along the path(s) from `a` to `b`: one row per point (and order), columns
        `CURVE_COLUMNS`. `progress`: a progress line (tqdm, on stderr) counting the points evaluated."""
        check_args(path, points, orders, order)
        a, b = a.to(self.device), b.to(self.device)
        base = [layer.weight.detach().clone() for layer in self.layers]
        check_pair(a, b, [tuple(w.shape) for w in base])
        pins = [layer.pinned for layer in self.layers]
        buffers = {name: buf.clone() for name, buf in self.model.named_buffers()}
        n_bits = sum(m.numel() for m in a.masks)
        rows = []
        bar = tqdm(total=orders * points, disable=not progress, unit="point", leave=False,
                   desc=f"{path} path {ids[0]}-{ids[1]}" if ids[0] is not None else f"{path} path")
        try:
            with torch_threads(self.threads), evaluation_settings(self.device, self.precision):
                for k in range(orders):
                    self._set_weights(a.weights if a.weights is not None else base)
                    for p in path_points(a, b, path, points, order=order, order_index=k, random_state=random_state,
                                         base_weights=base):
                        for layer, mask, weight in zip(self.layers, p.masks, p.weights):
                            if weight is not None:
                                layer.weight.copy_(weight)
                            layer.pin(mask)
                        loss, acc = self.evaluate()
                        rows.append({"mask_a": ids[0], "mask_b": ids[1], "path": path, "order": k, "point": p.point,
                                     "t": p.t, "hamming_to_a": p.to_a / n_bits, "hamming_to_b": p.to_b / n_bits,
                                     "loss": loss, "acc": acc, "error": 1.0 - acc})
                        bar.update(1)
        finally:
            bar.close()
            self._set_weights(base)
            for layer, pin in zip(self.layers, pins):
                layer.pin(pin)
            for name, buf in self.model.named_buffers():
                buf.copy_(buffers[name])
        return pd.DataFrame(rows, columns=CURVE_COLUMNS)

    def _set_weights(self, weights: list[torch.Tensor]) -> None:
        for layer, w in zip(self.layers, weights):
            if layer.weight.data_ptr() != w.data_ptr() and not torch.equal(layer.weight, w):
                layer.weight.copy_(w)
                layer.invalidate()


__all__ = ["CURVE_COLUMNS", "DEFAULT_BN_SAMPLES", "DEFAULT_EVAL_SAMPLES", "PathEvaluator", "batchnorm_batches",
           "batchnorm_modules", "evaluation_batches", "recompute_batchnorm", "torch_threads"]
