"""Figures: one function per figure, each taking pandas DataFrames (never a Run) and returning a matplotlib
Figure drawn on an Agg canvas without pyplot (nothing is shown; Jupyter displays the returned figure).
`save_figure(fig, "figures/run/name")` writes name.png and name.svg. A figure's name says what it draws, and
never repeats the name of the analysis whose table it draws (that one returns a DataFrame).

Landscape: `distance_heatmap`, `per_layer_similarity` (input built by
`masklab.analysis.summary.layer_summary`), `distance_histogram`,
`embedding_scatter`, `consensus_bars` (of `masklab.analysis.consensus_histogram`), `similarity_by_group`
(several runs side by side). Paths: `interpolation_curves`, `barrier_vs_distance`, `trajectory_curves` (of
`masklab.analysis.trajectories.trajectories`). Sweeps: `accuracy_vs_sparsity`.
"""

from masklab.plots._style import save_figure
from masklab.plots.landscape import (
    consensus_bars,
    distance_heatmap,
    distance_histogram,
    embedding_scatter,
    per_layer_similarity,
    similarity_by_group,
)
from masklab.plots.paths import barrier_vs_distance, interpolation_curves, trajectory_curves
from masklab.plots.sweep import accuracy_vs_sparsity

__all__ = ["accuracy_vs_sparsity", "barrier_vs_distance", "consensus_bars", "distance_heatmap",
           "distance_histogram", "embedding_scatter", "interpolation_curves", "per_layer_similarity",
           "save_figure", "similarity_by_group", "trajectory_curves"]
