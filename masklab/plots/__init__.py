"""Figures: one function per figure, each taking pandas DataFrames (never a Run) and returning a matplotlib
Figure drawn on an Agg canvas without pyplot (nothing is shown; Jupyter displays the returned figure).
`save_figure(fig, "figures/run/name")` writes name.png and name.svg. A figure's name says what it draws, and
never repeats the name of the analysis whose table it draws (that one returns a DataFrame).

Distances (landscape.py): `distance_heatmap`, `distance_histogram`. Similarity (similarity.py):
`per_layer_similarity` (input built by `masklab.analysis.summary.layer_summary`), `similarity_by_group` (several
runs side by side). Embedding (embedding.py): `embedding_scatter`. Consensus (consensus.py): `consensus_bars` (of
`masklab.analysis.consensus_histogram`). Paths (paths.py): `interpolation_curves`, `barrier_vs_distance`,
`trajectory_curves` (of `masklab.analysis.trajectories.trajectories`). Sweeps (sweep.py): `accuracy_vs_sparsity`.
"""

from masklab.plots._style import save_figure
from masklab.plots.consensus import consensus_bars
from masklab.plots.embedding import embedding_scatter
from masklab.plots.landscape import distance_heatmap, distance_histogram
from masklab.plots.paths import barrier_vs_distance, interpolation_curves, trajectory_curves
from masklab.plots.similarity import per_layer_similarity, similarity_by_group
from masklab.plots.sweep import accuracy_vs_sparsity

__all__ = ["accuracy_vs_sparsity", "barrier_vs_distance", "consensus_bars", "distance_heatmap",
           "distance_histogram", "embedding_scatter", "interpolation_curves", "per_layer_similarity",
           "save_figure", "similarity_by_group", "trajectory_curves"]
