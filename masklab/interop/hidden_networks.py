"""The hidden-networks checkpoint format (Edge-Popup; also Biprop and the IWR code, which save the same way).

Their `save_checkpoint` is `torch.save` of a dict: `epoch`, `arch`, `state_dict`, `best_acc1`, `best_acc5`,
`best_train_acc1`, `best_train_acc5`, `optimizer`, `curr_acc1`, ...; Biprop adds `conv_type`, `prune_rate` and
its augmentation fields (`train_augmentation`, `use_augmix`, `jsd`, ...), and some versions keep the parsed
`args` (an argparse.Namespace). Numbers may be numpy scalars. The `state_dict` holds, per subnet layer (their
SubnetConv: every conv and linear layer, the linear ones as 1x1 convolutions over a flattened input),
`<layer>.weight` and `<layer>.scores` of the same shape, and BatchNorm statistics where the model has them;
under DataParallel every key starts with `module.`. The mask is not stored: it is their rule over the
scores (see masklab/interop/rules.py).

Their layer names for masklab's models (used by the export; an imported run keeps the names it came with):
  FC (lenet-300-100; masklab's mlp the same way): linear.0, linear.2, linear.4 (nn.Sequential with ReLUs)
  Conv2/4/6/8: convs.0, convs.2, convs.5, convs.7, convs.10, ... (two convs, then a max-pool, per stage),
               then linear.0, linear.2, linear.4
  cResNet18: conv1, bn1, layer{1-4}.{0,1}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, fc
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklab.errors import UserError
from masklab.interop.checkpoint import as_array, attribute, load_torch, plain
from masklab.interop.source import Source, buffer_base, check_weight, strip_prefix

FORMAT = "hidden-networks"
# written by the Biprop code's save_checkpoint beside the hidden-networks fields
BIPROP_FIELDS = ("train_augmentation", "use_augmix", "jsd", "augmix_mixture_width", "p_clean", "std_gauss")
# conv types of those codebases whose mask is not a per-layer top-k of |scores|
NOT_TOPK = {"GlobalSubnetConv": "a global top-k over the whole network",
            "SampleSubnetConv": "a random sample of sigmoid(scores)",
            "ContinuousSparseConv": "a continuous relaxation",
            "DenseConv": "no mask (a dense network)"}
REPORTED = ("epoch", "arch", "best_acc1", "best_acc5", "best_train_acc1", "best_train_acc5", "curr_acc1", "curr_acc5",
            "conv_type", "prune_rate")


def read(path: Path, data: bytes, sha: str) -> Source:
    """One hidden-networks / Biprop / IWR-code checkpoint: weights and scores per subnet layer, in order."""
    obj = load_torch(path, data)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a hidden-networks checkpoint (a dict with a "
                        "'state_dict')")
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: its 'state_dict' is empty or not a dict; this is not a hidden-networks checkpoint")
    state, prefix = strip_prefix(state)
    args = obj.get("args")
    conv_type = obj.get("conv_type", attribute(args, "conv_type"))
    if isinstance(conv_type, str) and conv_type in NOT_TOPK:
        raise UserError(f"{path} was trained with conv_type {conv_type}, whose mask is {NOT_TOPK[conv_type]}; "
                        "masklab imports per-layer top-k masks (SubnetConv) only")
    keys, weights, scores = [], [], []
    buffers: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray] = {}
    unused: list[str] = []
    seen: set[str] = set()
    for key, value in state.items():
        if not isinstance(key, str):
            raise UserError(f"{path}: its state_dict has a key {key!r} that is not a string")
        if key.endswith(".scores"):
            base = key[: -len(".scores")]
            if base + ".weight" not in state:
                raise UserError(f"{path}: {prefix}{key} has no {prefix}{base}.weight beside it")
            weight = check_weight(as_array(state[base + ".weight"], base + ".weight", path), base + ".weight", path)
            score = as_array(value, key, path)
            if score.shape != weight.shape:
                raise UserError(f"{path}: {prefix}{key} has shape {tuple(score.shape)} but its weight "
                                f"{tuple(weight.shape)}")
            if not np.issubdtype(score.dtype, np.floating):
                raise UserError(f"{path}: {prefix}{key} has dtype {score.dtype}, not floating-point scores")
            keys.append(base)
            weights.append(weight)
            scores.append(score)
            seen.update((key, base + ".weight"))
    for key, value in state.items():
        if key in seen:
            continue
        if buffer_base(key) is not None:
            buffers[key] = as_array(value, key, path)
        elif key.endswith(".bias"):
            biases[key] = as_array(value, key, path)
        else:
            unused.append(key)
    if not keys:
        raise UserError(f"{path}: its state_dict has no `<layer>.scores`; it is not a subnetwork checkpoint of "
                        "hidden-networks / Biprop / the IWR code (for torch.nn.utils.prune state use "
                        "--format torch-prune)")
    keep = obj.get("prune_rate", attribute(args, "prune_rate"))
    if keep is not None:
        try:
            keep = float(keep)
        except (TypeError, ValueError):
            raise UserError(f"{path}: its prune_rate {keep!r} is not a number") from None
        if not 0.0 < keep <= 1.0:
            raise UserError(f"{path}: its prune_rate {keep!r} is not a fraction kept in (0, 1]")
    biprop = [f for f in BIPROP_FIELDS if f in obj]
    info = {k: plain(obj.get(k, attribute(args, k))) for k in REPORTED if obj.get(k, attribute(args, k)) is not None}
    seed = attribute(args, "seed")
    if seed is not None:
        info["seed"] = plain(seed)
    return Source(path=path, format=FORMAT, sha256=sha, size=len(data), keys=keys, weights=weights, scores=scores,
                  buffers=buffers, biases=biases, unused=unused,
                  ignored=sorted(k for k in obj if k != "state_dict" and isinstance(k, str)), prefix=prefix,
                  keep=keep, method="biprop" if biprop else None,
                  method_from=f"Biprop checkpoint fields ({', '.join(biprop)})" if biprop else None, info=info)


# ---- writing (the export) -------------------------------------------------------------------------------------
ARCH = {"lenet-300-100": "FC", "conv2": "Conv2", "conv4": "Conv4", "conv6": "Conv6", "conv8": "Conv8",
        "resnet18": "cResNet18"}


def their_name(model: str, ours: str) -> str:
    """The hidden-networks name of masklab layer or BatchNorm `ours` in model `model` (see the module docstring)."""
    m = re.fullmatch(r"fc(\d+)", ours)
    if model in ("mlp", "lenet-300-100") or (model.startswith("conv") and m):
        if m:
            return f"linear.{2 * (int(m.group(1)) - 1)}"
    m = re.fullmatch(r"conv(\d+)", ours)
    if model.startswith("conv") and m:
        i = int(m.group(1)) - 1
        return f"convs.{5 * (i // 2) + 2 * (i % 2)}"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
    if model == "resnet18" and m:
        b = int(m.group(1))
        return f"layer{b // 2 + 1}.{b % 2}.{m.group(2)}"
    return ours


def write(layers: list[tuple[str, np.ndarray, np.ndarray]], buffers: dict[str, np.ndarray], keep: float,
          arch: str | None, extra: dict[str, Any]) -> bytes:
    """A checkpoint dict in their layout: `state_dict` with `<name>.weight` and `<name>.scores` per layer (given
    as (their name, weight in their shape, bool mask)) and the BatchNorm buffers (their names), `prune_rate` =
    `keep`, `arch`, `epoch` and the `best_acc1` fields. The scores are the mask as 0/1: their rule at `keep`
    zeroes exactly the zeros (every 0 sorts before every 1, so no tie crosses the cut)."""
    state: dict[str, Any] = {}
    for name, weight, mask in layers:
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"{name}.scores"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    for name, value in buffers.items():
        state[name] = torch.from_numpy(np.array(value))
    obj = {"epoch": extra.get("epoch", 0), "arch": arch, "state_dict": state, "prune_rate": float(keep),
           "best_acc1": extra.get("best_acc1", 0.0), "best_acc5": 0.0, "best_train_acc1": 0.0,
           "best_train_acc5": 0.0, "curr_acc1": extra.get("best_acc1", 0.0), "masklab": extra.get("masklab", {})}
    obj.update(extra.get("fields", {}))
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()
