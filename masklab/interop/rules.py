"""The keep rules of other codebases, exactly as they compute them (the counts: masklab/keep.py).

hidden-networks, Biprop and the IWR code (`GetSubnet` in their utils/conv_type.py) take `k` = `prune_rate` =
the fraction KEPT, sort a layer's |scores| ascending and zero the first `j = int((1 - k) * n)`: a layer keeps
`n - int((1 - k) * n)`. `1 - k` is computed in floating point, so at many two-decimal rates this keeps one
weight more than masklab's `n - int(sparsity * n)` with sparsity = 1 - k written as a decimal (k = 0.9 keeps
901 of 1,000; masklab's sparsity 0.1 keeps 900). An import must give the masks the reference trained with,
so it uses their expression, not masklab's.

Ties: their `torch.sort` is not stable, so where |scores| tie across the cut the kept positions are
whatever that sort returns (and CUDA's differs from the CPU's). masklab sorts stably: among equal |scores|
the lower flat index is pruned first (comes first in the ascending order). Outside ties both are the same.

Biprop's gain divides by its own count `int(k * n)` (`num_unpruned` in GetQuantnet_binary), not by the
kept count: at k = 0.9 and n = 1,000 that is 900 for 901 kept weights. An imported Biprop run keeps that
denominator (`gain_counts`), so that its subnetwork computes what the Biprop code computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from masklab.errors import UserError
from masklab.keep import reference_keep_count

TIE_BREAK = ("stable ascending sort of |scores|: among equal |scores| the lower flat index is pruned first "
             "(the reference's torch.sort is unstable there)")


def reference_mask(scores: np.ndarray, keep: float, where: str = "scores") -> np.ndarray:
    """The reference rule's mask of one layer (bool, the scores' shape): zero the `int((1 - keep) * n)`
    smallest |scores| (stable sort: lower index pruned first among ties), keep the rest."""
    flat = np.abs(np.asarray(scores).reshape(-1))
    if not np.all(np.isfinite(flat)):
        raise UserError(f"{where} holds NaN or infinite scores: no top-k mask is defined; the checkpoint is damaged")
    j = int((1 - keep) * flat.size)
    order = np.argsort(flat, kind="stable")
    mask = np.ones(flat.size, dtype=bool)
    mask[order[:j]] = False
    return mask.reshape(np.shape(scores))


def _reference_ok(keep: float, n_bits: Sequence[int], n_keep: Sequence[int]) -> bool:
    return 0.0 < keep <= 1.0 and all(reference_keep_count(n, keep) == k for n, k in zip(n_bits, n_keep))


def find_reference_keep(n_bits: Sequence[int], n_keep: Sequence[int], preferred: float | None = None) -> float | None:
    """A keep fraction `k` (one for the whole network, as the reference code's prune_rate is) under which the
    reference rule keeps exactly `n_keep[l]` of `n_bits[l]` weights in every layer, preferring `preferred`
    and then the shortest decimal; None when no such k exists (the layers keep different fractions)."""
    if preferred is not None and _reference_ok(preferred, n_bits, n_keep):
        return preferred
    # the rule keeps n - int((1 - k) n): 1 - k must lie in [j / n, (j + 1) / n) for j = n - n_keep, every layer
    lo = max((n - k) / n for n, k in zip(n_bits, n_keep))
    hi = min((n - k + 1) / n for n, k in zip(n_bits, n_keep))
    if lo >= hi:
        return None
    for digits in range(1, 18):
        scale = 10 ** digits
        top = math.floor((1 - lo) * scale)  # the largest k of `digits` decimals with 1 - k >= lo (about)
        for step in range(0, 3):
            keep = round((top - step) / scale, digits)
            if _reference_ok(keep, n_bits, n_keep):
                return keep
    middle = 1 - (lo + hi) / 2
    for direction in (np.inf, -np.inf):
        keep = middle
        for _ in range(256):
            if _reference_ok(float(keep), n_bits, n_keep):
                return float(keep)
            keep = float(np.nextafter(keep, direction))
    return None
