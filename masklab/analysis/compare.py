"""Two runs of the same network compared: how alike the masks are within each run and across the runs,
beside chance, and one embedding of all their masks together.

The pairs (every row of the comparison is a mean over one of these sets of mask pairs, per layer and metric):

- ``within A``: two different masks of run A (the same weights and method: how alike A's masks are);
- ``within B``: the same for run B;
- ``across``: one mask of A and one of B (what the runs' difference, e.g. the method, leaves in common);
- ``across, same score seed`` / ``across, other seeds`` (when the runs share score seeds): the across pairs
  whose two masks started from the same score initialisation, and the others;
- ``chance within A``, ``chance within B``, ``chance across``: what each set of pairs would give for two
  independent random masks with its pairs' per-layer counts (`with_baseline`): each set has its own chance,
  since runs of different sparsities keep different counts (two random masks of density k match on
  k^2 + (1 - k)^2 of their bits, one of density k_a and one of k_b on k_a k_b + (1 - k_a)(1 - k_b)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from masklab.analysis.baselines import with_baseline
from masklab.analysis.distances import distances
from masklab.analysis.embedding import choose_method, embed
from masklab.config import method_label
from masklab.errors import UserError
from masklab.store.bits import MaskSet

if TYPE_CHECKING:
    from masklab.store.run import Run

COMPARE_METRICS = ("matching", "jaccard")
PAIR_SETS = {
    "within A": "two different masks of run A",
    "within B": "two different masks of run B",
    "across": "one mask of run A and one of run B",
    "across, same score seed": "one mask of each run, both started from the same score seed",
    "across, other seeds": "one mask of each run, started from different score seeds",
}
# The chance of each set of pairs (its pairs' per-layer counts; the across subsets share the across chance).
CHANCES = {
    "chance within A": "two independent random masks with run A's per-layer counts",
    "chance within B": "two independent random masks with run B's per-layer counts",
    "chance across": "two independent random masks, one with run A's per-layer counts and one with run B's",
}


def check_comparable(run_a: Run, run_b: Run) -> None:
    """UserError unless the two runs' masks have the same layer layout (model, width and dataset)."""
    if not run_a.masks.same_layout(run_b.masks):
        raise UserError(f"runs {run_a.id} and {run_b.id} have different layer layouts (model, width or dataset "
                        "differ); compare runs of the same network")


def compare_runs(run_a: Run, run_b: Run, metrics: tuple[str, ...] = COMPARE_METRICS, *,
                 step: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    """Distances within and across two runs, per layer and metric, beside chance.

    Returns the DataFrames ``cross_distances`` (every pair of one mask of A and one of B, per layer, with its
    random baseline: `with_baseline`) and ``comparison`` (one row per layer and metric: the mean over each
    set of pairs of `PAIR_SETS` that the runs have, then each set's own chance, `CHANCES`; a run of one mask
    has no within pairs and its within columns are NaN). Values are fractions (matching too; it is shown in %
    on pages and the command line). `step(label)` is called after each of "across",
    "within A", "within B" (a progress line's hook)."""
    check_comparable(run_a, run_b)
    a, b = run_a.masks, run_b.masks
    done = step or (lambda label: None)
    cross = with_baseline(distances(a, b, metric=list(metrics), per_layer=True), a, other=b)
    parts = {"across": cross}
    # Runs that differ only in method or recycling share score seeds: mask i of A and mask i of B start
    # from the same scores, and those pairs say what the method changed; the others what chance leaves.
    seed_a = run_a.table.set_index("mask_id")["score_seed"]
    seed_b = run_b.table.set_index("mask_id")["score_seed"]
    same_seed = cross["mask_a"].map(seed_a).to_numpy() == cross["mask_b"].map(seed_b).to_numpy()
    if same_seed.any():
        parts["across, same score seed"] = cross[same_seed]
        parts["across, other seeds"] = cross[~same_seed]
    done("across")
    for label, masks in (("within A", a), ("within B", b)):
        if len(masks) >= 2:
            parts[label] = with_baseline(distances(masks, metric=list(metrics), per_layer=True), masks)
        done(label)
    sets = {**parts, **{f"chance {label}": table for label, table in parts.items()
                        if label in ("within A", "within B", "across")}}
    rows = [table.groupby(["layer", "metric"], sort=False)["baseline" if label.startswith("chance") else "value"]
            .mean().rename("mean").reset_index().assign(pairs=label) for label, table in sets.items()]
    comparison = (pd.concat(rows, ignore_index=True)
                  .pivot_table(index=["layer", "metric"], columns="pairs", values="mean", sort=False)
                  .reindex(columns=[*PAIR_SETS, *CHANCES]).reset_index())
    comparison.columns.name = None
    keep = ["layer", "metric", *[c for c in PAIR_SETS if c in parts or c.startswith("within")], *CHANCES]
    return {"cross_distances": cross, "comparison": comparison[keep]}


def density_gap(run_a: Run, run_b: Run) -> float:
    """The smallest normalised Hamming distance a mask of A and a mask of B can have: sum over layers of
    |n_keep_A - n_keep_B| over all bits (0 when the runs keep the same counts). Runs of different sparsities
    are at least this far apart by their counts alone, whatever their masks' structure.

    Examples
    --------
    Layers of 100 and 50 bits keeping (50, 25) in A and (10, 5) in B: (40 + 20) / 150 = 0.4.
    """
    keep_a = run_a.layers["n_keep"].to_numpy(dtype=np.int64)
    keep_b = run_b.layers["n_keep"].to_numpy(dtype=np.int64)
    return float(np.abs(keep_a - keep_b).sum() / run_a.layers["n_bits"].sum())


def side_label(side: str, run: Run) -> str:
    """A short name of one side of a comparison for legends: "A: edge-popup s0.5"."""
    return f"{side}: {method_label(run.config.method, run.config.recycle)} s{run.config.sparsity:g}"


def joint_embedding(run_a: Run, run_b: Run, method: str = "auto",
                    random_state: int = 0) -> tuple[pd.DataFrame, str, str]:
    """A 2-D embedding of both runs' masks together, on their joint normalised Hamming distances:
    (points, method used, why that method: empty when asked for by name). Points: x, y, method (one row per
    mask: A's, then B's), ``run`` (its run id), ``mask`` (its id in that run) and ``side`` (`side_label`)."""
    check_comparable(run_a, run_b)
    a, b = run_a.masks, run_b.masks
    ids = list(range(len(a) + len(b)))
    used, why = choose_method(len(ids), method)
    joint = MaskSet(np.vstack([np.asarray(a.bits), np.asarray(b.bits)]), a.layers.copy(), ids)
    points = embed(distances(joint, metric="hamming_norm", form="square"), used, random_state=random_state)
    points["run"] = [run_a.id] * len(a) + [run_b.id] * len(b)
    points["mask"] = list(a.ids) + list(b.ids)
    points["side"] = [side_label("A", run_a)] * len(a) + [side_label("B", run_b)] * len(b)
    return points, used, why


__all__ = ["CHANCES", "COMPARE_METRICS", "PAIR_SETS", "check_comparable", "compare_runs", "density_gap",
           "joint_embedding", "side_label"]
