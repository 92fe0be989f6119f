"""The structure test: is there more cluster structure among the masks than among random masks?

`structure_vs_random` compares the best silhouette and the cophenetic correlation of the masks' tree
(`masklab.analysis.clustering`) with the same statistics on R sets of random masks, each random mask with
exactly the per-layer kept counts of one real mask (`masklab.analysis.random_sets`); a Monte Carlo one-sided
p-value (99 random sets by default: resolution 0.01) says whether the real masks have more cluster structure
than chance, and the effect size (in sd of the random sets) how much more. A tree cut always yields clusters,
and the best-silhouette k is at least 2: only this comparison says whether they mean anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy

from masklab.analysis.clustering import (
    DEFAULT_METRIC,
    LINKAGE_METHODS,
    as_square,
    cophenet,
    k_range,
    matrix_silhouette,
    require_masks,
    tree_distances,
)
from masklab.analysis.distances import ALL, distances, intersections
from masklab.analysis.random_sets import layer_counts, random_mask_bits
from masklab.errors import UserError
from masklab.store.bits import MaskSet
from masklab.units import signed_sd

STATISTICS = ("silhouette", "cophenetic")
DEFAULT_N_RANDOM = 99        # p can reach 1 / (1 + 99) = 0.01
STRUCTURE_ALPHA = 0.05       # "detected": p below this
# Kaufman & Rousseeuw's reading of the average silhouette (Finding Groups in Data, 1990): up to 0.25 no
# substantial structure, 0.26-0.50 weak (possibly artificial), 0.51-0.70 reasonable, above 0.70 strong
SILHOUETTE_WEAK, SILHOUETTE_REASONABLE, SILHOUETTE_STRONG = 0.25, 0.50, 0.70


def structure_statistics(dist, method: str = "average", *, squared: bool = True,
                         ks: Sequence[int] | None = None) -> dict[str, float]:
    """``{"silhouette": best silhouette of the `method` tree over ks, "cophenetic": its cophenetic
    correlation}``: both near 0 / low for structureless masks."""
    matrix, _ = as_square(dist)
    return _statistics(matrix, method, squared, ks)


def _statistics(matrix, method, squared, ks) -> dict[str, float]:
    """The two statistics from one tree: best silhouette over the cuts k of `ks`, cophenetic correlation."""
    n = len(matrix)
    condensed = tree_distances(matrix, method, squared)
    linkage = hierarchy.linkage(condensed, method=method)
    best = float("nan")
    cuts = _MaxclustCuts(linkage)
    for k in k_range(n, ks):
        value = matrix_silhouette(matrix, cuts.labels(k))
        if np.isfinite(value) and not value <= best:
            best = value
    cophenetic = cophenet(linkage, condensed) if n >= 3 and np.ptp(condensed) > 0 else float("nan")
    return {"silhouette": best, "cophenetic": cophenetic}


class _MaxclustCuts:
    """Flat clusters of a tree cut into at most k clusters, the same partitions as
    ``scipy.cluster.hierarchy.fcluster(linkage, k, criterion="maxclust")`` of scipy 1.15 and later (ties in
    merge height give fewer clusters; scipy 1.14 cut tied heights otherwise), without scipy's input
    validation, which costs ten times the cut on the structure test's small trees. Labels are arbitrary
    integers (only the partition is used)."""

    def __init__(self, linkage: np.ndarray):
        n = len(linkage) + 1
        self.n = n
        self.children = linkage[:, :2].astype(np.int64)
        # the highest merge inside each node's subtree (fcluster's monocrit for maxclust)
        top = linkage[:, 2].astype(np.float64).copy()
        for i, (a, b) in enumerate(self.children):
            for child in (a, b):
                if child >= n:
                    top[i] = max(top[i], top[child - n])
        self.top = top
        self.sorted_top = np.sort(top)

    def labels(self, k: int) -> np.ndarray:
        n = self.n
        if k >= n:
            return np.arange(n)
        threshold = self.sorted_top[n - k - 1]   # the least height that leaves at most k clusters
        merged = self.top <= threshold
        label = np.arange(2 * n - 1)
        # top-down: a merged node passes its label to its children
        for i in range(n - 2, -1, -1):
            if merged[i]:
                node = n + i
                a, b = self.children[i]
                label[a] = label[b] = label[node]
        return label[:n]


SUMMARY_COLUMNS = ["statistic", "observed", "random_mean", "random_std", "random_min", "random_max", "effect_sd",
                   "z", "p_value", "p_floor", "n_random", "n_masks"]


@dataclass(frozen=True)
class StructureTest:
    """Observed cluster statistics against those of random masks with the same per-layer counts.

    summary : DataFrame, one row per statistic (silhouette, cophenetic):

        - observed; random_mean, random_std (ddof 1), random_min, random_max over the random sets;
        - effect_sd = (observed - random_mean) / random_std: the effect size, in standard deviations of the
          random sets' values (``z`` is the same number, kept under its old name);
        - p_value: one-sided Monte Carlo p-value, ``(1 + #{random >= observed}) / (1 + n_random)``: exact
          under the null (the observed set is one more draw exchangeable with the random sets), and never
          below p_floor = 1 / (1 + n_random), the test's resolution (0.01 for the default 99 sets);
        - n_random (random sets with a finite value), n_masks (masks per set).
    samples : DataFrame, long: source ("mask" | "random"), replicate (-1 for the real masks, 0..R-1),
        statistic, value. Ready for a histogram of the random distribution with the observed value marked.

    `verdict` and `describe` word the silhouette's result as the numbers allow; `finds_structure` is what the
    report uses to decide whether clusters are worth colouring.
    """

    summary: pd.DataFrame
    samples: pd.DataFrame

    def row(self, statistic: str = "silhouette") -> pd.Series:
        """The summary row of one statistic."""
        return self.summary.set_index("statistic").loc[statistic]

    @property
    def finds_structure(self) -> bool:
        """True when the silhouette beats random masks (p < 0.05) AND is large enough to mean clusters
        (above 0.25, Kaufman & Rousseeuw's "no substantial structure" bound)."""
        row = self.row()
        return bool(row["p_value"] < STRUCTURE_ALPHA and row["observed"] > SILHOUETTE_WEAK)

    def verdict(self) -> str:
        """A few words for the silhouette's result: "not detected", "small but detectable" (p < 0.05 but
        silhouette <= 0.25: the masks differ from random ones in a way a clustering picks up, yet form no
        substantial clusters), "weak", "reasonable" or "strong cluster structure" (Kaufman & Rousseeuw)."""
        row = self.row()
        p, sil = row["p_value"], row["observed"]
        if not (np.isfinite(p) and p < STRUCTURE_ALPHA):
            return "not detected"
        if sil <= SILHOUETTE_WEAK:
            return "small but detectable"
        if sil <= SILHOUETTE_REASONABLE:
            return "weak cluster structure"
        if sil <= SILHOUETTE_STRONG:
            return "reasonable cluster structure"
        return "strong cluster structure"

    def describe(self) -> str:
        """The verdict with the numbers it rests on: observed vs random silhouette, the effect in random sd,
        the p-value with the resolution its null allows, and n."""
        row = self.row()
        n_random, n_masks = int(row["n_random"]), int(row["n_masks"])
        sd = row["random_std"]
        # enough decimals to show the random sd with two significant digits (silhouettes of near-random masks
        # are a few thousandths)
        d = max(3, 1 - int(np.floor(np.log10(sd)))) if np.isfinite(sd) and sd > 0 else 3
        return (f"{self.verdict()}: best silhouette {row['observed']:.{d}f} vs {row['random_mean']:.{d}f} "
                f"(sd {sd:.{d}f}) for random masks, {signed_sd(row['effect_sd'])} sd; "
                f"{format_p(row['p_value'], n_random)}; {n_masks} masks, {n_random} random sets")


def format_p(p: float, n_random: int) -> str:
    """A Monte Carlo p-value with the digits its resolution 1 / (1 + n_random) carries; at the floor it says
    so (no random set reached the observed value, and the test can say no more than p <= floor)."""
    if not np.isfinite(p):
        return "p = n/a"
    floor = 1.0 / (1 + n_random)
    digits = max(2, int(np.ceil(np.log10(1 + n_random))))
    if p <= floor * (1 + 1e-9):
        return f"p = {floor:.{digits}f} (the floor for {n_random} random sets: none reached the masks)"
    return f"p = {p:.{digits}f}"


def structure_vs_random(masks: MaskSet, n_random: int = DEFAULT_N_RANDOM, *, metric: str = DEFAULT_METRIC,
                        method: str = "average", random_state=0, ks: Sequence[int] | None = None,
                        squared: bool = True, max_masks: int | None = None) -> StructureTest:
    """Is there more cluster structure among `masks` than among random masks of the same per-layer counts?

    Computes the best silhouette and the cophenetic correlation of the `method` tree on the `metric`
    distances of `masks`, then of `n_random` random mask sets (`random_sets.random_masks`, each random mask
    with the per-layer counts of one real mask, all drawn from one generator seeded by `random_state`), and
    compares (see `StructureTest`). The smallest p-value is 1 / (1 + n_random): the default 99 sets resolve
    p down to 0.01.

    Cost: `n_random` sets of N random masks and their distances (the same numba kernel as `distances`) plus
    a tree and ten silhouettes each: about 0.3 s for 16 digits masks. With `max_masks`, a seeded random
    subset of that many masks is tested (and random sets of that size), for very large runs.
    """
    if method not in LINKAGE_METHODS:
        raise UserError(f"unknown linkage method {method!r}; choose one of {', '.join(LINKAGE_METHODS)}")
    require_masks(len(masks), 4, "a structure test")
    if int(n_random) < 1:
        raise UserError(f"n_random = {n_random} is invalid: use at least 1 random mask set")
    rng = np.random.default_rng(random_state)
    if max_masks is not None and len(masks) > int(max_masks):
        require_masks(int(max_masks), 4, "a structure test (max_masks)")
        masks = masks.subset(masks.ids[np.sort(rng.choice(len(masks), int(max_masks), replace=False))].tolist())
    matrix, _ = as_square(distances(masks, metric=metric, form="square"))
    rows = [{"source": "mask", "replicate": -1, "statistic": s, "value": v}
            for s, v in _statistics(matrix, method, squared, ks).items()]
    counts = layer_counts(masks)
    for r in range(int(n_random)):
        random = MaskSet(random_mask_bits(masks.layers, counts, len(masks), rng), masks.layers)
        random_matrix = intersections(random, per_layer=False).metric(metric, ALL)
        rows += [{"source": "random", "replicate": r, "statistic": s, "value": v}
                 for s, v in _statistics(np.asarray(random_matrix, dtype=np.float64), method, squared, ks).items()]
    samples = pd.DataFrame(rows, columns=["source", "replicate", "statistic", "value"])
    summary = []
    for stat in STATISTICS:
        mine = samples[(samples["source"] == "mask") & (samples["statistic"] == stat)]
        observed = float(mine["value"].iloc[0])
        rand = samples.loc[(samples["source"] == "random") & (samples["statistic"] == stat), "value"]
        rand = rand.to_numpy(dtype=float)
        rand = rand[np.isfinite(rand)]
        std = float(rand.std(ddof=1)) if len(rand) > 1 else float("nan")
        effect = (observed - rand.mean()) / std if len(rand) > 1 and std > 0 else float("nan")
        summary.append({
            "statistic": stat, "observed": observed,
            "random_mean": float(rand.mean()) if len(rand) else float("nan"), "random_std": std,
            "random_min": float(rand.min()) if len(rand) else float("nan"),
            "random_max": float(rand.max()) if len(rand) else float("nan"),
            "effect_sd": effect, "z": effect,
            "p_value": (1 + int((rand >= observed).sum())) / (len(rand) + 1) if np.isfinite(observed)
            else float("nan"),
            "p_floor": 1.0 / (len(rand) + 1), "n_random": len(rand), "n_masks": len(masks)})
    return StructureTest(pd.DataFrame(summary, columns=SUMMARY_COLUMNS), samples)


__all__ = ["StructureTest", "format_p", "structure_statistics", "structure_vs_random"]
