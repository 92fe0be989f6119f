"""The documented limits below which an analysis says less rather than something misleading.

- `MIN_CORRELATION_PAIRS` (10): a rank correlation from fewer points is not reported (with 3 points every
  monotone arrangement gives rho = +-1, and Spearman's test cannot reach p < 0.05 below 5 points): tables
  hold NaN with the n, figures show only the points and say why.
- `UMAP_MIN_MASKS` (50): below this many masks the automatic embedding is metric MDS, not UMAP. UMAP builds
  a graph of each point's 15 nearest neighbours; with 16 masks that is every other mask, so the graph says
  nothing about neighbourhoods and the picture only reflects UMAP's optimisation. MDS keeps the distances
  themselves, which is what there is to see among few masks.
"""

MIN_CORRELATION_PAIRS = 10
UMAP_MIN_MASKS = 50

__all__ = ["MIN_CORRELATION_PAIRS", "UMAP_MIN_MASKS"]

# Each point of an interpolation path is one evaluation of the network on the test split (and orders multiply the
# hamming path): a few hundred points resolve any barrier; more is a typo that would run for hours.
MAX_POINTS = 1_000
MAX_ORDERS = 1_000
