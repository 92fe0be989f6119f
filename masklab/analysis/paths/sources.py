"""Where the ends of a path come from: a stored run, or masks trained in memory.

`MaskSource` is what interpolation needs of a run (a `typing.Protocol`: anything with these members is one);
`RunSource` wraps a stored run (`masklab.open_run`), `TrainedSource` masks trained with
`masklab.train.train_mask` (`from_trained`), and `as_source` turns a Run, a run path or a source into a source.
Rebuilding a model is the one place where analysis reaches into training (DESIGN.md: "analysis never imports
training internals except to rebuild a model for interpolation"); the interpolation's modules (analysis/paths)
import torch and training at their top, and the report imports them only when its interpolation stage runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from masklab.analysis.paths.geometry import Subnet
from masklab.data import load_config_dataset
from masklab.errors import UserError
from masklab.nn.layers import masked_layers
from masklab.store.run import Run, open_run
from masklab.train.recycling import rebuild_weights
from masklab.train.trainer import make_model

if TYPE_CHECKING:
    from masklab.config import RunConfig
    from masklab.data import Dataset
    from masklab.train.trainer import TrainedMask


@runtime_checkable
class MaskSource(Protocol):
    """The masks of one run as the interpolation needs them: the run's `config`, its mask `ids`, its
    `dataset()`, `model(device, i)` (the run's model built for mask `i`, default the first: its masked layers
    hold the weights shared by ends that carry none) and `subnet(i)` (mask `i` as a path end)."""

    config: RunConfig
    ids: list[int]

    def dataset(self) -> Dataset: ...

    def model(self, device: str | torch.device = "cpu", i: int | None = None) -> nn.Module: ...

    def subnet(self, i: int) -> Subnet: ...


class RunSource:
    """A stored run (`masklab.open_run`) as a MaskSource."""

    def __init__(self, run: Run):
        self.run = run
        self.config = run.config
        self.ids = list(run.ids)

    def dataset(self) -> Dataset:
        return self.run.dataset()

    def model(self, device: str | torch.device = "cpu", i: int | None = None) -> nn.Module:
        return self.run.model(self.ids[0] if i is None else i, str(device))

    def subnet(self, i: int) -> Subnet:
        run = self.run
        weights = [layer.weight.detach().clone() for _, layer in masked_layers(run.model(i))] \
            if run.per_mask_weights else None  # recycling, dense, or an import of files with different weights
        scores = run.scores(i) if run.has_extra(i, "scores") else None
        return Subnet.of(run.mask_layers(i), weights, scores)


class TrainedSource:
    """Masks trained in memory with `masklab.train.train_mask` (a list of `TrainedMask`) as a MaskSource."""

    def __init__(self, config: RunConfig, trained: Sequence[TrainedMask], dataset: Dataset | None = None):
        self.config = config
        self.trained = {int(t.index): t for t in trained}
        self.ids = list(self.trained)
        self._dataset = dataset

    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = load_config_dataset(self.config)
        return self._dataset

    def _get(self, i: int) -> TrainedMask:
        if i not in self.trained:
            raise UserError(f"no trained mask {i}; the masks are {sorted(self.trained)}")
        return self.trained[i]

    def model(self, device: str | torch.device = "cpu", i: int | None = None) -> nn.Module:
        t = self._get(self.ids[0] if i is None else i)
        return make_model(self.config, self.dataset(), t.score_seed).to(device).eval()

    def subnet(self, i: int) -> Subnet:
        t, cfg = self._get(i), self.config
        weights: Sequence[np.ndarray | torch.Tensor] | None = None
        if t.weights is not None:
            weights = t.weights
        elif t.src is not None or t.draw is not None:
            weights = [rebuild_weights(tuple(shape), k, t.weight_seed, cfg.resolved("weight_init"),
                                       cfg.resolved("scale_fan"), cfg.keep,
                                       src=None if t.src is None else torch.from_numpy(np.asarray(t.src[k])),
                                       draw=None if t.draw is None else torch.from_numpy(np.asarray(t.draw[k])))
                       for k, shape in enumerate(t.layer_shapes)]
        return Subnet.of(t.masks, weights, t.scores)


def from_trained(config: RunConfig, trained: Sequence[TrainedMask], dataset: Dataset | None = None) -> TrainedSource:
    """Wrap masks trained with `train_mask(config, i, dataset=...)` so that `interpolate` and
    `barrier_matrix` take them like a run (mask ids = the training indices)."""
    return TrainedSource(config, trained, dataset)


def as_source(run: object) -> MaskSource:
    """A MaskSource for a stored Run (or a path / run id), or a MaskSource itself."""
    if isinstance(run, Run):
        return RunSource(run)
    if isinstance(run, MaskSource):
        return run
    if isinstance(run, (str, os.PathLike)):
        return RunSource(open_run(run))
    raise UserError(f"expected a run (masklab.open_run) or masks from `from_trained`, got {type(run).__name__}")


__all__ = ["MaskSource", "RunSource", "TrainedSource", "as_source", "from_trained"]
