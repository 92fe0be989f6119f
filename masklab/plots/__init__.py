"""Figures: one function per figure, each taking pandas DataFrames (never a Run) and returning a matplotlib
Figure drawn on an Agg canvas without pyplot (nothing is shown; Jupyter displays the returned figure).
`save_figure(fig, "figures/run/name")` writes name.png and name.svg.

Landscape: `distance_heatmap`, `per_layer_similarity` (input built by
`masklab.analysis.summary.layer_summary`), `distance_histogram`,
`embedding_scatter`, `consensus_histogram`, `similarity_by_group` (several runs side by side).
Paths: `interpolation_curves`, `barrier_vs_distance`,
`trajectories`. Sweeps: `accuracy_vs_sparsity`.
"""

from masklab.plots._style import save_figure
from masklab.plots.landscape import (
    consensus_histogram,
    distance_heatmap,
    distance_histogram,
    embedding_scatter,
    per_layer_similarity,
    similarity_by_group,
)
from masklab.plots.paths import barrier_vs_distance, interpolation_curves, trajectories
from masklab.plots.sweep import accuracy_vs_sparsity

__all__ = ["accuracy_vs_sparsity", "barrier_vs_distance", "consensus_histogram",
           "distance_heatmap", "distance_histogram", "embedding_scatter",
           "interpolation_curves", "per_layer_similarity", "save_figure", "similarity_by_group",
           "trajectories"]
