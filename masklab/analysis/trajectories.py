"""Trajectories: how masks move during training, from the snapshots kept every E epochs.

For each mask, the distance of every snapshot to its own final mask, and the mean distance to the other
masks' snapshots at the same epoch (are masks that start apart drifting together, or apart?). The final
masks count as the snapshot at the last epoch. Distances come from the packed-bit engine.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from masklab.analysis.distances import distances
from masklab.store.bits import MaskSet


def _snapshot_sets(run) -> dict[int, MaskSet]:
    """Mask id -> its snapshots (ids = epochs, from 0) with the final mask appended as the last epoch."""
    last_epoch = run.config.epochs - 1
    out = {}
    for i in run.ids:
        if not run.has_extra(i, "snapshots"):
            continue
        snaps = run.snapshots(i)
        final = run.masks.subset([i])
        bits = np.vstack([np.asarray(snaps.bits), np.asarray(final.bits)])
        out[i] = MaskSet(bits, run.layers.copy(), list(snaps.ids) + [last_epoch])
    return out


def trajectories(run, metric: str = "hamming_norm") -> pd.DataFrame:
    """One row per (mask, epoch): `distance_to_final` and `distance_to_others` (mean over the other masks
    at the same epoch), in `metric` (default: fraction of bits that differ). Empty if no snapshots."""
    sets = _snapshot_sets(run)
    columns = ["mask_id", "epoch", "metric", "distance_to_final", "distance_to_others"]
    if not sets:
        return pd.DataFrame(columns=columns)
    rows = []
    for i, snaps in sets.items():
        final = snaps.subset([snaps.ids[-1]])
        to_final = distances(snaps, final, metric)
        for epoch, value in zip(to_final["mask_a"], to_final["value"]):
            rows.append({"mask_id": i, "epoch": int(epoch), "metric": metric, "distance_to_final": float(value)})
    table = pd.DataFrame(rows)
    epochs = sorted(set(table["epoch"]))
    others = []
    ids = list(sets)
    for epoch in epochs:
        at = [i for i in ids if epoch in set(sets[i].ids)]
        if len(at) < 2:
            continue
        bits = np.vstack([np.asarray(sets[i].bits[list(sets[i].ids).index(epoch)]) for i in at])
        square = distances(MaskSet(bits, run.layers.copy(), at), metric=metric, form="square").to_numpy()
        mean_other = (square.sum(axis=1) - np.diag(square)) / (len(at) - 1)
        others += [{"mask_id": i, "epoch": epoch, "distance_to_others": float(v)} for i, v in zip(at, mean_other)]
    if others:
        table = table.merge(pd.DataFrame(others), on=["mask_id", "epoch"], how="left")
    else:
        table["distance_to_others"] = np.nan
    return table[columns].sort_values(["mask_id", "epoch"]).reset_index(drop=True)


def settling(traj: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Per mask, the first epoch from which its distance to the final mask stays below `tolerance`
    (the masks 'stop changing'); NaN if the trajectory is empty."""
    rows = []
    for mask_id, group in traj.groupby("mask_id"):
        group = group.sort_values("epoch")
        above = group["distance_to_final"].to_numpy() >= tolerance
        later = np.flatnonzero(above)
        settled = group["epoch"].iloc[later[-1] + 1] if len(later) and later[-1] + 1 < len(group) else \
            (group["epoch"].iloc[0] if not len(later) else np.nan)
        rows.append({"mask_id": mask_id, "settled_epoch": settled, "tolerance": tolerance})
    return pd.DataFrame(rows, columns=["mask_id", "settled_epoch", "tolerance"])
