"""Figures: one function per figure, each taking pandas DataFrames (never a Run) and returning a matplotlib
Figure drawn on an Agg canvas without pyplot (nothing is shown; Jupyter displays the returned figure).
`save_figure(fig, "figures/run/name")` writes name.png and name.svg. A figure's name says what it draws, and
never repeats the name of the analysis whose table it draws (that one returns a DataFrame).

Distances (landscape.py): `distance_heatmap`, `distance_histogram`. Similarity (similarity.py):
`per_layer_similarity` (input built by `masklab.analysis.summary.layer_summary`), `similarity_by_group` (several
runs side by side). Embedding (embedding.py): `embedding_scatter`. Consensus (consensus.py): `consensus_bars` (of
`masklab.analysis.consensus_histogram`). Paths (paths.py): `interpolation_curves`, `barrier_vs_distance`,
`trajectory_curves` (of `masklab.analysis.trajectories.trajectories`). Functional similarity (functional.py):
`disagreement_vs_distance`, `ensemble_accuracy_vs_k`, `cka_by_layer`. Sweeps (sweep.py): `accuracy_vs_sparsity`;
across settings (settings.py): `landscape_vs` (a landscape table's metrics against sparsity).
"""

from masklab.plots._style import save_figure
from masklab.plots.consensus import consensus_bars
from masklab.plots.embedding import embedding_scatter
from masklab.plots.functional import cka_by_layer, disagreement_vs_distance, ensemble_accuracy_vs_k
from masklab.plots.landscape import distance_heatmap, distance_histogram
from masklab.plots.paths import barrier_vs_distance, interpolation_curves, trajectory_curves
from masklab.plots.settings import landscape_vs
from masklab.plots.similarity import per_layer_similarity, similarity_by_group
from masklab.plots.sweep import accuracy_vs_sparsity

__all__ = ["accuracy_vs_sparsity", "barrier_vs_distance", "cka_by_layer", "consensus_bars",
           "disagreement_vs_distance", "distance_heatmap", "distance_histogram", "embedding_scatter",
           "ensemble_accuracy_vs_k", "interpolation_curves", "landscape_vs", "per_layer_similarity", "save_figure",
           "similarity_by_group", "trajectory_curves"]
