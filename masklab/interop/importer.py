"""`masklab.import_masks`: a run from masks trained by other code (one file = one mask, in the order given).

Everything is read and checked first (the files, their layers against each other and against masklab's
model, the keep rule, the weights), each mask is evaluated when a model and dataset are given, and only then
is the run written: its directory appears whole (RunWriter.open renames a finished temporary directory into
place, with the shared weights inside), then the masks; if writing a mask fails, the run is removed again.

What the run records (run.json's `imported` section, see docs/interop.md): the format, the method and where
it came from, the keep rule and its rate, the tie-break, whether the weights are shared, the layer mapping
(their key -> our layer), the per-layer counts, Biprop's gain counts, and per source its file, size, sha256
and what the checkpoint reported (epoch, arch, best_acc1, ...). Its digest (sha256 of the sources' sha256s
and the rule, see store.schema.import_digest) is the config's `imported` field, so the run id
`<name>-<hash8>` names exactly these files imported this way: importing them again finds the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masklab.config import RunConfig
from masklab.errors import StoreError, UserError
from masklab.interop import hidden_networks, npz, rules, torch_prune
from masklab.interop.checkpoint import read_bytes, sha256
from masklab.interop.source import Source, buffer_base
from masklab.keep import biprop_gain_count, n_keep, reference_keep_count
from masklab.store import schema as S
from masklab.store.bits import make_layout

READERS: dict[str, Callable[[Path, bytes, str], Source]] = {
    hidden_networks.FORMAT: hidden_networks.read, torch_prune.FORMAT: torch_prune.read, npz.FORMAT: npz.read}
FORMATS = tuple(READERS)
METHODS = ("edge-popup", "biprop")
NO_MODEL = "none"  # the config's model and dataset of a run imported without --model / --dataset


@dataclass
class Plan:
    """An import checked in full, ready to write."""

    config: RunConfig
    layout: pd.DataFrame
    dataset_info: dict
    section: dict
    masks: list[list[np.ndarray]]  # per mask, per layer (our shapes)
    weights: list[list[np.ndarray]] | None  # shared: one list; per-mask: one per mask; None: no weights
    buffers: list[dict[str, np.ndarray]]
    scores: list[list[np.ndarray] | None]
    metrics: list[dict]
    alphas: list[list[float] | None]
    run_files: dict[str, bytes] = field(default_factory=dict)


def import_masks(paths: str | os.PathLike | Sequence[str | os.PathLike], format: str = "hidden-networks", *,
                 keep: float | None = None, sparsity: float | None = None, method: str | None = None,
                 model: str | None = None, dataset: str | None = None, data_root: str | os.PathLike | None = None,
                 width: float = 1.0, runs_dir: str | os.PathLike = "runs", name: str | None = None,
                 allow_different_weights: bool = False, log: Callable[[str], None] | None = None):
    """Import the masks of `paths` (one file = one mask, in this order) into one run and return the Run.

    `format`: "hidden-networks" (also Biprop and the IWR code), "torch-prune" or "npz" (docs/interop.md).
    `keep` is the reference code's prune_rate (the fraction KEPT): hidden-networks masks are their rule,
    zero the int((1 - keep) * n) smallest |scores| per layer; a Biprop checkpoint's own prune_rate is used
    when it has one. `sparsity` S means keep = 1 - S there. For torch-prune and npz the masks are in the
    files; `keep` / `sparsity` then only check that every layer keeps what that rule keeps (and record it).
    `method`: edge-popup or biprop (default: what the files say, else edge-popup).
    `model` and `dataset` (with `data_root`, `width`): the masklab model the files are; the layers are
    checked against it and every mask is evaluated (test_acc, test_loss). Without them the masks are
    imported for the analyses of their bits only.
    Files whose weights differ are refused unless `allow_different_weights` (each mask then keeps its own).
    Bad input is a UserError naming the file and what is wrong; nothing is written then.
    """
    from masklab.store.run import Run

    plan = plan_import(paths, format, keep=keep, sparsity=sparsity, method=method, model=model, dataset=dataset,
                       data_root=data_root, width=width, name=name, allow_different_weights=allow_different_weights,
                       log=log)
    path = write_import(plan, runs_dir)
    run = Run(path)
    run.masks  # noqa: B018 -- builds the consolidated bit matrix for the analyses
    return run


# ---- checking and planning --------------------------------------------------------------------------------
def _check_args(paths, format, keep, sparsity, method, model, dataset, data_root, width) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("masklab import needs at least one file")
    if format not in READERS:
        raise UserError(f"unknown import format {format!r}; choose one of {', '.join(FORMATS)}")
    if keep is not None and sparsity is not None:
        raise UserError("give --keep K or --sparsity S, not both (--keep is the reference code's prune_rate, the "
                        "fraction kept)")
    if keep is not None and not (isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1):
        raise UserError(f"--keep {keep!r} is invalid: the fraction of each layer kept must lie in (0, 1]")
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool)
                                     and 0 <= sparsity < 1):
        raise UserError(f"--sparsity {sparsity!r} is invalid: the fraction of each layer removed must lie in [0, 1)")
    if method is not None and method not in METHODS:
        raise UserError(f"--method {method!r} is invalid: imported masks are {' or '.join(METHODS)}")
    if (model is None) != (dataset is None):
        raise UserError("give --model and --dataset together (the masklab model the files are, and the data to "
                        "evaluate it on), or neither")
    if data_root is not None and dataset is None:
        raise UserError("--data-root needs --dataset")
    if not (isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0):
        raise UserError(f"--width {width!r} is invalid: the width multiplier must be > 0")
    from masklab.config import MAX_MASKS

    if len(paths) > MAX_MASKS:
        raise UserError(f"{len(paths):,} files are more than the {MAX_MASKS:,} masks a run holds")
    return paths


def _fits(theirs: tuple[int, ...], ours: tuple[int, ...]) -> bool:
    """Their shape stands for ours: equal, or their 1x1 convolution (out, in, 1, 1) for our linear (out, in)."""
    def squeeze(shape):
        return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape
    return theirs == ours or squeeze(theirs) == squeeze(ours)


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _same_structure(first: Source, other: Source) -> None:
    if other.keys != first.keys:
        extra = [k for k in other.keys if k not in first.keys] + [k for k in first.keys if k not in other.keys]
        detail = f"layer {extra[0]!r} is in one and not the other" if extra else "the layers come in another order"
        raise UserError(f"{other.path} has other layers than {first.path} ({detail}); a run's masks share one network: "
                        "import them as separate runs")
    for key, a, b in zip(first.keys, first.shapes, other.shapes):
        if a != b:
            raise UserError(f"{other.path}: layer {key} has shape {_shape(b)}, {first.path} {_shape(a)}; a run's masks "
                            "share one network: import them as separate runs")
    if (other.weights is None) != (first.weights is None):
        raise UserError(f"{other.path} {'has no' if other.weights is None else 'has'} weights and {first.path} "
                        f"{'has' if other.weights is None else 'has no'}: give the weights with every file or with "
                        "none")


def _resolve_keep(source: Source, given: float | None, settled: float | None) -> float:
    """The keep fraction of a hidden-networks file: its own (Biprop), else the one given; all files one."""
    own = source.keep
    if own is not None and given is not None and own != given:
        raise UserError(f"{source.path} was trained at keep {own!r} (its prune_rate) but --keep/--sparsity ask for "
                        f"{given!r}; drop the option to use the checkpoint's own rate")
    keep = own if own is not None else given if given is not None else settled
    if keep is None:
        raise UserError(f"{source.path} does not record its keep fraction (hidden-networks checkpoints do not); pass "
                        "--keep K, the prune_rate it was trained with (the fraction of each layer KEPT)")
    if settled is not None and keep != settled:
        raise UserError(f"{source.path} was trained at keep {keep!r}, the files before it at {settled!r}; a run's "
                        "masks keep the same fraction: import them as separate runs")
    return keep


def _counts(masks: list[np.ndarray]) -> list[int]:
    return [int(np.count_nonzero(m)) for m in masks]


@dataclass
class _Target:
    """Where the layers go: our names and shapes, the mapping, our BatchNorm names (None without a model)."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    mapping: dict[str, str]
    bn: list[tuple[str, dict[str, tuple[int, ...]]]] | None
    dataset: Any = None
    info: dict = field(default_factory=dict)


def _model_target(first: Source, model: str, dataset: str, data_root, width: float, method: str) -> _Target:
    """masklab's model for `first`: its layers must fit theirs, one for one and in order."""
    import torch

    from masklab.data import load_dataset
    from masklab.nn.layers import masked_layers
    from masklab.nn.models import build_model

    RunConfig(model=model, dataset=dataset, width=width, method=method).validate()  # names and width, one line
    data = load_dataset(dataset, data_root)
    with torch.device("meta"):
        net = build_model(model, data.input_shape, data.n_classes, width, method)
    ours = [(n, tuple(int(d) for d in m.weight.shape)) for n, m in masked_layers(net)]
    what = f"model {model} (width {width:g}) on {dataset}"
    for k, (key, theirs) in enumerate(zip(first.keys, first.shapes)):
        if k >= len(ours):
            raise UserError(f"{first.path}: layer {key} {_shape(theirs)} does not fit {what}: it has {len(ours)} "
                            f"prunable layers, the file {len(first.keys)}")
        if not _fits(theirs, ours[k][1]):
            raise UserError(f"{first.path}: layer {key} {_shape(theirs)} does not fit {what}, whose layer {k + 1} "
                            f"{ours[k][0]} is {_shape(ours[k][1])}; check --model, --dataset and --width")
    if len(first.keys) < len(ours):
        name, shape = ours[len(first.keys)]
        raise UserError(f"{first.path} has {len(first.keys)} prunable layers, {what} {len(ours)}: nothing fits its "
                        f"layer {name} {_shape(shape)}")
    mapping = {key: name for key, (name, _) in zip(first.keys, ours)}
    bn = [(n, {b: tuple(t.shape) for b, t in m.named_buffers() if t is not None})
          for n, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    info = {"name": dataset, "input_shape": list(data.input_shape), "n_classes": int(data.n_classes),
            "n_train": int(data.n_train), "n_test": int(data.n_test)}
    return _Target([n for n, _ in ours], [s for _, s in ours], mapping, bn, data, info)


def _bn_mapping(source: Source, target: _Target) -> dict[str, str]:
    """Their BatchNorm modules onto ours, in order (their name -> ours), shapes checked."""
    theirs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, value in source.buffers.items():
        base = buffer_base(key)
        assert base is not None
        theirs.setdefault(base, {})[key[len(base) + 1:]] = tuple(value.shape)
    assert target.bn is not None
    if len(theirs) != len(target.bn):
        raise UserError(f"{source.path} has BatchNorm statistics for {len(theirs)} layers, masklab's model has "
                        f"{len(target.bn)} BatchNorm layers; check --model")
    mapping = {}
    for (base, stats), (ours, shapes) in zip(theirs.items(), target.bn):
        for stat, shape in stats.items():
            if stat not in shapes or shapes[stat] != shape:
                raise UserError(f"{source.path}: {base}.{stat} {_shape(shape)} does not fit masklab's {ours} "
                                f"({_shape(shapes.get(stat, ()))}); check --model")
        mapping[base] = ours
    return mapping


def _refuse_unusable(source: Source, model: str) -> None:
    """With a model: parameters masklab's model has no place for, and non-zero biases, are refused."""
    if source.unused:
        raise UserError(f"{source.path} holds {source.prefix}{source.unused[0]}, which model {model} has no place "
                        "for (masklab's models have only prunable weights and non-affine BatchNorm); import without "
                        "--model/--dataset to analyse the masks alone")
    for key, bias in source.biases.items():
        if np.any(bias != 0):
            raise UserError(f"{source.path} holds a non-zero bias {source.prefix}{key}; masklab's models have no "
                            "biases, so model " + model + " cannot compute this network: import without "
                            "--model/--dataset to analyse the masks alone")


def _weights_differ(first: Source, other: Source) -> str | None:
    """The first layer whose weights differ between two files (exact comparison), or None."""
    assert first.weights is not None and other.weights is not None
    for key, a, b in zip(first.keys, first.weights, other.weights):
        if a.dtype != b.dtype or not np.array_equal(a, b):
            return key
    return None


def plan_import(paths, format: str = "hidden-networks", *, keep: float | None = None, sparsity: float | None = None,
                method: str | None = None, model: str | None = None, dataset: str | None = None,
                data_root: str | os.PathLike | None = None, width: float = 1.0, name: str | None = None,
                allow_different_weights: bool = False, log: Callable[[str], None] | None = None) -> Plan:
    """Read and check every file, compute the masks, evaluate them (with a model): everything but the write."""
    say = log or (lambda message: None)
    paths = _check_args(paths, format, keep, sparsity, method, model, dataset, data_root, width)
    if name is not None:
        RunConfig(name=name).validate()
    given_keep = keep if keep is not None else (1 - sparsity if sparsity is not None and format == "hidden-networks"
                                                else None)
    first: Source | None = None
    target: _Target | None = None
    bn_map: dict[str, str] = {}
    settled: float | None = None
    methods: list[tuple[str, str, Path]] = []
    masks: list[list[np.ndarray]] = []
    scores: list[list[np.ndarray] | None] = []
    buffers: list[dict[str, np.ndarray]] = []
    own_weights: list[list[np.ndarray]] = []
    differs: tuple[Path, str] | None = None
    sources: list[dict] = []
    dtypes: set[str] = set()
    for i, path in enumerate(paths):
        data = read_bytes(path, "file")
        source = READERS[format](path, data, sha256(data))
        del data
        if first is None:
            first = source
            if model is not None:
                assert dataset is not None
                target = _model_target(first, model, dataset, data_root, width, method or first.method or "edge-popup")
            else:
                target = _Target(list(first.keys), first.shapes, {k: k for k in first.keys}, None)
            if target.bn is not None and (first.buffers or target.bn):
                bn_map = _bn_mapping(first, target)
        else:
            assert target is not None
            _same_structure(first, source)
            if target.bn is not None and (source.buffers or target.bn):
                _bn_mapping(source, target)
        if model is not None:
            _refuse_unusable(source, model)
        if source.method is not None:
            methods.append((source.method, source.method_from or "", source.path))
        # the mask
        if format == "hidden-networks":
            assert source.scores is not None
            settled = _resolve_keep(source, given_keep, settled)
            layer_masks = [rules.reference_mask(s, settled, f"{path}: {key}.scores")
                           for key, s in zip(source.keys, source.scores)]
        else:
            assert source.masks is not None
            layer_masks = source.masks
        masks.append([m.reshape(shape) for m, shape in zip(layer_masks, target.shapes)])
        scores.append(None if source.scores is None else
                      [s.reshape(shape).astype(np.float32) for s, shape in zip(source.scores, target.shapes)])
        # buffers (our names with a model, theirs without)
        if target.bn is not None:
            buffers.append({f"{bn_map[base]}.{stat}": v for (base, _, stat), v in
                            ((k.rpartition("."), v) for k, v in source.buffers.items())})
        else:
            buffers.append(dict(source.buffers))
        # weights: the first file's are the run's; another's are compared with them
        if source.weights is not None:
            dtypes.update(str(w.dtype) for w in source.weights)
            if source is not first:
                key = _weights_differ(first, source)
                if key is not None and differs is None:
                    differs = (source.path, key)
                    if not allow_different_weights:
                        raise UserError(f"{source.path} has other weights than {first.path} (first in layer {key}); "
                                        "a landscape of masks assumes the same weights: import them as separate runs, "
                                        "or pass --allow-different-weights to keep each mask's own weights")
            if source is first or allow_different_weights:  # (else every file's weights are the first's)
                own_weights.append([w.reshape(shape).astype(np.float32) for w, shape in
                                    zip(source.weights, target.shapes)])
        sources.append({"mask_id": i, "file": str(path), "bytes": source.size, "sha256": source.sha256,
                        "prefix": source.prefix, "reported": source.info,
                        "ignored_keys": len(source.ignored) + len(source.unused) + len(source.biases)})
        say(f"read {path} ({source.size:,} bytes, {len(source.keys)} layers)")
    assert first is not None and target is not None

    # method
    found = {m for m, _, _ in methods}
    if method is None and len(found) > 1:
        raise UserError(f"the files say different methods ({', '.join(sorted(found))}); pass --method")
    method_from = "--method" if method is not None else methods[0][1] if methods else "default (edge-popup)"
    method = method or (methods[0][0] if methods else "edge-popup")

    # keep rule
    counts = _counts(masks[0])
    for i, m in enumerate(masks[1:], 1):
        c = _counts(m)
        if c != counts:
            k = next(j for j in range(len(c)) if c[j] != counts[j])
            raise UserError(f"{paths[i]} keeps {c[k]} weights in layer {first.keys[k]}, {paths[0]} keeps "
                            f"{counts[k]}: a run's masks keep the same number per layer; import them as separate runs")
    n_bits = [int(np.prod(s)) for s in target.shapes]
    keep_fraction = None
    if format == "hidden-networks":
        keep_rule, keep_fraction = "reference", settled
    elif keep is not None:
        keep_rule, keep_fraction = "reference", float(keep)
        _check_counts(paths[0], first.keys, n_bits, counts, [reference_keep_count(n, keep) for n in n_bits],
                      f"the reference rule at --keep {keep!r}")
    elif sparsity is not None:
        keep_rule = "masklab"
        _check_counts(paths[0], first.keys, n_bits, counts, [n_keep(n, sparsity) for n in n_bits],
                      f"masklab's rule at --sparsity {sparsity!r}")
    else:
        keep_rule = "stored"
    if keep_rule == "masklab":
        shown_sparsity = float(sparsity)  # type: ignore[arg-type]
    elif keep_rule == "reference":
        assert keep_fraction is not None
        shown_sparsity = min(round(1 - keep_fraction, 12), 0.999999)
    else:
        shown_sparsity = min(max(round(1 - sum(counts) / sum(n_bits), 6), 0.0), 0.999999)
    gain_counts = None
    if method == "biprop" and format == "hidden-networks":
        assert keep_fraction is not None
        gain_counts = [biprop_gain_count(n, keep_fraction) for n in n_bits]
        if 0 in gain_counts:
            k = gain_counts.index(0)
            raise UserError(f"layer {first.keys[k]} of {n_bits[k]} weights has no Biprop gain at keep "
                            f"{keep_fraction!r} (int(keep * n) = 0 in the Biprop code): not importable as Biprop")

    # weights
    if first.weights is None:
        if model is not None:
            raise UserError(f"{first.path} holds masks but no weights (<layer>.weight arrays): masklab needs them to "
                            "rebuild and evaluate the subnetworks; add them, or import without --model/--dataset")
        mode, weights = "none", None
    elif differs is not None:
        mode, weights = "per-mask", own_weights
    else:
        mode, weights = "shared", own_weights[:1]

    mapping = dict(target.mapping)
    mapping.update(bn_map)
    section: dict[str, Any] = {"format": format, "method": method, "method_from": method_from, "keep_rule": keep_rule,
               "keep_fraction": keep_fraction, "tie_break": rules.TIE_BREAK if format == "hidden-networks" else
               "none (the masks are in the files)", "weights": mode, "sources": sources, "mapping": mapping,
               "n_keep": counts, "gain_counts": gain_counts, "weights_dtype": sorted(dtypes),
               "different_weights": None if differs is None else {"file": str(differs[0]), "layer": differs[1]}}
    default = f"import-{format}" + (f"-{model}" if model else "")
    digest = S.import_digest(section)
    section["digest"] = digest
    config = RunConfig(dataset=dataset or NO_MODEL, model=model or NO_MODEL, width=float(width), method=method,
                       sparsity=shown_sparsity, keep_rule=keep_rule, keep_fraction=keep_fraction,
                       keep_scores=format == "hidden-networks", imported=digest, name=name or default,
                       masks=len(paths), data_root=None if data_root is None else str(data_root))
    (config if model is not None else config.replace(model="mlp", dataset="digits")).validate()
    layout = make_layout(target.names, target.shapes, counts)
    dataset_info = target.info or {"name": None, "input_shape": [], "n_classes": int(target.shapes[-1][0])}

    metrics: list[dict] = []
    alphas: list[list[float] | None] = []
    for i in range(len(paths)):
        metrics.append({"test_acc": None, "best_test_acc": None, "test_loss": None, "seconds": None,
                        "source_file": paths[i].name})
        alphas.append(None)
    if model is not None:
        assert weights is not None
        _evaluate(config, target, masks, weights, buffers, counts, gain_counts, metrics, alphas, say)
    for i, entry in enumerate(sources):
        epoch = entry["reported"].get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            metrics[i]["epochs"] = epoch
    files = {}
    if mode == "shared":
        from masklab.store import files as F

        assert weights is not None
        files["weights.npy"] = F.npy_bytes(np.concatenate([w.reshape(-1) for w in weights[0]]).astype(np.float32))
    return Plan(config, layout, dataset_info, section, masks, weights, buffers,
                scores if config.keep_scores else [None] * len(paths), metrics, alphas, files)


def _check_counts(path: Path, keys: list[str], n_bits: list[int], counts: list[int], expect: list[int],
                  rule: str) -> None:
    for key, n, c, e in zip(keys, n_bits, counts, expect):
        if c != e:
            raise UserError(f"{path}: layer {key} keeps {c} of {n} weights, but {rule} keeps {e}; drop the option to "
                            "import the masks as they are")


def _evaluate(config: RunConfig, target: _Target, masks, weights, buffers, counts, gain_counts, metrics, alphas,
              say) -> None:
    """Each mask's test loss and accuracy, from the subnetwork `Run.model(i)` will rebuild (the same code)."""
    import torch

    from masklab.nn.layers import masked_layers
    from masklab.train.evaluate import evaluate
    from masklab.train.rebuild import rebuild_subnet

    for i in range(len(masks)):
        start = time.perf_counter()
        w = weights[0] if len(weights) == 1 else weights[i]
        net = rebuild_subnet(config, target.dataset, config.weight_seed, i, masks[i], weights=w,
                             buffers=buffers[i] or None, n_keep=counts, gain_counts=gain_counts)
        for k, (name, layer) in enumerate(masked_layers(net)):
            if not np.array_equal(layer.mask().numpy(), masks[i][k]):  # (cannot happen: n_keep is the count)
                raise StoreError(f"mask {i} cannot be pinned in layer {name}")
        loss, acc = evaluate(net, target.dataset, "cpu")
        metrics[i].update(test_acc=float(acc), test_loss=float(loss))
        if config.method == "biprop":
            with torch.no_grad():
                alphas[i] = [float(layer.alpha()) for _, layer in masked_layers(net)]
        say(f"mask {i}: test accuracy {acc:.4f}, loss {loss:.4f} ({time.perf_counter() - start:.1f} s)")


# ---- writing ----------------------------------------------------------------------------------------------
def write_import(plan: Plan, runs_dir: str | os.PathLike) -> Path:
    """Write a checked import: the run directory (with the shared weights) appears whole, then the masks; a
    failure while writing removes the run again. An existing run of the same import is completed (a write
    that was killed) or, when complete, returned as it is."""
    from masklab.store.writer import RunWriter
    from masklab.train.trainer import TrainedMask

    config = plan.config
    exists = os.path.lexists(Path(runs_dir) / config.run_id)
    writer = RunWriter.open(runs_dir, config, plan.layout, plan.dataset_info, resume=exists,
                            run_files=plan.run_files, meta_extra={"imported": plan.section})
    try:
        names, shapes = list(plan.layout["layer"]), [tuple(s) for s in plan.layout["shape"]]
        history = pd.DataFrame(columns=["epoch", "test_loss", "test_acc"])
        for i in writer.missing:
            trained = TrainedMask(
                index=i, weight_seed=config.weight_seed, score_seed=i, data_seed=config.data_seed, layer_names=names,
                layer_shapes=shapes, n_keep=list(plan.layout["n_keep"]), masks=plan.masks[i], history=history,
                metrics=plan.metrics[i], scores=plan.scores[i],
                weights=plan.weights[i] if plan.section["weights"] == "per-mask" and plan.weights else None,
                alphas=plan.alphas[i], buffers=plan.buffers[i],
                trained_with={"imported_from": plan.section["sources"][i]["file"]})
            writer.write_mask(trained, device="cpu")
    except BaseException:
        if writer.created:
            writer.discard(with_masks=True)
        else:
            writer.close()
        raise
    writer.close()
    return writer.path
