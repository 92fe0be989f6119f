"""The one training path: masks of a run, K at a time (K = 1 included), SGD with momentum, cosine
schedule per epoch, weight recycling on the schedule.

`train_masks(config, indices)` trains the masks `indices` together in one pass over the shared frozen
weights (`masklab.nn.stacked`): the loss is the sum of the K masks' mean cross-entropies, so each mask's
score gradient is exactly its own, and the optimiser (on CPU `FusedScoreSGD`) updates each mask's row
from its own numbers only. Every product is one per mask and every reduction runs in a fixed order
(`masklab.nn.exact`), so on CPU mask i's bits, scores, recycling maps and metrics are the same whatever
K, its neighbours in the stack, the thread count or the process. `train_mask(config, i)` is K = 1.
Dense runs (trained weights, the baseline) go through the same epoch loop, one network at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from masklab.config import RunConfig
from masklab.data import Batches, Shaped
from masklab.errors import UserError
from masklab.nn.exact import blas_one_thread, reproducible_blas, set_threads
from masklab.nn.layers import masked_layers
from masklab.nn.stacked import stacked_layers
from masklab.train.device import SMALL_STEP_MACS, EpochThreads, macs_per_sample, resolve_device, step_threads
from masklab.train.evaluate import evaluate
from masklab.train.rebuild import rebuild_trained
from masklab.train.recycling import iterand_apply, iwr_apply, recycles_after
from masklab.train.stacked import make_model, make_stacked_model, score_optimizer

__all__ = ["SMALL_STEP_MACS", "TrainedMask", "TrainingDiverged", "build_training", "cosine_lr", "macs_per_sample",
           "make_model", "resolve_device", "step_threads", "train_mask", "train_masks", "train_step"]


class TrainingDiverged(UserError):
    """The loss, scores or weights became infinite or NaN: the learning rate is too large."""


@dataclass
class TrainedMask:
    """One trained subnetwork and how it got there. Arrays are per prunable layer, in model order."""

    index: int
    weight_seed: int
    score_seed: int
    data_seed: int
    layer_names: list[str]
    layer_shapes: list[tuple[int, ...]]
    n_keep: list[int]
    masks: list[np.ndarray]  # bool, layer shape
    history: pd.DataFrame  # one row per epoch
    metrics: dict  # final and best figures, wall time
    scores: list[np.ndarray] | None = None  # float32, layer shape
    src: list[np.ndarray] | None = None  # IWR: final weight i = initial weight src[i] (flat int64)
    draw: list[np.ndarray] | None = None  # IteRand: position i holds fresh draw number draw[i] (0: initial)
    weights: list[np.ndarray] | None = None  # dense: the trained weights
    alphas: list[float] | None = None  # Biprop gain per layer
    snapshots: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (epoch, masks)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # BatchNorm running statistics
    trained_with: dict = field(default_factory=dict)  # stack size, position, device, threads, BLAS mode


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch `epoch` (from 0): 0.5 * (1 + cos(pi * e / E)) * base."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * base_lr


def train_masks(config: RunConfig, indices: Sequence[int], dataset: Batches | None = None,
                device: str | torch.device | None = None,
                on_epoch: Callable[[dict], None] | None = None,
                snapshot_every: int | None = None) -> list[TrainedMask]:
    """Train masks `indices` of the run `config` together; one TrainedMask per index, in order.

    `dataset` defaults to loading `config.dataset`; `on_epoch` receives each mask's row of each epoch
    (the K rows of an epoch one after another, for progress bars); `snapshot_every` (default: the
    config's) keeps the masks every E epochs. Dense runs train their networks one after another.
    """
    from masklab.data import load_config_dataset

    config.validate()
    indices = [int(i) for i in indices]
    if not indices:
        return []
    dataset = dataset if dataset is not None else load_config_dataset(config)
    device = resolve_device(config.device) if device is None else torch.device(device)
    if config.method == "dense" and len(indices) > 1:
        return [r for i in indices for r in train_masks(config, [i], dataset, device, on_epoch, snapshot_every)]
    with step_threads(config, dataset, device, len(indices)) as tuner, blas_one_thread():
        return _train(config, indices, dataset, device, on_epoch,
                      config.snapshot_every if snapshot_every is None else snapshot_every, tuner)


def train_mask(config: RunConfig, index: int = 0, dataset: Batches | None = None,
               device: str | torch.device | None = None,
               on_epoch: Callable[[dict], None] | None = None, snapshot_every: int | None = None) -> TrainedMask:
    """Train mask `index` of the run `config` alone (`train_masks` with K = 1) and return it."""
    return train_masks(config, [index], dataset, device, on_epoch, snapshot_every)[0]


class _Lone(nn.Module):
    """A single network seen as a stack of one: logits (1, B, classes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unsqueeze(0)


def build_training(config: RunConfig, dataset: Shaped, indices: list[int], device: torch.device):
    """What one training step needs for masks `indices`: (model giving (K, B, classes) logits, its layers
    in mask-bit order, the optimiser at the base learning rate). Benchmarks time steps through it."""
    base_lr = config.resolved("lr")
    if config.method == "dense":
        net = make_model(config, dataset, config.seeds(indices[0])[1]).to(device)
        dense_layers = masked_layers(net)
        weights = [layer.weight for _, layer in dense_layers]
        optimizer = torch.optim.SGD(weights, lr=base_lr, momentum=config.momentum, weight_decay=config.weight_decay)
        return _Lone(net), dense_layers, optimizer
    model = make_stacked_model(config, dataset, indices).to(device)
    layers = stacked_layers(model)
    optimizer = score_optimizer([layer for _, layer in layers], base_lr, config.momentum, config.weight_decay, device)
    return model, layers, optimizer


def _train(config: RunConfig, indices: list[int], dataset: Batches, device: torch.device, on_epoch,
           snapshot_every: int, tuner: EpochThreads | None = None) -> list[TrainedMask]:
    K = len(indices)
    seeds = [config.seeds(i) for i in indices]
    dense = config.method == "dense"
    blas = reproducible_blas() if device.type == "cpu" else device.type
    start = time.perf_counter()
    model, layers, optimizer = build_training(config, dataset, indices, device)
    base_lr = config.resolved("lr")
    maps = _recycle_maps(config, layers, device)
    recycle_count = 0
    rows: list[list[dict]] = [[] for _ in range(K)]
    snapshots: list[list] = [[] for _ in range(K)]
    threads_used = {torch.get_num_threads()}
    for epoch in range(config.epochs):
        lr = cosine_lr(base_lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if tuner is not None:
            set_threads(tuner.threads(epoch))
            threads_used.add(torch.get_num_threads())
        epoch_start = time.perf_counter()
        train = _train_epoch(model, optimizer, dataset, config, [s[2] for s in seeds], epoch, K, device)
        if tuner is not None:
            tuner.record(epoch, torch.get_num_threads(), time.perf_counter() - epoch_start)
        _check_finite(config, indices, epoch, lr, train, layers, dense)
        test = _evaluate(model, dataset, K, device)
        recycled = [0] * K
        if config.recycle != "none" and recycles_after(epoch, config.epochs, config.resolved("recycle_every"),
                                                       config.recycle_warmup):
            recycle_count += 1
            recycled = _recycle(config, layers, maps, recycle_count)
        for k in range(K):
            row = {"epoch": epoch, "lr": lr, "train_loss": train[k][0], "train_acc": train[k][1],
                   "test_loss": test[k][0], "test_acc": test[k][1], "recycled": recycled[k]}
            rows[k].append(row)
            if on_epoch is not None:
                on_epoch({**row, "index": indices[k], "epochs": config.epochs})
        if snapshot_every and (epoch + 1) % snapshot_every == 0 and epoch + 1 < config.epochs:
            for k in range(K):
                snapshots[k].append((epoch, _masks_of(layers, k, dense)))
    seconds = (time.perf_counter() - start) / K
    threads = max(threads_used)  # (the most any epoch used: the bits do not depend on it)
    results = []
    for k in range(K):
        provenance = {"stack": K, "position": k, "device": str(device), "threads": threads, "blas": blas}
        results.append(_result(config, indices[k], seeds[k], k, layers, maps, snapshots[k], recycle_count,
                               seconds, dense, provenance))
    _split_buffers(model, results)
    for result, history in zip(results, rows):  # final figures: the rebuilt subnetwork's, as `Run.model` gives
        loss, acc = evaluate(rebuild_trained(config, dataset, result, device), dataset, device)
        history[-1].update(test_loss=loss, test_acc=acc)
        _finish(result, history, config, recycle_count, seconds)
    return results


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of K stacked masks on a batch (y: (K, B)); returns the (K, B) per-sample losses and
    the logits."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)  # (K, B, classes)
    per_sample = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (K, B)
    per_sample.mean(1).sum().backward()  # d/d(mask k's loss) = 1: each mask gets its own gradient
    optimizer.step()
    return per_sample, logits


def _train_epoch(model, optimizer, dataset, config, data_seeds, epoch, K, device) -> list[tuple[float, float]]:
    model.train()
    total = np.zeros(K, dtype=np.float64)
    correct = np.zeros(K, dtype=np.int64)
    seen = 0
    for x, y in _batches(dataset, config, data_seeds, epoch, K, device):
        per_sample, logits = train_step(model, optimizer, x, y)
        total += per_sample.detach().cpu().numpy().astype(np.float64).sum(1)
        correct += (logits.detach().argmax(2) == y).sum(1).cpu().numpy()
        seen += y.shape[1]
    return [(float(total[k]) / seen, int(correct[k]) / seen) for k in range(K)]


def _batches(dataset, config, data_seeds, epoch, K, device):
    """(x, y) with y of shape (K, B): one shared batch, or each mask its own when data seeds differ."""
    if len(set(data_seeds)) == 1:
        for x, y in dataset.train_batches(config.batch_size, data_seeds[0], epoch, device=device):
            yield x, y.expand(K, -1)
        return
    streams = [dataset.train_batches(config.batch_size, s, epoch, device=device) for s in data_seeds]
    for parts in zip(*streams):
        xs = torch.stack([x for x, _ in parts], 1)  # (B, K, *input_shape)
        yield xs.reshape(xs.shape[0], -1, *xs.shape[3:]) if xs.dim() > 3 else xs.reshape(xs.shape[0], -1), \
            torch.stack([y for _, y in parts])


@torch.no_grad()
def _evaluate(model, dataset, K, device) -> list[tuple[float, float]]:
    model.eval()
    total = np.zeros(K, dtype=np.float64)
    correct = np.zeros(K, dtype=np.int64)
    seen = 0
    for x, y in dataset.test_batches(1000, device=device):
        logits = model(x)
        per_sample = F.cross_entropy(logits.transpose(1, 2), y.expand(K, -1), reduction="none")
        total += per_sample.cpu().numpy().astype(np.float64).sum(1)
        correct += (logits.argmax(2) == y).sum(1).cpu().numpy()
        seen += len(y)
    model.train()
    return [(float(total[k]) / seen, int(correct[k]) / seen) for k in range(K)]


def _check_finite(config, indices, epoch, lr, train, layers, dense) -> None:
    """Stop with a user error naming the learning rate when training has overflowed."""
    values = [(layer.weight if dense else layer.scores) for _, layer in layers]
    finite = [math.isfinite(loss) for loss, _ in train]
    if all(finite) and all(bool(torch.isfinite(v).all()) for v in values):
        return
    default = config.replace(lr=None).resolved("lr")
    if not all(finite):
        k = finite.index(False)
        what = f"mask {indices[k]}'s train loss is {train[k][0]:g}"
    else:
        what = f"the {'weights' if dense else 'scores'} are no longer finite"
    raise TrainingDiverged(f"training diverged in epoch {epoch} at lr {lr:g}: {what}; use a smaller --lr (the "
                           f"{config.method} default is {default})")


def _recycle_maps(config, layers, device):
    K = 1 if config.method == "dense" else layers[0][1].K
    if config.recycle == "iwr":
        return [[torch.arange(math.prod(layer.shape), device=device) for _ in range(K)] for _, layer in layers]
    if config.recycle == "iterand":
        return [[torch.zeros(math.prod(layer.shape), dtype=torch.int32, device=device) for _ in range(K)]
                for _, layer in layers]
    return None


def _recycle(config, layers, maps, t) -> list[int]:
    rate = config.resolved("recycle_rate")
    K = layers[0][1].K
    counts = [0] * K
    with torch.no_grad():
        for i, (_, layer) in enumerate(layers):
            if config.recycle == "iwr":
                for k in range(K):
                    counts[k] += iwr_apply(layer.weight[k], layer.scores[k], maps[i][k], rate, config.recycle_donors)
            else:
                masks = layer.masks().clone()  # IteRand redraws the pruned weights of the masks before this step
                for k in range(K):
                    counts[k] += iterand_apply(layer.weight[k], masks[k], maps[i][k], rate, i, config.weight_seed, t,
                                               config.resolved("weight_init"), config.resolved("scale_fan"),
                                               config.keep)
            layer.invalidate()
    return counts


def _masks_of(layers, k: int, dense: bool) -> list[np.ndarray]:
    if dense:
        return [layer.mask().cpu().numpy() for _, layer in layers]
    return [layer.mask(k).cpu().numpy() for _, layer in layers]


def _result(config, index, seeds, k, layers, maps, snapshots, recycle_count, seconds, dense,
            provenance) -> TrainedMask:
    shapes = [tuple(layer.weight.shape) if dense else layer.shape for _, layer in layers]
    return TrainedMask(
        index=index, weight_seed=seeds[0], score_seed=seeds[1], data_seed=seeds[2],
        layer_names=[name for name, _ in layers], layer_shapes=shapes, n_keep=[layer.n_keep for _, layer in layers],
        masks=_masks_of(layers, k, dense), history=pd.DataFrame(), metrics={},
        scores=None if dense else [layer.scores[k].detach().cpu().numpy().copy() for _, layer in layers],
        src=[m[k].cpu().numpy() for m in maps] if config.recycle == "iwr" else None,
        draw=[m[k].cpu().numpy() for m in maps] if config.recycle == "iterand" else None,
        weights=[layer.weight.detach().cpu().numpy().copy() for _, layer in layers] if dense else None,
        alphas=[float(layer.alphas()[k]) for _, layer in layers] if config.method == "biprop" else None,
        snapshots=snapshots, trained_with=provenance,
    )


def _split_buffers(model, results: list[TrainedMask]) -> None:
    """BatchNorm statistics: K*C channels, mask-major, into each mask's own C (a lone network: as they are)."""
    K = len(results)
    inner = model.net if isinstance(model, _Lone) else model
    for name, buffer in inner.named_buffers():
        value = buffer.detach().cpu()
        for k, result in enumerate(results):
            result.buffers[name] = (value.view(K, -1)[k].reshape(-1) if value.dim() else value).numpy().copy()


def _finish(result: TrainedMask, rows: list[dict], config, recycle_count: int, seconds: float) -> None:
    history = pd.DataFrame(rows)
    best = int(history["test_acc"].idxmax())
    last = rows[-1]
    result.history = history
    result.metrics = {"test_acc": last["test_acc"], "best_test_acc": float(history["test_acc"].max()),
                      "best_epoch": int(history["epoch"].iloc[best]), "test_loss": last["test_loss"],
                      "train_acc": last["train_acc"], "train_loss": last["train_loss"], "epochs": config.epochs,
                      "seconds": seconds, "recycled": recycle_count}
