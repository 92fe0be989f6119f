"""Fixtures for the interop tests: checkpoints written in each format's real key layout, and a small
reference-style forward pass written from the reference code's description (REFERENCE.md, "Masks trained by
the reference code"): GetSubnet sorts |scores| with torch.sort and zeroes the first int((1 - k) * n);
linear layers are 1x1 convolutions over the flattened input."""

from __future__ import annotations

import argparse
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F


# ---- the reference code, from its description -------------------------------------------------------------
def get_subnet(scores: torch.Tensor, k: float) -> torch.Tensor:
    """Their GetSubnet.forward on clamped scores (|scores|): 0 on the int((1 - k) * n) smallest, 1 elsewhere."""
    out = scores.clone()
    _, idx = scores.flatten().sort()
    j = int((1 - k) * scores.numel())
    flat = out.flatten()
    flat[idx[:j]] = 0
    flat[idx[j:]] = 1
    return flat.view_as(scores)


def reference_forward(state: dict, keys: list[str], k: float, x: torch.Tensor, biprop: bool = False) -> torch.Tensor:
    """Their FC: `x.view(N, D, 1, 1)`, then SubnetConv 1x1 layers with ReLU between, `squeeze()` at the end.
    Biprop: weight sign(W) * alpha * mask with alpha = sum(|W| * mask) / int(k * n)."""
    out = x.reshape(x.shape[0], -1, 1, 1)
    for n, key in enumerate(keys):
        w, s = state[f"{key}.weight"], state[f"{key}.scores"]
        subnet = get_subnet(s.abs(), k)
        if biprop:
            alpha = torch.sum(w.abs() * subnet) / int(k * s.numel())
            eff = torch.sign(w) * alpha * subnet
        else:
            eff = w * subnet
        out = F.conv2d(out, eff)
        if n < len(keys) - 1:
            out = F.relu(out)
    return out.squeeze()


def reference_accuracy(state, keys, k, dataset, biprop: bool = False) -> float:
    correct, seen = 0, 0
    with torch.no_grad():
        for x, y in dataset.test_batches(1000):
            logits = reference_forward(state, keys, k, x, biprop)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    return correct / seen


# ---- checkpoints in the hidden-networks layout ---------------------------------------------------------------
FC_KEYS = ["linear.0", "linear.2", "linear.4"]


def fc_weights(sizes, seed: int = 0, signed: bool = True) -> list[torch.Tensor]:
    """Their FC's weights: signed Kaiming constant, shape (out, in, 1, 1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for o, i in sizes:
        w = torch.randn(o, i, 1, 1, generator=g)
        out.append(torch.sign(w) * (2.0 / i) ** 0.5 if signed else w * (2.0 / i) ** 0.5)
    return out


def hn_checkpoint(path, weights: list[torch.Tensor], score_seed: int, *, keys=FC_KEYS, module: bool = False,
                  extra: dict | None = None, scores: list[torch.Tensor] | None = None) -> dict:
    """Write a checkpoint as hidden-networks' save_checkpoint does (numpy scalars included); returns its state_dict
    (without the `module.` prefix)."""
    g = torch.Generator().manual_seed(1000 + score_seed)
    state = {}
    for n, (key, w) in enumerate(zip(keys, weights)):
        state[f"{key}.weight"] = w.clone()
        state[f"{key}.scores"] = scores[n].clone() if scores is not None else \
            (torch.rand(w.shape, generator=g) - 0.5) * 0.1
    saved = {f"module.{k}": v for k, v in state.items()} if module else state
    obj = {"epoch": np.int64(20), "arch": "FC", "state_dict": saved, "best_acc1": np.float64(83.25),
           "best_acc5": np.float32(99.0), "best_train_acc1": 85.0, "best_train_acc5": 99.5,
           "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1, 2]}]},
           "curr_acc1": np.float64(82.5), "curr_acc5": 98.0}
    obj.update(extra or {})
    torch.save(obj, path)
    return state


def biprop_extra(prune_rate: float, in_args: bool = False) -> dict:
    """What Biprop's save_checkpoint adds (its rate directly, or in an argparse.Namespace as some versions keep)."""
    extra = {"conv_type": "SubnetConv", "train_augmentation": "Default", "use_augmix": False, "jsd": False,
             "p_clean": np.float64(1.0), "std_gauss": 0.0}
    if in_args:
        extra["args"] = argparse.Namespace(prune_rate=prune_rate, conv_type="SubnetConv", arch="FC", seed=7,
                                           ckpt_base_dir=pathlib.PosixPath("/runs/x/checkpoints"))
    else:
        extra["prune_rate"] = np.float64(prune_rate)
    return extra


@pytest.fixture(scope="session")
def ref():
    return SimpleNamespace(get_subnet=get_subnet, forward=reference_forward, accuracy=reference_accuracy,
                           hn_checkpoint=hn_checkpoint, fc_weights=fc_weights, biprop_extra=biprop_extra,
                           FC_KEYS=FC_KEYS)


# masklab's mlp on digits: 64 -> h -> h -> 10; at width 0.25, h = 64
MLP_SIZES = [(64, 64), (64, 64), (10, 64)]


@pytest.fixture(scope="session")
def mlp_checkpoints(tmp_path_factory, ref):
    """Three hidden-networks checkpoints of masklab's mlp (width 0.25) on digits over the same weights, the second
    saved under DataParallel (`module.` keys): (paths, their state_dicts)."""
    folder = tmp_path_factory.mktemp("hn")
    weights = ref.fc_weights(MLP_SIZES)
    paths, states = [], []
    for i in range(3):
        path = folder / f"mask{i}.pth"
        states.append(ref.hn_checkpoint(path, weights, i, module=(i == 1)))
        paths.append(path)
    return paths, states
