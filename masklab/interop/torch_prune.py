"""The `torch.nn.utils.prune` format: a state dict with `<module>.weight_orig` and `<module>.weight_mask`.

`prune.custom_from_mask(module, "weight", mask)` (like every pruning method of torch.nn.utils.prune) renames
the parameter `weight` to `weight_orig`, registers the buffer `weight_mask` (float 0/1) and recomputes
`weight = weight_orig * weight_mask` before every forward. `model.state_dict()` then holds both. A file is
that state dict, or a dict holding it under `state_dict`, `model_state_dict` or `model`; DataParallel's
`module.` prefix is removed. Layers with a plain 2-D or 4-D `<module>.weight` (not pruned) are imported with
a full mask, so that the masks cover the whole network. A pruned bias (`bias_orig`, `bias_mask`) counts as
the bias `bias_orig * bias_mask`; masklab's models have no biases, so a model given with --model accepts
only biases that are zero.

The export writes, per masklab layer, `<layer>.weight_orig` (the weight the layer multiplies by its mask:
W, or Biprop's sign(W) * alpha) and `<layer>.weight_mask`, plus the BatchNorm buffers, under the names of
`masklab.plain_model(run)`: apply `prune.custom_from_mask` to each of its layers (or `prune.identity`) and
`load_state_dict` gives the subnetwork.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklab.errors import UserError
from masklab.interop.checkpoint import as_array, load_torch
from masklab.interop.source import Source, buffer_base, check_weight, strip_prefix, zero_one

FORMAT = "torch-prune"
CONTAINERS = ("state_dict", "model_state_dict", "model")


def _state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in CONTAINERS:
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(k, str) for k in obj):
            return obj
    raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict; save `model.state_dict()` of the pruned "
                    "model (or a dict holding it under 'state_dict')")


def read(path: Path, data: bytes, sha: str) -> Source:
    obj = load_torch(path, data)
    state, prefix = strip_prefix(_state_dict(obj, path))
    keys, weights, masks = [], [], []
    biases: dict[str, np.ndarray] = {}
    buffers: dict[str, np.ndarray] = {}
    unused: list[str] = []
    seen: set[str] = set()
    for key in state:
        if not isinstance(key, str):
            raise UserError(f"{path}: the state dict has a key {key!r} that is not a string")
        if key.endswith(".weight_orig"):
            base = key[: -len(".weight_orig")]
            if base + ".weight_mask" not in state:
                raise UserError(f"{path}: {prefix}{key} has no {prefix}{base}.weight_mask beside it")
            weight = check_weight(as_array(state[key], key, path), key, path)
            mask = zero_one(as_array(state[base + ".weight_mask"], base + ".weight_mask", path), base + ".weight_mask",
                            path)
            if mask.shape != weight.shape:
                raise UserError(f"{path}: {prefix}{base}.weight_mask has shape {tuple(mask.shape)} but its weight "
                                f"{tuple(weight.shape)}")
            keys.append(base)
            weights.append(weight)
            masks.append(mask)
            seen.update((key, base + ".weight_mask"))
        elif key.endswith(".weight") and key[: -len(".weight")] + ".weight_orig" not in state:
            value = as_array(state[key], key, path)
            if value.ndim in (2, 4) and np.issubdtype(value.dtype, np.floating):  # a layer left unpruned
                keys.append(key[: -len(".weight")])
                weights.append(check_weight(value, key, path))
                masks.append(np.ones(value.shape, dtype=bool))
                seen.add(key)
    for key, value in state.items():
        if key in seen or key.endswith(".bias_mask"):
            continue
        if buffer_base(key) is not None:
            buffers[key] = as_array(value, key, path)
        elif key.endswith(".bias_orig"):
            base = key[: -len(".bias_orig")]
            bias = as_array(value, key, path)
            if base + ".bias_mask" in state:
                bias = bias * as_array(state[base + ".bias_mask"], base + ".bias_mask", path)
            biases[base + ".bias"] = bias
        elif key.endswith(".bias"):
            biases[key] = as_array(value, key, path)
        else:
            unused.append(key)
    if not any(k.endswith(".weight_orig") for k in state):
        scores = next((k for k in state if k.endswith(".scores")), None)
        hint = f" (it has {prefix}{scores}: a hidden-networks checkpoint? use --format hidden-networks)" \
            if scores else ""
        raise UserError(f"{path}: the state dict has no `<module>.weight_orig` / `<module>.weight_mask` pairs, which "
                        f"torch.nn.utils.prune leaves in every pruned module{hint}")
    return Source(path=path, format=FORMAT, sha256=sha, size=len(data), keys=keys, weights=weights, masks=masks,
                  buffers=buffers, biases=biases, unused=unused, prefix=prefix)


def write(layers: list[tuple[str, np.ndarray, np.ndarray]], buffers: dict[str, np.ndarray]) -> bytes:
    """A state dict of (name, weight_orig, bool mask) per layer plus the buffers, as torch.save bytes."""
    state: OrderedDict[str, Any] = OrderedDict()
    for name, orig, mask in layers:
        state[f"{name}.weight_orig"] = torch.from_numpy(np.ascontiguousarray(orig, dtype=np.float32))
        state[f"{name}.weight_mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    for name, value in buffers.items():
        state[name] = torch.from_numpy(np.array(value))
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()
