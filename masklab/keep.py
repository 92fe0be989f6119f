"""How many weights a layer keeps: the one keep rule of every part of masklab (the layers, the store's checks,
imports and exports).

masklab's rule, every trained run's: a layer of `n` weights at `sparsity` keeps `n - int(sparsity * n)`.
Imported runs keep by the reference code's rule (hidden-networks, Biprop and the IWR code: `GetSubnet` zeroes
the `int((1 - k) * n)` smallest |scores| at prune_rate k, the fraction KEPT) or the counts their masks have
(keep_rule "stored"); Biprop's gain there divides by that code's own count `int(k * n)`. Why an import needs
their expression and not masklab's: masklab/interop/rules.py.
"""

from __future__ import annotations

from masklab.config import RunConfig


def n_keep(n: int, sparsity: float) -> int:
    """Number of weights kept in a layer of `n` weights at `sparsity`: `n - int(sparsity * n)` (masklab's
    keep rule, every trained run's)."""
    return n - int(sparsity * n)


def reference_keep_count(n: int, keep: float) -> int:
    """Weights a layer of `n` keeps under the reference rule at keep fraction `keep` (their prune_rate)."""
    return n - int((1 - keep) * n)


def biprop_gain_count(n: int, keep: float) -> int:
    """The denominator of the Biprop code's gain alpha for a layer of `n` at keep fraction `keep`."""
    return int(keep * n)


def layer_keep(n_bits: int, config: RunConfig) -> int | None:
    """Weights a layer of `n_bits` keeps under `config`: `n_keep` (dense: all);
    for imported runs with keep_rule "reference" the reference code's `n - int((1 - keep_fraction) * n)`
    (their GetSubnet zeroes the `int((1 - k) * n)` smallest |scores|: one weight more than masklab's rule
    keeps at rates like k = 0.9); None for keep_rule "stored" (the counts are the import's)."""
    if config.method == "dense":
        return n_bits
    if config.keep_rule == "reference":
        if config.keep_fraction is None:
            return None
        return reference_keep_count(n_bits, config.keep_fraction)
    if config.keep_rule == "stored":
        return None
    return n_keep(n_bits, config.sparsity)


def rule_text(config: RunConfig) -> str:
    """The config's keep rule in words (for messages)."""
    if config.keep_rule == "reference":
        return f"the reference rule n - int((1 - k) * n) at keep k = {config.keep_fraction!r}"
    if config.keep_rule == "stored":
        return "the imported masks' counts"
    return f"sparsity {config.sparsity:g} ({config.method})"

