"""Rebuild a trained subnetwork exactly from its seeds and what the store keeps.

Weights come from the weight seed, with IWR's source map or IteRand's draw map applied (dense runs: the
trained weights; imported runs: the weights stored with the run); each masked layer's scores are set to
its 0/1 mask, so that the layer's own top-k selects exactly that mask and the forward pass is the training
code's own. An imported run's layers keep the counts its layout records (the reference code's rule keeps
one weight more than masklab's at some rates) and an imported Biprop run's gain divides by the Biprop
code's own count (see masklab/interop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from masklab.config import RunConfig
from masklab.data import Shaped
from masklab.errors import StoreError
from masklab.nn.layers import masked_layers
from masklab.train.evaluate import Evaluation, evaluate
from masklab.train.precision import evaluation_settings
from masklab.train.recycling import rebuild_weights
from masklab.train.stacked import make_model


def rebuild_subnet(config: RunConfig, dataset: Shaped, weight_seed: int, score_seed: int, masks: Sequence[np.ndarray],
                   src: Sequence[np.ndarray] | None = None, draw: Sequence[np.ndarray] | None = None,
                   weights: Sequence[np.ndarray] | None = None, buffers: dict | None = None,
                   device: str | torch.device = "cpu", n_keep: Sequence[int] | None = None,
                   gain_counts: Sequence[int] | None = None) -> nn.Module:
    """The subnetwork in eval mode. `dataset` needs only `input_shape` and `n_classes`. `n_keep` replaces
    the layers' kept counts (imported runs: the layout's) and `gain_counts` the denominators of Biprop's
    gain (imported Biprop runs: the Biprop code's int(keep * n)); their scores are then frozen, so that the
    model computes with the stored mask whether or not autograd is on."""
    model = make_model(config.replace(weight_seed=weight_seed), dataset, score_seed)
    with torch.no_grad():
        for k, (_, layer) in enumerate(masked_layers(model)):
            if n_keep is not None:
                layer.n_keep = int(n_keep[k])
            if gain_counts is not None:
                layer.gain_count = int(gain_counts[k])
            if weights is not None:
                layer.weight.copy_(torch.as_tensor(np.asarray(weights[k], dtype=np.float32)).view_as(layer.weight))
            elif src is not None or draw is not None:
                layer.weight.copy_(rebuild_weights(
                    tuple(layer.weight.shape), k, weight_seed, config.resolved("weight_init"),
                    config.resolved("scale_fan"), config.keep,
                    src=None if src is None else torch.as_tensor(np.asarray(src[k])),
                    draw=None if draw is None else torch.as_tensor(np.asarray(draw[k]))))
            if layer.scores is not None:
                layer.scores.copy_(torch.as_tensor(np.asarray(masks[k])).view_as(layer.scores).to(layer.scores.dtype))
                if n_keep is not None:  # an imported subnetwork: fixed (the straight-through path knows no gain_count)
                    layer.scores.requires_grad_(False)
            layer.invalidate()
        for name, value in (buffers or {}).items():
            model.get_buffer(name).copy_(torch.as_tensor(np.asarray(value)).view_as(model.get_buffer(name)))
    return model.to(device).eval()


def rebuild_trained(config: RunConfig, dataset: Shaped, trained, device: str | torch.device = "cpu") -> nn.Module:
    """`rebuild_subnet` for a TrainedMask."""
    return rebuild_subnet(config, dataset, trained.weight_seed, trained.score_seed, trained.masks, trained.src,
                          trained.draw, trained.weights, trained.buffers, device)


def run_model(run, i: int, device: str | torch.device = "cpu") -> nn.Module:
    """Mask `i` of a stored `Run` as its subnetwork, rebuilt exactly: weights from the weight seed with the
    IWR / IteRand map applied (dense runs: the stored weights), BatchNorm buffers as stored, and every
    masked layer's scores set to its stored mask, so that the layer's own top-k selects exactly that mask.
    In eval mode. A model whose layers or kept counts disagree with the run is a StoreError."""
    record, config = run.record(i), run.config
    imported = run.imported
    if not run.has_architecture:
        raise StoreError(f"run {run.id} was imported without --model and --dataset: it holds masks and weights "
                         "but no architecture to rebuild; import the files again with --model M --dataset D")
    shape = SimpleNamespace(input_shape=tuple(run.meta["dataset"]["input_shape"]),
                            n_classes=int(run.meta["dataset"]["n_classes"]))
    masks = run.mask_layers(i)
    weights = run.weights(i) if config.method == "dense" or imported is not None else None
    if imported is not None and weights is None:
        raise StoreError(f"run {run.id} was imported but holds no weights for mask {i}; import the files again")
    model = rebuild_subnet(config, shape, int(record["weight_seed"]), int(record["score_seed"]), masks,
                           run.index_map(i, "src"), run.index_map(i, "draw"), weights, run.buffers(i),
                           n_keep=None if imported is None else list(run.layers["n_keep"]),
                           gain_counts=None if imported is None else imported["gain_counts"])
    layers = masked_layers(model)
    if [name for name, _ in layers] != list(run.layers["layer"]):
        raise StoreError(f"run {run.id}: the model this masklab builds has layers {[n for n, _ in layers]}, the "
                         f"run has {list(run.layers['layer'])}; open it with the masklab version that made it "
                         f"({run.meta['software']['masklab']})")
    for k, (name, layer) in enumerate(layers):
        if not np.array_equal(layer.mask().numpy(), masks[k]):
            raise StoreError(f"run {run.id}: mask {i} cannot be pinned in layer {name} (its kept count differs "
                             "from the layer's n_keep); the mask file is inconsistent")
    return model.to(device).eval()


def _masks_alone(run, i: int) -> int | None:
    """A key that two masks of `run` share when their subnetworks differ in their masks alone (the same initial
    weights from the same weight seed, or the run's shared imported weights; no recycling map, no BatchNorm
    statistics, no weights of their own), else None."""
    if run.config.method == "dense" or any(run.has_extra(i, kind) for kind in ("src", "draw", "buffers", "weights")):
        return None
    return int(run.record(i)["weight_seed"])


def run_models(run, ids: Sequence[int], device: str | torch.device = "cpu") -> Iterator[tuple[int, nn.Module]]:
    """(i, mask i's subnetwork) for each of `ids`, each exactly the model `run_model(run, i)` builds, without
    rebuilding it for each mask: where mask i's subnetwork differs from the one before in its masks alone
    (`_masks_alone`), the same model gets mask i's scores (set to the mask, as `rebuild_subnet` sets them), so
    that it computes with the same weights through the same code. The model yielded is reused: use it before
    taking the next. Measured reason: rebuilding drew the weights and scores from their seeds for every mask,
    about 10x the forward pass of a small model over its test set (N = 1,024 digits-MLP masks: most of the
    functional stage's 115 s)."""
    model: nn.Module | None = None
    shared: int | None = None
    for i in ids:
        key = _masks_alone(run, int(i))
        if model is None or key is None or key != shared:
            model, shared = run_model(run, int(i), device), key
            yield int(i), model
            continue
        masks = run.masks.unpack_layers(int(i))
        with torch.no_grad():
            for k, (name, layer) in enumerate(masked_layers(model)):
                assert layer.scores is not None
                mask = masks[k].reshape(tuple(layer.scores.shape))
                if int(mask.sum()) != layer.n_keep:
                    raise StoreError(f"run {run.id}: mask {i} cannot be pinned in layer {name} (its kept count "
                                     "differs from the layer's n_keep); the mask file is inconsistent")
                if layer.method == "biprop":  # its gain divides by the layer's count: through the scores
                    layer.scores.copy_(torch.as_tensor(mask).to(layer.scores.dtype))
                    layer.invalidate()
                    if not np.array_equal(layer.mask().cpu().numpy(), mask):
                        raise StoreError(f"run {run.id}: mask {i} cannot be pinned in layer {name}; the mask "
                                         "file is inconsistent")
                else:  # the mask itself: W * mask, as the top-k of scores set to the mask gives (without the top-k)
                    layer.pin(torch.from_numpy(np.ascontiguousarray(mask)))
        yield int(i), model


def evaluate_mask(run, i: int, data=None, device: str | torch.device = "cpu") -> Evaluation:
    """`Evaluation(loss, acc)`: the test loss (nats) and accuracy (fraction) of mask `i`'s rebuilt subnetwork
    on the test split of `data` (default: the run's dataset); equals the figures recorded when it was
    trained (on CUDA under the settings of the precision it trained at)."""
    precision = (run.record(i).get("trained_with") or {}).get("precision", run.config.precision)
    with evaluation_settings(device, precision):
        return evaluate(run_model(run, i, device), data if data is not None else run.dataset(), device)
