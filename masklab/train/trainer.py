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

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import islice

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from masklab.config import RunConfig
from masklab.data import Batches, Shaped, load_config_dataset
from masklab.errors import UserError
from masklab.nn.exact import blas_one_thread, map_one_thread, reproducible_blas, set_threads
from masklab.nn.layers import masked_layers
from masklab.nn.stacked import stacked_layers
from masklab.train.device import macs_per_sample, resolve_device
from masklab.train.evaluate import LossTotals, evaluate_predictions
from masklab.train.plan import StepPlan
from masklab.train.precision import autocast_dtype, device_record, step_settings
from masklab.train.rebuild import rebuild_trained
from masklab.train.recycling import iterand_apply, iwr_apply, recycles_after
from masklab.train.score_sgd import FusedScoreSGD, fused_available
from masklab.train.stacked import make_model, make_stacked_model, score_optimizer
from masklab.train.substacks import SubStacks

__all__ = ["Checkpoint", "TrainedMask", "TrainingDiverged", "build_training", "cosine_lr", "macs_per_sample",
           "make_model", "resolve_device", "train_mask", "train_masks", "train_step"]


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
    predictions: np.ndarray | None = None  # the finished subnetwork's predicted class per test sample (int64)


@dataclass
class Checkpoint:
    """One mask's whole training state at the end of epoch `epoch`: what continuing it needs to give the
    bits an uninterrupted run gives. `arrays` (name -> array): per prunable layer i `scores/i` and
    `momentum/i` (the optimiser's buffer), `weights/i` (dense runs, or once recycling changed them),
    `src/i` / `draw/i` (recycling maps), `buffer/NAME` (BatchNorm statistics), `snapshot/j/i` (kept
    masks). `meta`: the history rows, recycling count, seconds and threads so far, snapshot epochs. The
    data order needs nothing: epoch e's batches come from (data seed, e). The selection's bracket state
    only makes selections faster and is not kept."""

    index: int
    epoch: int
    arrays: dict[str, np.ndarray]
    meta: dict

    def snapshots(self) -> list[tuple[int, list[np.ndarray]]]:
        out = []
        for j, epoch in enumerate(self.meta.get("snapshot_epochs", [])):
            layers = sorted((int(k.split("/")[2]), v) for k, v in self.arrays.items()
                            if k.startswith(f"snapshot/{j}/"))
            out.append((int(epoch), [v for _, v in layers]))
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as arrays (the meta as UTF-8 JSON bytes under "meta"), for an .npz file."""
        meta = {**self.meta, "index": self.index, "epoch": self.epoch}
        return {**self.arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Checkpoint:
        meta = json.loads(bytes(arrays["meta"]).decode())
        index, epoch = int(meta.pop("index")), int(meta.pop("epoch"))
        return cls(index, epoch, {k: v for k, v in arrays.items() if k != "meta"}, meta)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch `epoch` (from 0): 0.5 * (1 + cos(pi * e / E)) * base."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * base_lr


def train_masks(config: RunConfig, indices: Sequence[int], dataset: Batches | None = None,
                device: str | torch.device | None = None,
                on_epoch: Callable[[dict], None] | None = None,
                snapshot_every: int | None = None, *,
                on_steps: Callable[[int], None] | None = None,
                on_checkpoint: Callable[[list[Checkpoint]], None] | None = None,
                resume: Sequence[Checkpoint] | None = None,
                stacks: Sequence[int] | None = None) -> list[TrainedMask]:
    """Train masks `indices` of the run `config` together; one TrainedMask per index, in order.

    `dataset` defaults to loading `config.dataset`; `on_epoch` receives each mask's row of each epoch
    (the K rows of an epoch one after another, for progress bars); `on_steps(n)` is told after each block
    of training steps that n mask-steps were done (K per step); `snapshot_every` (default: the config's)
    keeps the masks every E epochs. `on_checkpoint` receives every mask's `Checkpoint` at the end of each
    epoch but the last, and `resume` (one Checkpoint per index, all of the same epoch) continues the masks
    from them: the result is bit for bit that of an uninterrupted run. `stacks`: the sub-stack sizes
    whose speed a CPU run measures (default: K alone; `--stack auto` gives (K, 1)), see
    `masklab.train.plan`. Dense runs train their networks one after another.
    """
    config.validate()
    indices = [int(i) for i in indices]
    if not indices:
        return []
    dataset = dataset if dataset is not None else load_config_dataset(config)
    device = resolve_device(config.device) if device is None else torch.device(device)
    if config.method == "dense" and len(indices) > 1:
        by_index = {c.index: c for c in resume or []}
        return [r for i in indices for r in train_masks(
            config, [i], dataset, device, on_epoch, snapshot_every, on_steps=on_steps, on_checkpoint=on_checkpoint,
            resume=[by_index[i]] if i in by_index else None)]
    if resume is not None:
        resume = _order_checkpoints(resume, indices)
    most = torch.get_num_threads()
    threads = (1, most) if device.type == "cpu" else (most,)
    mask_stacks = tuple(stacks) if stacks and device.type == "cpu" and config.method != "dense" else None
    side = device.type == "cpu" and config.method != "dense" and fused_available(device)  # (sub-stacks need it)
    plan = StepPlan(len(indices), threads, mask_stacks, side)
    try:
        with blas_one_thread(), step_settings(config.precision, device):
            return _train(config, indices, dataset, device, on_epoch,
                          config.snapshot_every if snapshot_every is None else snapshot_every, plan,
                          on_steps, on_checkpoint, resume)
    finally:
        torch.set_num_threads(most)


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
           snapshot_every: int, plan: StepPlan, on_steps=None, on_checkpoint=None,
           resume: list[Checkpoint] | None = None) -> list[TrainedMask]:
    K = len(indices)
    seeds = [config.seeds(i) for i in indices]
    dense = config.method == "dense"
    blas = reproducible_blas() if device.type == "cpu" else device.type
    computed = device_record(device, config.precision)  # the settings as they stand while the masks train
    start = time.perf_counter()
    model, layers, optimizer = build_training(config, dataset, indices, device)
    base_lr = config.resolved("lr")
    maps = _recycle_maps(config, layers, device)
    recycle_count, first_epoch, earlier_seconds = 0, 0, 0.0
    rows: list[list[dict]] = [[] for _ in range(K)]
    snapshots: list[list] = [[] for _ in range(K)]
    threads_used = {torch.get_num_threads()}
    if resume is not None:
        first_epoch, recycle_count, earlier_seconds = _restore(resume, model, layers, optimizer, maps, dense)
        rows = [list(c.meta["history"]) for c in resume]
        snapshots = [c.snapshots() for c in resume]
        threads_used = {int(c.meta["threads"]) for c in resume}
    subs = SubStacks(config, dataset, model, optimizer) if isinstance(optimizer, FusedScoreSGD) else None
    results: list[TrainedMask] = []  # made after the last epoch (a checkpoint is never of the last one)
    for epoch in range(first_epoch, config.epochs):
        lr = cosine_lr(base_lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train = _train_epoch(model, optimizer, subs, dataset, config, [s[2] for s in seeds], epoch, K, device,
                             plan, on_steps, autocast_dtype(config.precision))
        threads_used |= {c.threads for c in plan.used}
        if subs is not None:  # the stack's cached effective weights are stale once sub-stacks trained
            subs.invalidate()
        _check_finite(config, indices, epoch, lr, train, layers, dense)
        if epoch == config.epochs - 1:  # the last epoch's figures are the rebuilt subnetworks' (below)
            seconds = earlier_seconds + (time.perf_counter() - start) / K
            results = _final_results(config, indices, seeds, layers, maps, snapshots, recycle_count, seconds,
                                     dense, device, computed, blas, threads_used, plan, model, dataset)
            test = [(r.metrics["test_loss"], r.metrics["test_acc"]) for r in results]
        else:
            test = _evaluate(model, dataset, K, device)
        recycled = [0] * K
        if config.recycle != "none" and recycles_after(epoch, config.epochs, config.resolved("recycle_every"),
                                                       config.recycle_warmup):
            recycle_count += 1
            recycled = _recycle(config, layers, maps, recycle_count)
            if subs is not None:
                subs.invalidate()
        for k in range(K):
            row = {"epoch": epoch, "lr": lr, "train_loss": train[k][0], "train_acc": train[k][1],
                   "test_loss": test[k][0], "test_acc": test[k][1], "recycled": recycled[k]}
            rows[k].append(row)
            if on_epoch is not None:
                on_epoch({**row, "index": indices[k], "epochs": config.epochs})
        if snapshot_every and (epoch + 1) % snapshot_every == 0 and epoch + 1 < config.epochs:
            for k in range(K):
                snapshots[k].append((epoch, _masks_of(layers, k, dense)))
        if on_checkpoint is not None and epoch + 1 < config.epochs:
            seconds = earlier_seconds + (time.perf_counter() - start) / K
            on_checkpoint([_checkpoint(indices[k], k, epoch, model, layers, optimizer, maps, dense, rows[k],
                                       snapshots[k], recycle_count, seconds, max(threads_used)) for k in range(K)])
    assert len(results) == K, "the last epoch did not run"
    for result, history in zip(results, rows):
        _finish(result, history, config, recycle_count, result.metrics.pop("seconds"))
    return results


def _final_results(config, indices, seeds, layers, maps, snapshots, recycle_count, seconds, dense, device, computed,
                   blas, threads_used, plan, model, dataset) -> list[TrainedMask]:
    """The K TrainedMasks after the last epoch, with their final figures: the rebuilt subnetwork's, as
    `Run.model` gives (`metrics` holds test_loss, test_acc and, until `_finish`, seconds). The K
    evaluations are independent and run side by side on torch's threads (`map_one_thread`): each one's
    numbers are those of one thread, as always inside `blas_one_thread`. The stack's own evaluation of
    that epoch would be the same masks' figures a second time, so the caller skips it."""
    K = len(indices)
    threads = max(threads_used)  # (the most any block used: no bit depends on it)
    stack_sizes = sorted({c.stack for c in plan.used}) or [K]
    results = []
    for k in range(K):
        provenance = {"stack": K, "position": k, "device": str(device), "threads": threads, "blas": blas,
                      "substacks": stack_sizes, **computed}
        results.append(_result(config, indices[k], seeds[k], k, layers, maps, snapshots[k], recycle_count,
                               seconds, dense, provenance))
    _split_buffers(model, results)

    def final(result: TrainedMask) -> tuple[float, float, np.ndarray]:
        return evaluate_predictions(rebuild_trained(config, dataset, result, device), dataset, device)

    evaluations = map_one_thread(final, results) if device.type == "cpu" else [final(r) for r in results]
    for result, (loss, acc, predictions) in zip(results, evaluations):
        result.predictions = predictions
        result.metrics = {"test_loss": loss, "test_acc": acc, "seconds": seconds}
    return results


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of K stacked masks on a batch (y: (K, B)); returns the (K, B) per-sample losses and
    the logits, on the device: nothing in a step waits for the host. `autocast`: the forward pass's
    autocast dtype (`--precision bf16`), None for none."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast) if autocast is not None else nullcontext():
        logits = model(x)  # (K, B, classes)
        per_sample = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (K, B)
    per_sample.mean(1).sum().backward()  # d/d(mask k's loss) = 1: each mask gets its own gradient
    optimizer.step()
    return per_sample, logits


def _train_epoch(model, optimizer, subs: SubStacks | None, dataset, config, data_seeds, epoch, K, device,
                 plan: StepPlan, on_steps=None, autocast: torch.dtype | None = None) -> list[tuple[float, float]]:
    """One epoch in blocks of steps, each run as `plan` chooses (sub-stack size, threads): every sub-stack
    takes the block's batches in order, so each mask sees the batches it would see in any stack. (mean loss,
    accuracy) per mask, copied to the host once, at the end (a copy per step would make a CUDA step wait)."""
    model.train()
    totals = LossTotals()
    batches = _batches(dataset, config, data_seeds, epoch, K, device)
    left = -(-dataset.n_train // config.batch_size)
    while left > 0:
        choice = plan.next()
        block = list(islice(batches, plan.block_steps(left)))
        if not block:
            break
        left -= len(block)
        if device.type == "cpu":
            set_threads(choice.threads)
        begin = time.perf_counter()
        parts = subs.parts(choice.stack) if subs is not None else [(0, K, model, optimizer)]
        if subs is not None:
            subs.start_block(choice.stack)
        train_part = partial(_train_part, block=block, autocast=autocast)
        per_part = map_one_thread(train_part, parts) if choice.side else [train_part(part) for part in parts]
        for j in range(len(block)):  # the parts are masks a..b in order: together, all K
            totals.add_counted(torch.cat([out[j][0] for out in per_part]), torch.cat([out[j][1] for out in per_part]))
        if subs is not None:
            subs.sync_batchnorm(choice.stack)
        plan.record(choice, (time.perf_counter() - begin) / (len(block) * K))
        if on_steps is not None:
            on_steps(len(block) * K)
    return totals.result()


def _train_part(part, block, autocast) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A block's steps of one sub-stack (a, b, model, optimizer): per batch, (per-sample losses, correct count)."""
    a, b, model, optimizer = part
    out = []
    for xs, y in block:
        per_sample, logits = train_step(model, optimizer, _inputs(xs, a, b), y[a:b], autocast)
        out.append((per_sample.detach(), (logits.detach().argmax(2) == y[a:b]).sum(1)))
    return out


def _batches(dataset, config, data_seeds, epoch, K, device):
    """(xs, y) with y of shape (K, B): xs one shared batch, or when data seeds differ the K masks' own
    batches (a list; `_inputs` puts a sub-stack's side by side)."""
    if len(set(data_seeds)) == 1:
        for x, y in dataset.train_batches(config.batch_size, data_seeds[0], epoch, device=device):
            yield x, y.expand(K, -1)
        return
    if torch.device(device).type != "cpu":  # (no sub-stacks off the CPU) one gather and one copy for all K
        for x, y in dataset.train_batches_stacked(config.batch_size, data_seeds, epoch, device=device):
            xs = x.transpose(0, 1)  # (B, K, *input_shape): each mask's sample side by side
            yield xs.reshape(xs.shape[0], -1, *xs.shape[3:]) if xs.dim() > 3 else xs.reshape(xs.shape[0], -1), y
        return
    streams = [dataset.train_batches(config.batch_size, s, epoch, device=device) for s in data_seeds]
    for parts in zip(*streams):
        yield [x for x, _ in parts], torch.stack([y for _, y in parts])


def _inputs(xs, a: int, b: int) -> torch.Tensor:
    """The input of masks a..b: the shared batch, or their own batches side by side, (B, k*C, H, W) resp.
    (B, k*F), mask-major (what the stacked layers read)."""
    if isinstance(xs, torch.Tensor):
        return xs
    stacked = torch.stack(xs[a:b], 1)  # (B, k, *input_shape)
    return stacked.reshape(stacked.shape[0], -1, *stacked.shape[3:]) if stacked.dim() > 3 else \
        stacked.reshape(stacked.shape[0], -1)


@torch.no_grad()
def _evaluate(model, dataset, K, device) -> list[tuple[float, float]]:
    model.eval()
    totals = LossTotals()
    for x, y in dataset.test_batches(1000, device=device):
        logits = model(x)
        y = y.expand(K, -1)
        totals.add(F.cross_entropy(logits.transpose(1, 2), y, reduction="none"), logits, y)
    model.train()
    return totals.result()


def _check_finite(config, indices, epoch, lr, train, layers, dense) -> None:
    """Stop with a user error naming the learning rate when training has overflowed."""
    values = [(layer.weight if dense else layer.scores) for _, layer in layers]
    finite = [math.isfinite(loss) for loss, _ in train]
    if all(finite) and bool(torch.stack([torch.isfinite(v).all() for v in values]).all()):  # one copy to the host
        return
    default = config.replace(lr=None).resolved("lr")
    if not all(finite):
        k = finite.index(False)
        what = f"mask {indices[k]}'s train loss is {train[k][0]:g}"
    else:
        what = f"the {'weights' if dense else 'scores'} are no longer finite"
    decay, usual = float(config.weight_decay), type(config)().weight_decay
    if decay > 0 and lr * decay >= 1 and lr * usual < 1:
        # the decay step alone overshoots (w -= lr * decay * w flips and grows w), at an lr the usual decay takes
        raise TrainingDiverged(f"training diverged in epoch {epoch}: {what}; the weight decay diverged: lr x "
                               f"weight decay = {lr:g} x {decay:g} = {lr * decay:g}, which must stay well below 1; "
                               f"use a smaller --weight-decay (the default is {usual:g})")
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


def _order_checkpoints(resume, indices: list[int]) -> list[Checkpoint]:
    by_index = {c.index: c for c in resume}
    if sorted(by_index) != sorted(indices) or len({c.epoch for c in resume}) != 1:
        raise ValueError(f"resume: one checkpoint per mask {indices}, all of one epoch, expected; got "
                         f"{sorted((c.index, c.epoch) for c in resume)}")
    return [by_index[i] for i in indices]


def _inner(model) -> nn.Module:
    return model.net if isinstance(model, _Lone) else model


def _checkpoint(index, k, epoch, model, layers, optimizer, maps, dense, rows, snapshots, recycle_count, seconds,
                threads) -> Checkpoint:
    """Mask k's state (see `Checkpoint`), copied."""
    arrays: dict[str, np.ndarray] = {}
    for i, (_, layer) in enumerate(layers):
        if dense:
            arrays[f"weights/{i}"] = layer.weight.detach().cpu().numpy().copy()
            buf = optimizer.state.get(layer.weight, {}).get("momentum_buffer")
            if buf is not None:
                arrays[f"momentum/{i}"] = buf.detach().cpu().numpy().copy()
            continue
        arrays[f"scores/{i}"] = layer.scores[k].detach().cpu().numpy().copy()
        if isinstance(optimizer, FusedScoreSGD):
            arrays[f"momentum/{i}"] = optimizer.buffers[i][k].detach().cpu().numpy().copy()
        else:
            buf = optimizer.state.get(layer.scores, {}).get("momentum_buffer")
            if buf is not None:
                arrays[f"momentum/{i}"] = buf[k].detach().cpu().numpy().copy()
        if layer.per_mask_weights:
            arrays[f"weights/{i}"] = layer.weight[k].detach().cpu().numpy().copy()
    if maps is not None:
        kind = "src" if maps[0][0].dtype == torch.int64 else "draw"
        for i, per_mask in enumerate(maps):
            arrays[f"{kind}/{i}"] = per_mask[k].cpu().numpy().copy()
    K = 1 if dense else layers[0][1].K
    for name, buffer in _inner(model).named_buffers():
        value = buffer.detach().cpu()
        arrays[f"buffer/{name}"] = (value.view(K, -1)[k] if value.dim() else value).numpy().copy()
    for j, (_, masks) in enumerate(snapshots):
        for i, mask in enumerate(masks):
            arrays[f"snapshot/{j}/{i}"] = np.asarray(mask)
    meta = {"history": [{key: (v.item() if isinstance(v, np.generic) else v) for key, v in row.items()}
                        for row in rows],
            "recycle_count": int(recycle_count), "seconds": float(seconds), "threads": int(threads),
            "snapshot_epochs": [int(e) for e, _ in snapshots]}
    return Checkpoint(int(index), int(epoch), arrays, meta)


@torch.no_grad()
def _restore(resume: list[Checkpoint], model, layers, optimizer, maps, dense) -> tuple[int, int, float]:
    """Put the checkpoints' states into a freshly built stack; returns (first epoch to train, recycling
    count, seconds so far per mask)."""
    K = len(resume)
    for k, c in enumerate(resume):
        a = c.arrays
        for i, (_, layer) in enumerate(layers):
            if dense:
                layer.weight.copy_(torch.from_numpy(a[f"weights/{i}"]))
                if f"momentum/{i}" in a:
                    optimizer.state[layer.weight]["momentum_buffer"] = \
                        torch.from_numpy(a[f"momentum/{i}"].copy()).to(layer.weight.device)
                continue
            layer.scores[k].copy_(torch.from_numpy(a[f"scores/{i}"]))
            if f"momentum/{i}" in a:
                if isinstance(optimizer, FusedScoreSGD):
                    optimizer.buffers[i][k].copy_(torch.from_numpy(a[f"momentum/{i}"]))
                else:
                    state = optimizer.state[layer.scores]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(layer.scores)
                    state["momentum_buffer"][k].copy_(torch.from_numpy(a[f"momentum/{i}"]))
            if layer.per_mask_weights:
                layer.weight[k].copy_(torch.from_numpy(a[f"weights/{i}"]))
            layer.invalidate()
        if maps is not None:
            for i, per_mask in enumerate(maps):
                kind = "src" if per_mask[k].dtype == torch.int64 else "draw"
                per_mask[k].copy_(torch.from_numpy(a[f"{kind}/{i}"]))
        for name, buffer in _inner(model).named_buffers():
            value = torch.from_numpy(a[f"buffer/{name}"])
            if buffer.dim():
                buffer.view(K, -1)[k].copy_(value)
            else:
                buffer.copy_(value)
    first = resume[0]
    return first.epoch + 1, int(first.meta["recycle_count"]), float(first.meta["seconds"])
