"""Train one mask (or dense weights) for one run config: SGD with momentum, cosine schedule per epoch.

`train_mask(config, index)` is the Python entry point: it builds the model from the weight seed,
initialises the scores from mask `index`'s score seed, trains, recycles weights on the schedule, and
returns a `TrainedMask` with the mask bits per layer, the final scores, the IWR source-index map (or
IteRand's draw map) and the metrics per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.nn.init import init_model
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model
from masklab.train.evaluate import evaluate
from masklab.train.recycling import iterand_step, iwr_step, recycles_after


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


# Below this many multiply-accumulates per step a CPU step runs faster on one thread: the work is too
# small to split, and OpenMP workers that spin-wait make a busy 2-core machine up to 40x slower.
SMALL_STEP_MACS = 2e8


def macs_per_sample(config: RunConfig, dataset) -> int:
    """Multiply-accumulates of one sample's forward pass through the run's prunable layers."""
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, "dense")
    total = 0

    def count(layer, inputs, output):
        nonlocal total
        positions = output.shape[-2] * output.shape[-1] if output.dim() == 4 else 1
        total += layer.weight.numel() * positions

    hooks = [layer.register_forward_hook(count) for _, layer in masked_layers(model)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *dataset.input_shape))
    for hook in hooks:
        hook.remove()
    return int(total)


@contextmanager
def step_threads(config: RunConfig, dataset, device: torch.device, masks: int = 1):
    """Run the block with one torch thread when a CPU step is small (see SMALL_STEP_MACS)."""
    old = torch.get_num_threads()
    small = device.type == "cpu" and old > 1 and \
        macs_per_sample(config, dataset) * config.batch_size * masks < SMALL_STEP_MACS
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without one is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def make_model(config: RunConfig, dataset, score_seed: int | None = None) -> nn.Module:
    """The run's model with weights from the weight seed and scores from `score_seed` (CPU)."""
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, config.method,
                        config.sparsity)
    return init_model(model, config.weight_seed, config.score_seed if score_seed is None else score_seed,
                      config.resolved("weight_init"), config.resolved("scale_fan"), config.keep)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch `epoch` (from 0): 0.5 * (1 + cos(pi * e / E)) * base."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * base_lr


def train_mask(config: RunConfig, index: int = 0, dataset=None, device: str | torch.device | None = None,
               on_epoch: Callable[[dict], None] | None = None, snapshot_every: int | None = None) -> TrainedMask:
    """Train mask `index` of the run `config` and return it with its metrics.

    `dataset` defaults to loading `config.dataset`; `on_epoch` receives each epoch's metrics (for progress
    bars); `snapshot_every` (default: the config's) keeps the masks every E epochs.
    """
    from masklab.data import load_config_dataset

    config.validate()
    dataset = dataset if dataset is not None else load_config_dataset(config)
    device = resolve_device(config.device) if device is None else torch.device(device)
    with step_threads(config, dataset, device):
        return _train(config, index, dataset, device, on_epoch, snapshot_every)


def _train(config: RunConfig, index: int, dataset, device: torch.device, on_epoch, snapshot_every) -> TrainedMask:
    weight_seed, score_seed, data_seed = config.seeds(index)
    snapshot_every = config.snapshot_every if snapshot_every is None else snapshot_every
    start = time.perf_counter()

    model = make_model(config, dataset, score_seed).to(device)
    layers = masked_layers(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    base_lr = config.resolved("lr")
    optimizer = torch.optim.SGD(trainable, lr=base_lr, momentum=config.momentum, weight_decay=config.weight_decay)

    recycle = config.recycle
    src = [torch.arange(layer.weight.numel(), device=device) for _, layer in layers] if recycle == "iwr" else None
    draw = [torch.zeros(layer.weight.numel(), dtype=torch.int32, device=device) for _, layer in layers] \
        if recycle == "iterand" else None
    recycle_count = 0

    rows, snapshots = [], []
    best_acc, best_epoch = -1.0, -1
    for epoch in range(config.epochs):
        lr = cosine_lr(base_lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss, train_acc = _train_epoch(model, optimizer, dataset, config.batch_size, data_seed, epoch, device)
        test_loss, test_acc = evaluate(model, dataset, device)
        recycled = 0
        if recycle != "none" and recycles_after(epoch, config.epochs, config.resolved("recycle_every"),
                                                config.recycle_warmup):
            recycle_count += 1
            recycled = _recycle(config, layers, src, draw, recycle_count)
        if test_acc > best_acc:
            best_acc, best_epoch = test_acc, epoch
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc, "recycled": recycled}
        rows.append(row)
        if snapshot_every and (epoch + 1) % snapshot_every == 0 and epoch + 1 < config.epochs:
            snapshots.append((epoch, [layer.mask().cpu().numpy() for _, layer in layers]))
        if on_epoch is not None:
            on_epoch({**row, "index": index, "epochs": config.epochs})

    history = pd.DataFrame(rows)
    last = rows[-1]
    metrics = {"test_acc": last["test_acc"], "best_test_acc": best_acc, "best_epoch": best_epoch,
               "test_loss": last["test_loss"], "train_acc": last["train_acc"], "train_loss": last["train_loss"],
               "epochs": config.epochs, "seconds": time.perf_counter() - start, "recycled": recycle_count}
    dense = config.method == "dense"
    return TrainedMask(
        index=index, weight_seed=weight_seed, score_seed=score_seed, data_seed=data_seed,
        layer_names=[name for name, _ in layers], layer_shapes=[tuple(layer.weight.shape) for _, layer in layers],
        n_keep=[layer.n_keep for _, layer in layers],
        masks=[layer.mask().cpu().numpy() for _, layer in layers],
        history=history, metrics=metrics,
        scores=None if dense else [layer.scores.detach().cpu().numpy().copy() for _, layer in layers],
        src=None if src is None else [s.cpu().numpy() for s in src],
        draw=None if draw is None else [d.cpu().numpy() for d in draw],
        weights=[layer.weight.detach().cpu().numpy().copy() for _, layer in layers] if dense else None,
        alphas=[float(layer.alpha()) for _, layer in layers] if config.method == "biprop" else None,
        snapshots=snapshots,
        buffers={name: b.detach().cpu().numpy().copy() for name, b in model.named_buffers()},
    )


def _train_epoch(model, optimizer, dataset, batch_size, data_seed, epoch, device) -> tuple[float, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in dataset.train_batches(batch_size, data_seed, epoch, device=device):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / seen, correct / seen


def _recycle(config: RunConfig, layers, src, draw, t: int) -> int:
    rate = config.resolved("recycle_rate")
    if config.recycle == "iwr":
        return sum(iwr_step(layer, src[i], rate, config.recycle_donors) for i, (_, layer) in enumerate(layers))
    return sum(iterand_step(layer, draw[i], rate, i, config.weight_seed, t, config.resolved("weight_init"),
                            config.resolved("scale_fan"), config.keep) for i, (_, layer) in enumerate(layers))

