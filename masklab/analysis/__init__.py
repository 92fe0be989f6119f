"""Analyses of a MaskSet; every public function returns pandas DataFrames (or numpy arrays for reuse).

- distances: `distances` (one DataFrame), `distance_matrices` (one square DataFrame per layer),
  `intersections` (raw all-pairs counts, whole and per layer);
- null: the null model (hypergeometric moments of two random masks' intersection);
- baselines: `random_baseline`, `with_baseline` (the null as tables);
- random_sets: `random_masks`, `random_baseline_samples` (sampled random masks);
- consensus: `keep_counts`, `consensus`, `consensus_histogram`, `union_coverage`, `core_weights`;
- summary: `layer_summary` (per layer and metric: the pairs' mean beside chance, in sd of the null);
- in their own modules: `masklab.analysis.compare` (two runs: within each, across, chance),
  `masklab.analysis.interpolation` (paths between masks and barriers, over the rooms of `masklab.analysis.paths`),
  clustering, embedding, trajectories.

Numba, scipy and torch are imported only when a function needs them.
"""

from masklab.analysis.baselines import random_baseline, with_baseline
from masklab.analysis.consensus import (
    consensus,
    consensus_histogram,
    core_weights,
    keep_counts,
    union_coverage,
)
from masklab.analysis.distances import METRICS, Intersections, distance_matrices, distances, intersections
from masklab.analysis.random_sets import random_baseline_samples, random_masks
from masklab.analysis.summary import layer_summary

__all__ = [
    "METRICS",
    "Intersections",
    "consensus",
    "consensus_histogram",
    "core_weights",
    "distance_matrices",
    "distances",
    "intersections",
    "keep_counts",
    "layer_summary",
    "random_baseline",
    "random_baseline_samples",
    "random_masks",
    "union_coverage",
    "with_baseline",
]
