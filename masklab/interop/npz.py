"""The npz format: one boolean array per layer, in network order, optionally with the weights.

An `.npz` (numpy.savez) holding, for every prunable layer `<layer>` in the network's order, a bool array
`<layer>` (the mask) and optionally a float array `<layer>.weight` (the weights it masks: needed to rebuild
and evaluate the subnetwork; all layers or none), plus BatchNorm statistics `<bn>.running_mean`,
`<bn>.running_var` and `<bn>.num_batches_tracked`. masklab's export also writes `masklab`, a JSON string
saying which run and mask it came from and the method (an import takes its method from there). It is read
with allow_pickle=False.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UserError
from masklab.interop.checkpoint import load_npz
from masklab.interop.source import Source, buffer_base, check_weight

FORMAT = "npz"
META = "masklab"


def read(path: Path, data: bytes, sha: str) -> Source:
    arrays = load_npz(path, data)
    meta: dict[str, Any] = {}
    if META in arrays:
        try:
            meta = json.loads(str(arrays.pop(META)))
        except ValueError:
            raise UserError(f"{path}: its '{META}' entry is not the JSON masklab's export writes") from None
        if not isinstance(meta, dict):
            meta = {}
    keys, masks = [], []
    weights: dict[str, np.ndarray] = {}
    buffers: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        if array.dtype == bool:
            keys.append(key)
            masks.append(array)
        elif key.endswith(".weight") and np.issubdtype(array.dtype, np.floating):
            weights[key[: -len(".weight")]] = array
        elif buffer_base(key) is not None:
            buffers[key] = array
        else:
            raise UserError(f"{path}: unexpected array {key!r} ({array.dtype}, shape {tuple(array.shape)}): an npz "
                            "import holds one bool array per layer (convert 0/1 masks with .astype(bool)), optionally "
                            "<layer>.weight float arrays and BatchNorm statistics")
    if not keys:
        raise UserError(f"{path} holds no bool arrays: an npz import holds one boolean mask per layer")
    for key, mask in zip(keys, masks):
        if mask.ndim not in (2, 4) or mask.size == 0:
            raise UserError(f"{path}: mask {key!r} has shape {tuple(mask.shape)}; masklab masks linear (out, in) and "
                            "convolution (out, in, kh, kw) weights")
    strays = sorted(set(weights) - set(keys))
    if strays:
        raise UserError(f"{path}: {strays[0]}.weight has no mask {strays[0]!r} beside it")
    if weights and len(weights) != len(keys):
        missing = next(k for k in keys if k not in weights)
        raise UserError(f"{path}: layer {missing!r} has no {missing}.weight but others do: give the weights of every "
                        "layer or of none")
    stored = None
    if weights:
        stored = []
        for key, mask in zip(keys, masks):
            w = check_weight(weights[key], f"{key}.weight", path)
            if w.shape != mask.shape:
                raise UserError(f"{path}: {key}.weight has shape {tuple(w.shape)} but its mask {tuple(mask.shape)}")
            stored.append(w)
    method = meta.get("method") if meta.get("method") in ("edge-popup", "biprop") else None
    info = {k: meta[k] for k in ("run", "mask_id", "method") if isinstance(meta.get(k), (str, int))}
    return Source(path=path, format=FORMAT, sha256=sha, size=len(data), keys=keys, weights=stored, masks=masks,
                  buffers=buffers, method=method, method_from="the file's masklab entry" if method else None,
                  info=info)


def write(layers: list[tuple[str, np.ndarray | None, np.ndarray]], buffers: dict[str, np.ndarray],
          meta: dict[str, Any]) -> bytes:
    """An npz of `<name>` (bool mask) and `<name>.weight` (float32) per layer, the buffers and the metadata."""
    arrays: dict[str, np.ndarray] = {}
    for name, weight, mask in layers:
        arrays[name] = np.ascontiguousarray(mask, dtype=bool)
        if weight is not None:
            arrays[f"{name}.weight"] = np.ascontiguousarray(weight, dtype=np.float32)
    for name, value in buffers.items():
        arrays[name] = np.array(value)
    arrays[META] = np.array(json.dumps(meta, sort_keys=True))
    out = io.BytesIO()  # (not files.npz_bytes: its ascontiguousarray would turn the 0-d metadata into shape (1,))
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()
