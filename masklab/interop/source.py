"""What a format reader gives the importer: one file's layers, weights, masks or scores, and what it says."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UserError

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
PREFIX = "module."  # what torch.nn.DataParallel puts before every key


@dataclass
class Source:
    """One imported file. Layers are in the file's order; arrays keep the file's shapes and dtypes."""

    path: Path
    format: str
    sha256: str
    size: int
    keys: list[str]  # their layer names (the `module.` prefix removed)
    weights: list[np.ndarray] | None  # None: the file holds masks only (an npz without weights)
    masks: list[np.ndarray] | None = None  # bool (torch-prune, npz)
    scores: list[np.ndarray] | None = None  # hidden-networks
    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # BatchNorm statistics, by their names
    biases: dict[str, np.ndarray] = field(default_factory=dict)  # biases by their key (masklab's models have none)
    unused: list[str] = field(default_factory=list)  # parameters masklab has no place for (named in errors)
    ignored: list[str] = field(default_factory=list)  # keys that are not the network (e.g. the optimizer state)
    prefix: str = ""  # "module." when every key had it
    keep: float | None = None  # the keep fraction the file records (Biprop's prune_rate)
    method: str | None = None  # the method the file says it was trained with (Biprop's checkpoint fields)
    method_from: str | None = None  # why (for the record)
    info: dict[str, Any] = field(default_factory=dict)  # what the checkpoint reported (JSON-safe)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        arrays = self.weights if self.weights is not None else self.masks if self.masks is not None else self.scores
        assert arrays is not None
        return [tuple(int(d) for d in a.shape) for a in arrays]


def strip_prefix(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The state dict without DataParallel's `module.` prefix (removed only when every key has it)."""
    if state and all(isinstance(k, str) and k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX):]: v for k, v in state.items()}, PREFIX
    return dict(state), ""


def buffer_base(key: str) -> str | None:
    """`bn1` for `bn1.running_mean` (a BatchNorm statistic), else None."""
    head, _, tail = key.rpartition(".")
    return head if head and tail in BUFFER_SUFFIXES else None


def check_weight(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{path}: {key} has dtype {array.dtype}, not a floating-point weight")
    if array.ndim not in (2, 4) or array.size == 0:
        raise UserError(f"{path}: {key} has shape {tuple(array.shape)}; masklab masks linear (out, in) and "
                        "convolution (out, in, kh, kw) weights")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{path}: {key} holds NaN or infinite weights; the file is damaged")
    return array


def zero_one(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    """A mask stored as numbers (torch.nn.utils.prune keeps float 0/1) as bool, refusing other values."""
    if array.dtype == bool:
        return array
    if not np.all((array == 0) | (array == 1)):
        raise UserError(f"{path}: {key} holds values other than 0 and 1; a mask is binary")
    return array.astype(bool)
