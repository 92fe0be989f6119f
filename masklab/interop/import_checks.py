"""The checks of an import, each one line naming the file and what is wrong: the arguments, the files'
layers against each other and against masklab's model (`model_target`), their BatchNorm statistics, what
masklab's models have no place for, their keep fraction, counts and weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.errors import UserError
from masklab.interop.source import Source, buffer_base
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model


def _fits(theirs: tuple[int, ...], ours: tuple[int, ...]) -> bool:
    """Their shape stands for ours: equal, or their 1x1 convolution (out, in, 1, 1) for our linear (out, in)."""
    def squeeze(shape):
        return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape
    return theirs == ours or squeeze(theirs) == squeeze(ours)


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_same_structure(first: Source, other: Source) -> None:
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


def resolve_keep(source: Source, given: float | None, settled: float | None) -> float:
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


def kept_counts(masks: list[np.ndarray]) -> list[int]:
    return [int(np.count_nonzero(m)) for m in masks]


@dataclass
class Target:
    """Where the layers go: our names and shapes, the mapping, our BatchNorm names (None without a model)."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    mapping: dict[str, str]
    bn: list[tuple[str, dict[str, tuple[int, ...]]]] | None
    dataset: Any = None
    info: dict = field(default_factory=dict)


def model_target(first: Source, model: str, dataset: str, data_root, width: float, method: str) -> Target:
    """masklab's model for `first`: its layers must fit theirs, one for one and in order."""
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
    return Target([n for n, _ in ours], [s for _, s in ours], mapping, bn, data, info)


def bn_mapping(source: Source, target: Target) -> dict[str, str]:
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


def refuse_unusable(source: Source, model: str) -> None:
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


def weights_differ(first: Source, other: Source) -> str | None:
    """The first layer whose weights differ between two files (exact comparison), or None."""
    assert first.weights is not None and other.weights is not None
    for key, a, b in zip(first.keys, first.weights, other.weights):
        if a.dtype != b.dtype or not np.array_equal(a, b):
            return key
    return None


def check_counts(path: Path, keys: list[str], n_bits: list[int], counts: list[int], expect: list[int],
                  rule: str) -> None:
    for key, n, c, e in zip(keys, n_bits, counts, expect):
        if c != e:
            raise UserError(f"{path}: layer {key} keeps {c} of {n} weights, but {rule} keeps {e}; drop the option to "
                            "import the masks as they are")

