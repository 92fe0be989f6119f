"""Train K masks of one run in one pass over shared frozen weights (see `masklab.nn.stacked`).

The loss is the sum of the K masks' mean cross-entropies, so each mask's score gradient is exactly its
own; SGD is elementwise, so one optimiser over the (K, ...) scores holds the same state as K separate
ones (on CPU it is `FusedScoreSGD`, SGD fused with the next mask selection). Mask k's result therefore
depends only on its own seeds, up to float rounding of the batched ops.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from masklab.config import RunConfig
from masklab.nn.models import build_model
from masklab.nn.stacked import StackedLayerMaker, init_stacked, stacked_layers
from masklab.train.evaluate import evaluate
from masklab.train.rebuild import rebuild_trained
from masklab.train.recycling import iterand_apply, iwr_apply, recycles_after
from masklab.train.score_sgd import FusedScoreSGD, fused_available
from masklab.train.trainer import TrainedMask, cosine_lr, resolve_device, step_threads


def make_stacked_model(config: RunConfig, dataset, indices: list[int]) -> torch.nn.Module:
    per_mask_weights = config.recycle != "none"
    maker = StackedLayerMaker(config.method, config.sparsity, len(indices), per_mask_weights)
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, maker=maker)
    return init_stacked(model, config.weight_seed, [config.seeds(i)[1] for i in indices],
                        config.resolved("weight_init"), config.resolved("scale_fan"), config.keep)


def auto_stack(config: RunConfig, dataset, device: torch.device, n_masks: int) -> int:
    """K for `--stack auto`: as many masks as fit a quarter of free memory, at most 8 (CPU) or 32 (GPU)."""
    if config.method == "dense":
        return 1
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, config.method,
                        config.sparsity)
    n_weights = sum(p.numel() for p in model.parameters())
    # scores, grad, momentum, effective weight, mask, own weights: ~6 floats per weight and mask
    per_mask = 6 * 4 * n_weights + 4 * config.batch_size * 3 * _activation_floats(model, dataset)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = 32
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        cap = 8
    return max(1, min(cap, n_masks, int(free // 4 // max(per_mask, 1))))


def _activation_floats(model, dataset) -> int:
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel())) for m in model.modules()
             if not list(m.children())]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, *dataset.input_shape))
    for h in hooks:
        h.remove()
    return int(sum(sizes))


def score_optimizer(layers: list, lr: float, momentum: float, weight_decay: float, device: torch.device):
    """SGD over the stacked layers' scores: fused with the selection on CPU (`FusedScoreSGD`, the same
    updates without autograd's temporaries), torch.optim.SGD through autograd elsewhere."""
    if fused_available(device):
        return FusedScoreSGD(layers, lr, momentum, weight_decay)
    return torch.optim.SGD([layer.scores for layer in layers], lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_stack(config: RunConfig, indices: list[int], dataset=None, device: str | torch.device | None = None,
                on_epoch: Callable[[dict], None] | None = None,
                snapshot_every: int | None = None) -> list[TrainedMask]:
    """Train masks `indices` of the run together; returns one TrainedMask per index, in order."""
    from masklab.data import load_config_dataset

    config.validate()
    if config.method == "dense":
        raise ValueError("dense training has no masks to stack; train dense runs with stack 1")
    dataset = dataset if dataset is not None else load_config_dataset(config)
    device = resolve_device(config.device) if device is None else torch.device(device)
    with step_threads(config, dataset, device, len(indices)):
        return _train(config, indices, dataset, device, on_epoch, snapshot_every)


def _train(config, indices, dataset, device, on_epoch, snapshot_every) -> list[TrainedMask]:
    snapshot_every = config.snapshot_every if snapshot_every is None else snapshot_every
    K = len(indices)
    seeds = [config.seeds(i) for i in indices]
    start = time.perf_counter()

    model = make_stacked_model(config, dataset, indices).to(device)
    layers = stacked_layers(model)
    base_lr = config.resolved("lr")
    optimizer = score_optimizer([layer for _, layer in layers], base_lr, config.momentum, config.weight_decay, device)
    maps = _recycle_maps(config, layers, device)
    recycle_count = 0
    rows: list[list[dict]] = [[] for _ in range(K)]
    snapshots: list[list] = [[] for _ in range(K)]
    for epoch in range(config.epochs):
        lr = cosine_lr(base_lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train = _train_epoch(model, optimizer, dataset, config, [s[2] for s in seeds], epoch, K, device)
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
                snapshots[k].append((epoch, [layer.mask(k).cpu().numpy() for _, layer in layers]))
    seconds = (time.perf_counter() - start) / K
    results = [_result(config, indices[k], seeds[k], k, layers, maps, rows[k], snapshots[k], recycle_count, seconds)
               for k in range(K)]
    for name, buffer in model.named_buffers():  # BatchNorm statistics: K*C channels, mask-major
        for k, result in enumerate(results):
            value = buffer.detach().cpu()
            result.buffers[name] = (value.view(K, -1)[k] if value.dim() else value).numpy().copy()
    for result in results:  # final figures from the single-mask subnetwork, as a rebuilt run computes them
        loss, acc = evaluate(rebuild_trained(config, dataset, result, device), dataset, device)
        result.metrics.update(test_loss=loss, test_acc=acc,
                              best_test_acc=max(result.metrics["best_test_acc"], acc))
    return results


def _train_epoch(model, optimizer, dataset, config, data_seeds, epoch, K, device) -> list[tuple[float, float]]:
    model.train()
    total = torch.zeros(K, dtype=torch.float64)
    correct = torch.zeros(K, dtype=torch.int64)
    seen = 0
    for x, y in _batches(dataset, config, data_seeds, epoch, K, device):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)  # (K, B, classes)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)  # (K,)
        losses.sum().backward()
        optimizer.step()
        B = y.shape[1]
        total += losses.detach().double().cpu() * B
        correct += (logits.argmax(2) == y).sum(1).cpu()
        seen += B
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
    total = torch.zeros(K, dtype=torch.float64)
    correct = torch.zeros(K, dtype=torch.int64)
    seen = 0
    for x, y in dataset.test_batches(1000, device=device):
        logits = model(x)
        total += F.cross_entropy(logits.transpose(1, 2), y.expand(K, -1), reduction="none").sum(1).double().cpu()
        correct += (logits.argmax(2) == y).sum(1).cpu()
        seen += len(y)
    model.train()
    return [(float(total[k]) / seen, int(correct[k]) / seen) for k in range(K)]


def _recycle_maps(config, layers, device):
    if config.recycle == "iwr":
        return [[torch.arange(math.prod(layer.shape), device=device) for _ in range(layer.K)] for _, layer in layers]
    if config.recycle == "iterand":
        return [[torch.zeros(math.prod(layer.shape), dtype=torch.int32, device=device) for _ in range(layer.K)]
                for _, layer in layers]
    return None


def _recycle(config, layers, maps, t) -> list[int]:
    rate = config.resolved("recycle_rate")
    K = layers[0][1].K
    counts = [0] * K
    with torch.no_grad():
        for i, (_, layer) in enumerate(layers):
            masks = layer.masks().clone() if config.recycle == "iterand" else None
            for k in range(K):
                if config.recycle == "iwr":
                    counts[k] += iwr_apply(layer.weight[k], layer.scores[k], maps[i][k], rate, config.recycle_donors)
                else:
                    counts[k] += iterand_apply(layer.weight[k], masks[k], maps[i][k], rate, i, config.weight_seed, t,
                                               config.resolved("weight_init"), config.resolved("scale_fan"),
                                               config.keep)
            layer.invalidate()
    return counts


def _result(config, index, seeds, k, layers, maps, rows, snapshots, recycle_count, seconds) -> TrainedMask:
    history = pd.DataFrame(rows)
    best = int(history["test_acc"].idxmax())
    last = rows[-1]
    metrics = {"test_acc": last["test_acc"], "best_test_acc": float(history["test_acc"].max()),
               "best_epoch": int(history["epoch"].iloc[best]), "test_loss": last["test_loss"],
               "train_acc": last["train_acc"], "train_loss": last["train_loss"], "epochs": config.epochs,
               "seconds": seconds, "recycled": recycle_count, "stack": layers[0][1].K}
    return TrainedMask(
        index=index, weight_seed=seeds[0], score_seed=seeds[1], data_seed=seeds[2],
        layer_names=[name for name, _ in layers], layer_shapes=[layer.shape for _, layer in layers],
        n_keep=[layer.n_keep for _, layer in layers],
        masks=[layer.mask(k).cpu().numpy() for _, layer in layers],
        history=history, metrics=metrics,
        scores=[layer.scores[k].detach().cpu().numpy().copy() for _, layer in layers],
        src=[m[k].cpu().numpy() for m in maps] if config.recycle == "iwr" else None,
        draw=[m[k].cpu().numpy() for m in maps] if config.recycle == "iterand" else None,
        alphas=[float(layer.alphas()[k]) for _, layer in layers] if config.method == "biprop" else None,
        snapshots=snapshots,
    )
