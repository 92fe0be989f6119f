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
import torch

from masklab import files as W
from masklab.config import MAX_MASKS, RunConfig
from masklab.errors import StoreError, UserError
from masklab.interop import hidden_networks, npz, rules, torch_prune
from masklab.interop.checkpoint import check_file_kind, read_bytes, sha256
from masklab.interop.import_checks import (
    Target,
    bn_mapping,
    check_counts,
    check_same_structure,
    kept_counts,
    model_target,
    refuse_unusable,
    resolve_keep,
    weights_differ,
)
from masklab.interop.source import Source
from masklab.keep import biprop_gain_count, n_keep, reference_keep_count
from masklab.nn.layers import masked_layers
from masklab.store.bits import make_layout
from masklab.store.catalog import update_run
from masklab.store.run import Run
from masklab.store.schema import import_digest
from masklab.store.writer import RunWriter
from masklab.train.evaluate import evaluate_predictions
from masklab.train.rebuild import rebuild_subnet
from masklab.train.trainer import TrainedMask
from masklab.units import percent

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
    predictions: list[np.ndarray] | None = None  # per mask, when evaluated: its predicted test classes


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

    plan = plan_import(paths, format, keep=keep, sparsity=sparsity, method=method, model=model, dataset=dataset,
                       data_root=data_root, width=width, name=name, allow_different_weights=allow_different_weights,
                       log=log)
    path = write_import(plan, runs_dir)
    run = Run(path)
    run.masks  # noqa: B018 -- builds the consolidated bit matrix for the analyses
    update_run(run.path, runs_dir)
    return run


# ---- planning: read and check everything, then compute what the run holds --------------------------------
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
    read = _read_files(paths, format, given_keep, method, model, dataset, data_root, width, allow_different_weights,
                       say)
    method, method_from = _settle_method(method, read.methods)
    rule = _keep_rule(paths, read, format, keep, sparsity, method)
    mode, weights = _weights(read, model)
    section = _section(format, method, method_from, rule, read, mode)
    default = f"import-{format}" + (f"-{model}" if model else "")
    config = RunConfig(dataset=dataset or NO_MODEL, model=model or NO_MODEL, width=float(width), method=method,
                       sparsity=rule.shown_sparsity, keep_rule=rule.keep_rule, keep_fraction=rule.keep_fraction,
                       keep_scores=format == "hidden-networks", imported=section["digest"], name=name or default,
                       masks=len(paths), data_root=None if data_root is None else str(data_root))
    (config if model is not None else config.replace(model="mlp", dataset="digits")).validate()
    target = read.target
    layout = make_layout(target.names, target.shapes, rule.counts)
    dataset_info = target.info or {"name": None, "input_shape": [], "n_classes": int(target.shapes[-1][0])}
    metrics, alphas, predictions = _metrics(paths, read, config, weights, rule, model, say)
    files = {}
    if mode == "shared":
        assert weights is not None
        files["weights.npy"] = W.npy_bytes(np.concatenate([w.reshape(-1) for w in weights[0]]).astype(np.float32))
    return Plan(config, layout, dataset_info, section, read.masks, weights, read.buffers,
                read.scores if config.keep_scores else [None] * len(paths), metrics, alphas, files, predictions)


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
    if len(paths) > MAX_MASKS:
        raise UserError(f"{len(paths):,} files are more than the {MAX_MASKS:,} masks a run holds")
    return paths


@dataclass
class _Read:
    """What the files hold, read and checked against each other: per mask its layers' masks, scores and
    buffers (our shapes and names), the weights that differ, and a record of each source."""

    first: Source
    target: Target
    bn_map: dict[str, str]
    settled: float | None  # hidden-networks: the keep fraction every file was trained at
    methods: list[tuple[str, str, Path]]  # (method, where it came from, file) of the files that say
    masks: list[list[np.ndarray]]
    scores: list[list[np.ndarray] | None]
    buffers: list[dict[str, np.ndarray]]
    own_weights: list[list[np.ndarray]]  # the first file's; with allow_different_weights every file's
    differs: tuple[Path, str] | None  # the first file (and layer) whose weights differ from the first's
    sources: list[dict]
    dtypes: set[str]


def _read_files(paths: list[Path], format: str, given_keep: float | None, method: str | None, model: str | None,
                dataset: str | None, data_root, width: float, allow_different_weights: bool, say) -> _Read:
    """Read every file in order, checking each against the first (and against masklab's model)."""
    read: _Read | None = None
    for i, path in enumerate(paths):
        data = read_bytes(path, "file")
        check_file_kind(path, data, format, "npz" if format == npz.FORMAT else "torch")  # before any parsing
        source = READERS[format](path, data, sha256(data))
        del data
        if read is None:
            if model is not None:
                assert dataset is not None
                target = model_target(source, model, dataset, data_root, width, method or source.method or "edge-popup")
            else:
                target = Target(list(source.keys), source.shapes, {k: k for k in source.keys}, None)
            bn_map = bn_mapping(source, target) if target.bn is not None and (source.buffers or target.bn) else {}
            read = _Read(source, target, bn_map, None, [], [], [], [], [], None, [], set())
        else:
            check_same_structure(read.first, source)
            if read.target.bn is not None and (source.buffers or read.target.bn):
                bn_mapping(source, read.target)
        if model is not None:
            refuse_unusable(source, model)
        if source.method is not None:
            read.methods.append((source.method, source.method_from or "", source.path))
        _add_file(read, i, path, source, format, given_keep, allow_different_weights)
        say(f"read {path} ({source.size:,} bytes, {len(source.keys)} layers)")
    assert read is not None
    return read


def _add_file(read: _Read, i: int, path: Path, source: Source, format: str, given_keep: float | None,
              allow_different_weights: bool) -> None:
    """File `i`'s mask, scores, buffers, weights and source record into `read`."""
    target, first = read.target, read.first
    if format == "hidden-networks":
        assert source.scores is not None
        read.settled = resolve_keep(source, given_keep, read.settled)
        layer_masks = [rules.reference_mask(s, read.settled, f"{path}: {key}.scores")
                       for key, s in zip(source.keys, source.scores)]
    else:
        assert source.masks is not None
        layer_masks = source.masks
    read.masks.append([m.reshape(shape) for m, shape in zip(layer_masks, target.shapes)])
    read.scores.append(None if source.scores is None else
                       [s.reshape(shape).astype(np.float32) for s, shape in zip(source.scores, target.shapes)])
    if target.bn is not None:  # buffers: our names with a model, theirs without
        read.buffers.append({f"{read.bn_map[base]}.{stat}": v for (base, _, stat), v in
                             ((k.rpartition("."), v) for k, v in source.buffers.items())})
    else:
        read.buffers.append(dict(source.buffers))
    if source.weights is not None:  # the first file's weights are the run's; another's are compared with them
        read.dtypes.update(str(w.dtype) for w in source.weights)
        if source is not first:
            key = weights_differ(first, source)
            if key is not None and read.differs is None:
                read.differs = (source.path, key)
                if not allow_different_weights:
                    raise UserError(f"{source.path} has other weights than {first.path} (first in layer {key}); "
                                    "a landscape of masks assumes the same weights: import them as separate runs, "
                                    "or pass --allow-different-weights to keep each mask's own weights")
        if source is first or allow_different_weights:  # (else every file's weights are the first's)
            read.own_weights.append([w.reshape(shape).astype(np.float32) for w, shape in
                                     zip(source.weights, target.shapes)])
    read.sources.append({"mask_id": i, "file": str(path), "bytes": source.size, "sha256": source.sha256,
                         "prefix": source.prefix, "reported": source.info,
                         "ignored_keys": len(source.ignored) + len(source.unused) + len(source.biases)})


def _settle_method(method: str | None, methods: list[tuple[str, str, Path]]) -> tuple[str, str]:
    """(method, where it came from): --method, else what the files say (all the same), else edge-popup."""
    found = {m for m, _, _ in methods}
    if method is None and len(found) > 1:
        raise UserError(f"the files say different methods ({', '.join(sorted(found))}); pass --method")
    method_from = "--method" if method is not None else methods[0][1] if methods else "default (edge-popup)"
    return method or (methods[0][0] if methods else "edge-popup"), method_from


@dataclass
class _Rule:
    """How many weights each layer keeps, by which rule, and what the config shows of it."""

    counts: list[int]  # kept per layer, the same in every mask
    keep_rule: str
    keep_fraction: float | None
    shown_sparsity: float
    gain_counts: list[int] | None  # Biprop imports: the Biprop code's gain denominators


def _keep_rule(paths: list[Path], read: _Read, format: str, keep: float | None, sparsity: float | None,
               method: str) -> _Rule:
    """The keep rule of the masks: the reference rule (hidden-networks; --keep), masklab's (--sparsity: the
    counts must be its) or the counts as stored; every mask must keep the same number per layer."""
    first, target = read.first, read.target
    counts = kept_counts(read.masks[0])
    for i, m in enumerate(read.masks[1:], 1):
        c = kept_counts(m)
        if c != counts:
            k = next(j for j in range(len(c)) if c[j] != counts[j])
            raise UserError(f"{paths[i]} keeps {c[k]} weights in layer {first.keys[k]}, {paths[0]} keeps "
                            f"{counts[k]}: a run's masks keep the same number per layer; import them as separate runs")
    n_bits = [int(np.prod(s)) for s in target.shapes]
    keep_fraction = None
    if format == "hidden-networks":
        keep_rule, keep_fraction = "reference", read.settled
    elif keep is not None:
        keep_rule, keep_fraction = "reference", float(keep)
        check_counts(paths[0], first.keys, n_bits, counts, [reference_keep_count(n, keep) for n in n_bits],
                     f"the reference rule at --keep {keep!r}")
    elif sparsity is not None:
        keep_rule = "masklab"
        check_counts(paths[0], first.keys, n_bits, counts, [n_keep(n, sparsity) for n in n_bits],
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
    return _Rule(counts, keep_rule, keep_fraction, shown_sparsity, gain_counts)


def _weights(read: _Read, model: str | None) -> tuple[str, list[list[np.ndarray]] | None]:
    """How the run keeps the weights ("none", "shared": the first file's, "per-mask") and those weights."""
    if read.first.weights is None:
        if model is not None:
            raise UserError(f"{read.first.path} holds masks but no weights (<layer>.weight arrays): masklab needs "
                            "them to rebuild and evaluate the subnetworks; add them, or import without "
                            "--model/--dataset")
        return "none", None
    if read.differs is not None:
        return "per-mask", read.own_weights
    return "shared", read.own_weights[:1]


def _section(format: str, method: str, method_from: str, rule: _Rule, read: _Read, mode: str) -> dict[str, Any]:
    """run.json's `imported` section, with its digest (the config's `imported` field)."""
    mapping = dict(read.target.mapping)
    mapping.update(read.bn_map)
    differs = read.differs
    section: dict[str, Any] = {
        "format": format, "method": method, "method_from": method_from, "keep_rule": rule.keep_rule,
        "keep_fraction": rule.keep_fraction,
        "tie_break": rules.TIE_BREAK if format == "hidden-networks" else "none (the masks are in the files)",
        "weights": mode, "sources": read.sources, "mapping": mapping, "n_keep": rule.counts,
        "gain_counts": rule.gain_counts, "weights_dtype": sorted(read.dtypes),
        "different_weights": None if differs is None else {"file": str(differs[0]), "layer": differs[1]}}
    section["digest"] = import_digest(section)
    return section


def _metrics(paths: list[Path], read: _Read, config: RunConfig, weights, rule: _Rule, model: str | None,
             say) -> tuple[list[dict], list[list[float] | None], list[np.ndarray] | None]:
    """Each mask's record figures: evaluated with a model (test_acc, test_loss, Biprop's gains, and the
    predictions of that pass), the epochs its checkpoint reports."""
    metrics: list[dict] = [{"test_acc": None, "best_test_acc": None, "test_loss": None, "seconds": None,
                            "source_file": path.name} for path in paths]
    alphas: list[list[float] | None] = [None] * len(paths)
    predictions = None
    if model is not None:
        assert weights is not None
        predictions = _evaluate(config, read.target, read.masks, weights, read.buffers, rule.counts,
                                rule.gain_counts, metrics, alphas, say)
    for i, entry in enumerate(read.sources):
        epoch = entry["reported"].get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            metrics[i]["epochs"] = epoch
    return metrics, alphas, predictions


def _evaluate(config: RunConfig, target: Target, masks, weights, buffers, counts, gain_counts, metrics, alphas,
              say) -> list[np.ndarray]:
    """Each mask's test loss and accuracy, from the subnetwork `Run.model(i)` will rebuild (the same code), and
    returned, the predicted class of every test sample in that same pass: what a trained mask stores as its
    `predictions` extra, so that an imported run's analysis reads them as it reads a trained run's."""
    predictions = []
    for i in range(len(masks)):
        start = time.perf_counter()
        w = weights[0] if len(weights) == 1 else weights[i]
        net = rebuild_subnet(config, target.dataset, config.weight_seed, i, masks[i], weights=w,
                             buffers=buffers[i] or None, n_keep=counts, gain_counts=gain_counts)
        for k, (name, layer) in enumerate(masked_layers(net)):
            if not np.array_equal(layer.mask().numpy(), masks[i][k]):  # (cannot happen: n_keep is the count)
                raise StoreError(f"mask {i} cannot be pinned in layer {name}")
        loss, acc, predicted = evaluate_predictions(net, target.dataset, "cpu")
        predictions.append(predicted)
        metrics[i].update(test_acc=float(acc), test_loss=float(loss))
        if config.method == "biprop":
            with torch.no_grad():
                alphas[i] = [float(layer.alpha()) for _, layer in masked_layers(net)]
        say(f"mask {i}: test accuracy {percent(float(acc))}, loss {loss:.4f} nats "
            f"({time.perf_counter() - start:.1f} s)")
    return predictions


# ---- writing ----------------------------------------------------------------------------------------------
def write_import(plan: Plan, runs_dir: str | os.PathLike) -> Path:
    """Write a checked import: the run directory (with the shared weights) appears whole, then the masks; a
    failure while writing removes the run again. An existing run of the same import is completed (a write
    that was killed) or, when complete, returned as it is."""
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
                predictions=plan.predictions[i] if plan.predictions else None,
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
