"""The settings of one analysis and its id: `analysis/<settings id>/` per distinct set of options.

`AnalysisSettings` holds what an analysis computes (which stages, how many pairs and points, the sample sizes
of the stages that subsample, the seed), never where it writes or how it draws (figure formats, the engine that
evaluates barrier pairs: every engine gives the same numbers). Its id is ``default`` when every setting is at
its default, else the first 8 hex digits of the SHA-256 of the canonical JSON of the settings that differ (so
adding a setting later, with a default, changes no existing id). `analyze` writes the tables of each id into
``runs/<run>/analysis/<id>/`` and its figures and page into ``figures/<run>/<id>/``: a second analysis with
other settings overwrites nothing of the first.

The sample sizes are chosen so that 10,000 masks analyse within minutes on 2 cores (issue 24); `full=True`
(`analyze --full`) lifts every one of them (all masks in every stage; the structure test then clusters
`n_random` random sets of N masks too), and each can be set on its own (None: all).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from masklab.analysis.embedding import METHODS
from masklab.analysis.thresholds import MAX_POINTS
from masklab.errors import UserError

DEFAULT_ID = "default"


@dataclass(frozen=True)
class AnalysisSettings:
    """What one `analyze` computes. See the module docstring."""

    pairs: int = 3                       # interpolation pairs, stratified by distance (0: no interpolation)
    points: int = 30                     # points per interpolation path, both ends included
    embedding: bool = True               # draw an embedding of the masks
    embedding_method: str = "auto"       # auto (MDS below 50 masks, UMAP from 50), umap, mds or tsne
    n_random: int = 99                   # random mask sets of the structure test (p down to 1 / (1 + n_random))
    random_state: int = 0                # the seed of every sample and random draw
    cluster_masks: int | None = 2000     # masks clustered (and shown in the heatmap); None: all
    embedding_masks: int | None = 2000   # masks embedded; None: all
    structure_masks: int | None = 200    # masks of the structure test (and of each random set); None: all
    null_masks: int = 400                # random masks whose pairs show the null distribution in the histogram
    full: bool = False                   # lift every sample size: all masks in every stage
    functional: bool = True              # prediction disagreement, ensembles, linear CKA (masklab.report.functional)
    functional_masks: int | None = 2000  # masks whose predictions are compared pair by pair; None: all
    functional_pairs: int | None = 20_000  # pairs in the disagreement table, its correlation and figure; None: all

    def __post_init__(self) -> None:
        def count(name: str, least: int, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"analysis setting {name} = {value!r} is invalid: use an integer >= {least}"
                                + (" (or all)" if allow_none else ""))

        count("pairs", 0)
        count("points", 2)
        if self.points > MAX_POINTS:
            raise UserError(f"points = {self.points:,} is more than the limit of {MAX_POINTS:,} (each point evaluates "
                            "the network on the test split); use fewer points")
        count("n_random", 1)
        count("random_state", 0)
        count("cluster_masks", 4, True)
        count("embedding_masks", 4, True)
        count("structure_masks", 4, True)
        count("null_masks", 2)
        count("functional_masks", 2, True)
        count("functional_pairs", 1, True)
        if self.embedding_method != "auto" and self.embedding_method not in METHODS:
            raise UserError(f"unknown embedding method {self.embedding_method!r}; choose auto or one of "
                            f"{', '.join(METHODS)}")

    def limit(self, name: str) -> int | None:
        """The sample size of stage setting `name` (cluster_masks, ...), None (all) with `full`."""
        return None if self.full else getattr(self, name)

    def to_dict(self, *, non_default: bool = False) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if non_default and value == f.default:
                continue
            out[f.name] = value
        return out

    @property
    def id(self) -> str:
        """``default``, or 8 hex digits of the SHA-256 of the non-default settings as canonical JSON."""
        changed = self.to_dict(non_default=True)
        if not changed:
            return DEFAULT_ID
        return hashlib.sha256(json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]

    def replace(self, **changes: Any) -> AnalysisSettings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The non-default settings in a few words ("all defaults" when none)."""
        changed = self.to_dict(non_default=True)
        return ", ".join(f"{k} = {'all' if v is None else v}" for k, v in changed.items()) or "all defaults"


__all__ = ["DEFAULT_ID", "AnalysisSettings"]
