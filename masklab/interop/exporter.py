"""`masklab.export_mask(run, i, format, path)` and `masklab.plain_model(run, i)`: any stored mask, in a form
other tools read.

Formats (docs/interop.md says what each round trip proves):
- `state-dict`: the state dict of `plain_model(run)` (plain nn.Linear / nn.Conv2d without bias, nn.BatchNorm2d)
  holding mask i's effective weights: W * mask (Biprop: sign(W) * alpha * mask) and the BatchNorm buffers.
  `masklab.plain_model(run).load_state_dict(torch.load(FILE))` gives the subnetwork as an ordinary nn.Module.
- `torch-prune`: `<layer>.weight_orig` and `<layer>.weight_mask` per layer (masklab/interop/torch_prune.py).
- `hidden-networks`: a checkpoint dict in that code's layout, scores chosen so that its rule at the written
  `prune_rate` selects exactly the mask (masklab/interop/hidden_networks.py).
- `npz`: the bool mask per layer with the weights (masklab/interop/npz.py).
Every file is written atomically (a temporary file renamed into place) and never through a symbolic link.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from masklab import __version__
from masklab import files as W
from masklab.errors import StoreError, UserError
from masklab.interop import hidden_networks, npz, rules, torch_prune
from masklab.keep import reference_keep_count
from masklab.nn.layers import MaskedConv2d, MaskedLinear, masked_layers
from masklab.nn.models import build_model
from masklab.store.run import Run, open_run

EXPORT_FORMATS = ("state-dict", "torch-prune", "hidden-networks", "npz")


def _as_run(run):
    return run if isinstance(run, Run) else open_run(run)


def _need_model(run, what: str) -> None:
    if not run.has_architecture:
        raise UserError(f"run {run.id} was imported without --model and --dataset, so it has no architecture for "
                        f"{what}; import the files again with --model M --dataset D (or export npz / hidden-networks)")


def _plainify(module: nn.Module) -> nn.Module:
    """Replace masklab's layers by plain torch.nn ones of the same shapes, in place."""
    for name, child in module.named_children():
        if isinstance(child, MaskedLinear):
            out_f, in_f = child.weight.shape
            setattr(module, name, nn.Linear(in_f, out_f, bias=False))
        elif isinstance(child, MaskedConv2d):
            out_c, in_c, kh, kw = child.weight.shape
            setattr(module, name, nn.Conv2d(in_c, out_c, (kh, kw), child.stride, child.padding, bias=False))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm2d(child.num_features, child.eps, child.momentum, affine=child.affine,
                                                 track_running_stats=child.track_running_stats))
        else:
            _plainify(child)
    return module


def plain_model(run, i: int | None = None) -> nn.Module:
    """The run's network built from plain torch.nn layers (nn.Linear / nn.Conv2d without bias, nn.BatchNorm2d;
    masklab's layers replaced), in eval mode. With `i`, it holds mask i's effective weights (what `state-dict`
    export writes), so it computes what `run.model(i)` computes, and any tool that takes an nn.Module works on
    the subnetwork. `run`: a Run, a path or a run id."""
    run = _as_run(run)
    _need_model(run, "a plain model")
    cfg, shape = run.config, run.meta["dataset"]
    masked = build_model(cfg.model, tuple(shape["input_shape"]), int(shape["n_classes"]), cfg.width, cfg.method,
                         cfg.sparsity)
    names = [n for n, _ in masked_layers(masked)]
    if names != list(run.layers["layer"]):
        raise StoreError(f"run {run.id}: this masklab builds model {cfg.model} with layers {names}, the run has "
                         f"{list(run.layers['layer'])}")
    model = _plainify(masked)
    if i is not None:
        model.load_state_dict(effective_state(run, i, keys=list(model.state_dict())))
    return model.eval()


@torch.no_grad()
def effective_state(run, i: int, keys: list[str] | None = None) -> OrderedDict:
    """Mask i's state dict for `plain_model(run)`: each layer's effective weight and the BatchNorm buffers.
    `keys`: the plain model's state-dict keys, in its order (default: from `plain_model(run)`)."""
    model = run.model(i)
    layers = dict(masked_layers(model))
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in keys if keys is not None else plain_model(run).state_dict():
        module = key.rsplit(".", 1)[0]
        if module in layers and key.endswith(".weight"):
            state[key] = layers[module].effective_weight().detach().clone().contiguous()
        else:
            state[key] = model.get_buffer(key).detach().clone()
    return state


@torch.no_grad()
def _layers(run, i: int) -> tuple[list[str], list[np.ndarray | None], list[np.ndarray], list[np.ndarray | None],
                                  dict[str, np.ndarray]]:
    """(names, raw weights W, masks, what the mask multiplies (W; Biprop sign(W) * alpha), buffers) of mask i,
    from the rebuilt subnetwork where the run has an architecture, else from what the run stores."""
    names = list(run.layers["layer"])
    masks = run.mask_layers(i)
    if run.has_architecture:
        model = run.model(i)
        weights: list[np.ndarray | None] = []
        multiplied: list[np.ndarray | None] = []
        for _, layer in masked_layers(model):
            weights.append(layer.weight.detach().numpy().copy())
            if layer.method == "biprop":
                multiplied.append((torch.sign(layer.weight) * layer.alpha()).numpy().copy())
            else:
                multiplied.append(layer.weight.detach().numpy().copy())
        buffers = {k: v.detach().numpy().copy() for k, v in model.named_buffers()}
        return names, weights, masks, multiplied, buffers
    stored = run.weights(i)
    weights = list(stored) if stored is not None else [None] * len(names)
    return names, weights, masks, weights, dict(run.buffers(i) or {})


def export_mask(run, i: int, format: str, path: str | os.PathLike) -> Path:
    """Write mask `i` of `run` (a Run, a path or a run id) to `path` in `format` (one of EXPORT_FORMATS);
    returns the path. Everything is computed before the file is written (atomically, never through a link);
    a path inside a run directory (any run's files) is refused."""
    run = _as_run(run)
    if format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    run.record(i)  # a mask id that is not there: one line naming the ids there are
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give the file to write")
    W.check_target(path)  # before the work: never into a run (any run), never through a link
    if format == "state-dict":
        _need_model(run, "a state dict")
        out = io.BytesIO()
        torch.save(effective_state(run, i), out)
        data = out.getvalue()
    elif format == "torch-prune":
        _need_model(run, "torch.nn.utils.prune state")
        names, _, masks, multiplied, buffers = _layers(run, i)
        pairs = [(n, m_w, m) for n, m_w, m in zip(names, multiplied, masks) if m_w is not None]
        assert len(pairs) == len(names)  # (a run with an architecture rebuilds every layer's weights)
        data = torch_prune.write(pairs, buffers)
    elif format == "npz":
        names, weights, masks, _, buffers = _layers(run, i)
        data = npz.write(list(zip(names, weights, masks)), buffers, _meta(run, i))
    else:
        data = _hidden_networks(run, i)
    W.atomic_write(path, data)
    return path


def _meta(run, i: int) -> dict:
    return {"run": run.id, "mask_id": int(i), "method": run.config.method, "keep_rule": run.config.keep_rule,
            "exported_by": f"masklab {__version__}"}


def _hidden_networks(run, i: int) -> bytes:
    """Mask i as a hidden-networks checkpoint: their names and shapes, 0/1 scores, the prune_rate that their
    rule turns into exactly this mask's per-layer counts."""
    names, weights, masks, _, buffers = _layers(run, i)
    if any(w is None for w in weights):
        raise UserError(f"run {run.id} stores no weights for mask {i} (it was imported from masks alone), and a "
                        "hidden-networks checkpoint needs them; export npz instead")
    cfg = run.config
    n_bits, n_keep = [int(n) for n in run.layers["n_bits"]], [int(k) for k in run.layers["n_keep"]]
    keep = cfg.keep_fraction if cfg.keep_rule == "reference" else rules.find_reference_keep(n_bits, n_keep, cfg.keep)
    if keep is None or [reference_keep_count(n, keep) for n in n_bits] != n_keep:
        raise UserError(f"run {run.id} keeps different fractions of its layers ({n_keep} of {n_bits}); the "
                        "hidden-networks format has one prune_rate for the whole network and cannot express them: "
                        "export torch-prune or npz")
    imported = run.imported or {}
    back = {ours: theirs for theirs, ours in imported.get("mapping", {}).items()} \
        if imported.get("format") == "hidden-networks" else {}

    def name(ours: str) -> str:
        return back.get(ours) or (hidden_networks.their_name(cfg.model, ours) if run.has_architecture else ours)

    layers = []
    for ours, w, m in zip(names, weights, masks):
        assert w is not None
        if run.has_architecture and w.ndim == 2:  # their linear layers are 1x1 convolutions
            w, m = w.reshape(*w.shape, 1, 1), m.reshape(*m.shape, 1, 1)
        layers.append((name(ours), w, m))
    theirs_buffers = {}
    for key, value in buffers.items():
        module, _, stat = key.rpartition(".")
        theirs_buffers[f"{name(module)}.{stat}"] = value
    record = run.record(i)
    sources = imported.get("sources", [])
    arch = hidden_networks.ARCH.get(cfg.model)
    if arch is None and i < len(sources):
        reported = sources[i].get("reported", {}).get("arch")
        arch = reported if isinstance(reported, str) else None
    acc = record.get("test_acc")
    best = 100.0 * acc if isinstance(acc, (int, float)) else 0.0
    extra = {"epoch": int(record.get("epochs") or 0), "best_acc1": best, "masklab": _meta(run, i)}
    if cfg.method == "biprop":  # Biprop's save_checkpoint fields: an import then reads it as Biprop again
        extra["fields"] = {"conv_type": "SubnetConv", "train_augmentation": "Default"}
    return hidden_networks.write(layers, theirs_buffers, keep, arch, extra)
