"""Functional similarity: do masks that differ in half their bits compute different functions?

Three measures over the masks of one run, on its test set:

- **Prediction disagreement** of masks a and b: the fraction of test samples on which their predicted classes
  differ. Two references: predictors that answer independently of the input with the masks' own class rates,
  ``1 - sum_c p_a(c) p_b(c)`` (``p_a(c)``: the fraction of test samples mask a calls c), and predictors that are
  independent *given the true class*, with the masks' own confusion matrices,
  ``1 - sum_y pi(y) sum_c P_a(c | y) P_b(c | y)`` (``pi``: the test set's class frequencies). The first is what
  two unrelated classifiers with these outputs would disagree on; the second what two classifiers with the
  masks' accuracy per class would disagree on if their errors were unrelated: disagreement below it means the
  masks make the same mistakes on the same samples. Computed from the stored predictions (one int8 per test
  sample and mask, written when the mask was trained) by the distance kernel: predictions as one-hot bits, so
  that agreements are intersections (`masklab.analysis.distances.intersections`).
- **Ensembles** of k masks, k = 1..K: the accuracy of the averaged softmax and of the majority vote. A tie (of
  the vote; of the averaged softmax in practice never) counts 1/t for a sample whose true class is among the t
  tied classes: the expected accuracy of breaking ties uniformly at random, so that no rule favours a class.
  The ensemble of size k in order r is the first k masks of random permutation r (`orders` permutations from
  one generator seeded by `random_state`); the curve averages over the orders. k = 1 is one mask's accuracy,
  k = K the whole set's. Gains are measured against the members in the same orders: their mean and their best.
- **Linear CKA** (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited") of each
  layer's representations of two masks on a fixed batch of test samples: with centred X (n x d_x) and Y
  (n x d_y), ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, equal to ``<K, L> / (||K|| ||L||)`` for the
  centred Gram matrices K = X X^T and L = Y Y^T (the form computed, so that all pairs are one matrix product).
  A masked layer's representation is its output as the next masked layer sees it (after the nonlinearity and
  any pooling), named by that layer; the last layer's output is named "logits". Reference: subnetworks of
  the same weights with random masks of the same per-layer counts (`random_mask_grams`): two subnetworks of
  one network see the same input through shared weights and are similar for that reason alone.

What each can and cannot show: disagreement sees only the predicted classes, and ensembles the output
probabilities, on this test set; CKA sees the geometry of a representation up to rotation and isotropic scale,
on `cka_samples` samples, and is dominated by its few largest-variance directions. None says which weights
make the difference, nor anything about inputs unlike the test set.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.analysis.distances import ALL, Intersections, metric_values
from masklab.analysis.distances import intersections as distance_intersections
from masklab.analysis.kernels import intersection_counts, layer_bounds
from masklab.analysis.pairs import PairStore, count_dtype, upper_blocks
from masklab.analysis.paths.barriers import _correlations
from masklab.analysis.random_sets import layer_counts, random_mask_bits
from masklab.analysis.sampling import Sample, condensed_pairs, mask_sample, pair_sample
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.errors import StoreError, UserError
from masklab.store import files as F
from masklab.store.bits import MaskSet, make_layout

DEFAULT_ORDERS = 10           # random orders the ensemble curve averages over
DEFAULT_CKA_SAMPLES = 500     # test samples in the fixed CKA batch
FORWARD_MAX_MASKS = 64        # masks evaluated for soft ensembles and CKA; a seeded random subset beyond
PAIR_MAX_MASKS = 2000         # masks whose predictions are compared pairwise (as clustering's sample); None: all
TABLE_MAX_PAIRS = 20_000      # pairs in the long table, the correlation with Hamming distance and the figure
DEFAULT_RANDOM_MASKS = 8      # random masks of the CKA reference (28 pairs)
EVAL_BATCH = 1000             # the batches of masklab.train.evaluate: the logits of the recorded final pass
PREDICTIONS_CACHE = "predictions.npz"
LOGITS = "logits"             # the last masked layer's representation (its output)
ENSEMBLE_COLUMNS = ["k", "vote", "acc_mean", "acc_sd", "acc_min", "acc_max", "member_mean", "member_best",
                    "gain_over_mean", "gain_over_best", "n_orders", "seed", "n_masks"]


# ---- predictions --------------------------------------------------------------------------------------------
def test_predictions(run, ids: Sequence[int] | None = None, *, cache: bool = True, device: str = "cpu",
                     progress: bool = False) -> np.ndarray:
    """Predicted classes (len(ids) x n_test, int16) of masks `ids` (default all) of `run` on its test set, in
    test-split order.

    Read from each mask's stored `predictions` extra (written when the mask was trained, checksummed). Masks
    without it (runs made before masklab stored predictions, imports) are evaluated once (the recorded final
    pass of the model `Run.model(i)` builds; `masklab.train.rebuild.run_models` builds it once for masks that
    differ in their masks alone) and, with `cache`, their predictions kept in ``<run>/analysis/predictions.npz``
    keyed by mask id and mask checksum, so that a later call reads them.
    """
    ids = [int(i) for i in (run.ids if ids is None else ids)]
    out = np.zeros((len(ids), int(run.meta["dataset"]["n_test"])), dtype=np.int16)
    missing = []
    for row, i in enumerate(ids):
        if run.has_extra(i, "predictions"):
            out[row] = run.predictions(i)
        else:
            missing.append((row, i))
    if not missing:
        return out
    cached = _read_cache(run) if cache else {}
    todo = [i for _, i in missing if (i, run.record(i)["checksum"]) not in cached]
    if todo:
        import torch
        from tqdm import tqdm

        from masklab.analysis.paths.evaluation import torch_threads
        from masklab.train.rebuild import run_models

        dataset = run.dataset()
        # the test batches once for every mask, and the argmax alone: the pass and the predictions of
        # masklab.train.evaluate.evaluate_predictions (same batches, same model), without normalising the
        # test set again and computing a loss for each mask
        inputs = [x for x, _ in dataset.test_batches(EVAL_BATCH, device=device)]
        models = run_models(run, todo, device)
        first = next(models)
        bar = tqdm(total=len(todo), desc="functional: predictions", unit="mask", disable=not progress, leave=False)
        with torch_threads(_threads(first[1], dataset.n_test, device)), torch.no_grad():
            for i, model in itertools.chain([first], models):
                model.eval()
                cached[(i, run.record(i)["checksum"])] = np.concatenate([model(x).argmax(1).cpu().numpy()
                                                                         for x in inputs])
                bar.update(1)
        bar.close()
        if cache:
            _write_cache(run, cached)
    for row, i in missing:
        out[row] = cached[(i, run.record(i)["checksum"])]
    return out


def _read_cache(run) -> dict[tuple[int, str], np.ndarray]:
    path = run.path / "analysis" / PREDICTIONS_CACHE
    if not path.is_file() or path.is_symlink():
        return {}
    try:
        z = F.load_npz(path)
        return {(int(i), str(c)): p for i, c, p in zip(z["mask_id"], z["checksum"], z["predictions"])}
    except (StoreError, KeyError, ValueError):  # a damaged cache is computed again
        return {}


def _write_cache(run, cached: dict[tuple[int, str], np.ndarray]) -> None:
    keys = sorted(k for k in cached if k[0] in run.records and run.records[k[0]]["checksum"] == k[1])
    arrays = {"mask_id": np.array([k[0] for k in keys], dtype=np.int64),
              "checksum": np.array([k[1] for k in keys], dtype="U64"),
              "predictions": np.stack([np.asarray(cached[k], dtype=np.int16) for k in keys])}
    folder = W.make_dirs(run.path / "analysis", root=run.path)
    W.atomic_write(folder / PREDICTIONS_CACHE, W.npz_bytes(arrays), durable=False, root=run.path)


def prediction_bits(predictions: np.ndarray, n_classes: int, ids: Sequence[int] | None = None,
                    block_rows: int = 256) -> MaskSet:
    """The predictions (N x n) as one-hot bits: a MaskSet with one layer per class c, bit j set where the
    mask predicts c for sample j. Two rows intersect in exactly the samples on which they agree."""
    predictions = np.asarray(predictions)
    n, n_test = predictions.shape
    layout = make_layout([f"class{c}" for c in range(n_classes)], [(n_test,)] * n_classes)
    words = int(layout["word_stop"].iloc[0])
    bits = np.zeros((n, words * n_classes), dtype=np.uint64)
    for start in range(0, n, block_rows):
        block = predictions[start:start + block_rows]
        for c in range(n_classes):
            raw = np.packbits(block == c, axis=1, bitorder="little")
            padded = np.zeros((len(block), words * 8), dtype=np.uint8)
            padded[:, :raw.shape[1]] = raw
            bits[start:start + len(block), c * words:(c + 1) * words] = padded.view("<u8")
    return MaskSet(bits, layout, ids)


def _square(values: np.ndarray, ids: Sequence[int]) -> pd.DataFrame:
    return pd.DataFrame(values, index=pd.Index(list(ids), name="mask_a"), columns=pd.Index(list(ids), name="mask_b"))


def disagreement_counts(predictions: np.ndarray, n_classes: int, *, block_bytes: int = 64 << 20) -> np.ndarray:
    """N x N: the number of test samples on which masks i and j predict different classes (0 on the
    diagonal), in the smallest unsigned integer type that holds the test samples
    (`masklab.analysis.pairs.count_dtype`): the test samples less the intersections of the one-hot predictions
    (`prediction_bits`), computed by row blocks of at most `block_bytes` of int64 counts (the bit kernel of
    the distances), so that memory holds the N x N result and one block, never N x N int64.

    Examples
    --------
    >>> disagreement_counts(np.array([[0, 1, 2, 2], [0, 1, 1, 0]]), 3).tolist()
    [[0, 2], [2, 0]]
    """
    predictions = np.asarray(predictions)
    n, n_test = predictions.shape
    bits = prediction_bits(predictions, n_classes).bits
    bounds = layer_bounds([0], [bits.shape[1]])
    out = np.zeros((n, n), dtype=count_dtype(n_test))
    rows = max(1, int(block_bytes) // max(1, 8 * n))
    for start, stop in upper_blocks(n, rows):
        agree = intersection_counts(bits[start:stop], bits[start:], bounds)[0]
        differ = (n_test - agree).astype(out.dtype)
        out[start:stop, start:] = differ
        out[start:, start:stop] = differ.T
    np.fill_diagonal(out, 0)
    return out


def disagreement(predictions: np.ndarray, n_classes: int, ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Prediction disagreement of every pair: an N x N DataFrame (index and columns the mask ids) of the
    fraction of test samples on which the two masks predict different classes (0 on the diagonal).

    Examples
    --------
    >>> disagreement(np.array([[0, 1, 2, 2], [0, 1, 1, 0]]), 3).to_numpy().tolist()
    [[0.0, 0.5], [0.5, 0.0]]
    """
    predictions = np.asarray(predictions)
    ids = list(range(len(predictions))) if ids is None else list(ids)
    return _square(disagreement_counts(predictions, n_classes) / predictions.shape[1], ids)


def class_rates(predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """p_a(c): the fraction of samples each mask calls class c (N x C)."""
    predictions = np.asarray(predictions).astype(np.int64)
    counts = np.stack([np.bincount(row, minlength=n_classes)[:n_classes] for row in predictions])
    return counts / predictions.shape[1]


def disagreement_reference(predictions: np.ndarray, n_classes: int, labels: np.ndarray | None = None,
                           ids: Sequence[int] | None = None) -> pd.DataFrame:
    """The disagreement of two independent predictors (N x N, like `disagreement`).

    Without `labels`: ``1 - sum_c p_a(c) p_b(c)``, predictors that answer independently of the input with the
    masks' own class rates. With the true `labels`: ``1 - sum_y pi(y) sum_c P_a(c|y) P_b(c|y)``, predictors
    independent given the true class, with the masks' own confusion matrices (pi: the class frequencies of the
    samples). The diagonal is a mask against an independent copy of itself (not 0).

    Examples
    --------
    >>> disagreement_reference(np.array([[0, 0, 1, 1]]), 2).to_numpy().tolist()
    [[0.5]]
    """
    predictions = np.asarray(predictions)
    ids = list(range(len(predictions))) if ids is None else list(ids)
    if labels is None:
        rates = class_rates(predictions, n_classes)
        return _square(1.0 - rates @ rates.T, ids)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != predictions.shape[1:]:
        raise UserError(f"labels hold {labels.shape} values, the predictions {predictions.shape[1]} per mask")
    total = np.zeros((len(predictions), len(predictions)))
    for y in range(n_classes):
        where = labels == y
        if where.any():
            rates = class_rates(predictions[:, where], n_classes)  # P_a(c | y)
            total += where.mean() * (rates @ rates.T)
    return _square(1.0 - total, ids)


def upper(square: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The pairs i < j of a square matrix, in scipy's condensed order."""
    values = np.asarray(square)
    i, j = np.triu_indices(len(values), 1)
    return values[i, j]


@dataclass
class DisagreementMatrices:
    """Prediction disagreement of every pair of N masks as N x N matrices (rows and columns: `ids`).

    counts : test samples (of `n_test`) predicted differently (`disagreement_counts`; 0 on the diagonal).
    reference, reference_given_class : float64, the two references (`disagreement_reference`; the diagonal is
        a mask against an independent copy of itself).
    """

    ids: np.ndarray
    counts: np.ndarray
    reference: np.ndarray
    reference_given_class: np.ndarray
    n_test: int

    @property
    def n_pairs(self) -> int:
        return len(self.ids) * (len(self.ids) - 1) // 2

    def pairs(self, a: np.ndarray | None = None, b: np.ndarray | None = None,
              hamming_norm: np.ndarray | None = None) -> pd.DataFrame:
        """The long table of the pairs at positions (a, b) (default: every pair i < j in condensed order):
        mask_a, mask_b, disagreement, reference, reference_given_class and, given, hamming_norm."""
        if a is None or b is None:
            a, b = np.triu_indices(len(self.ids), 1)
        ids = np.asarray(self.ids, dtype=np.int64)
        table = pd.DataFrame({"mask_a": ids[a], "mask_b": ids[b],
                              "disagreement": self.counts[a, b].astype(np.int64) / self.n_test,
                              "reference": self.reference[a, b],
                              "reference_given_class": self.reference_given_class[a, b]})
        if hamming_norm is not None:
            table["hamming_norm"] = np.asarray(hamming_norm, dtype=float)
        return table


def disagreement_matrices(predictions: np.ndarray, n_classes: int, labels: np.ndarray,
                          ids: Sequence[int] | None = None) -> DisagreementMatrices:
    """Disagreement counts and both references of every pair as N x N matrices (see the module docstring)."""
    predictions = np.asarray(predictions)
    rows = np.arange(len(predictions)) if ids is None else np.asarray([int(i) for i in ids], dtype=np.int64)
    return DisagreementMatrices(
        rows, disagreement_counts(predictions, n_classes),
        disagreement_reference(predictions, n_classes, None).to_numpy(),
        disagreement_reference(predictions, n_classes, labels).to_numpy(), int(predictions.shape[1]))


def disagreement_pairs(predictions: np.ndarray, n_classes: int, labels: np.ndarray, ids: Sequence[int],
                       hamming_norm: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per pair (mask_a < mask_b, condensed order): disagreement, reference (predictors independent of
    the input), reference_given_class (independent given the true class) and, given the masks' square
    normalised Hamming distances, hamming_norm. For small N: `disagreement_matrices` keeps them as matrices."""
    ids = [int(i) for i in ids]
    table = disagreement_matrices(predictions, n_classes, labels, ids).pairs()
    if hamming_norm is not None:
        table["hamming_norm"] = upper(hamming_norm.loc[ids, ids])
    return table


def disagreement_summary(pairs: pd.DataFrame, n_test: int) -> pd.DataFrame:
    """One row: the pairs' disagreement (mean, sd, min, max), the references' means, the sd of one pair's
    disagreement under the first reference (a binomial proportion over the n_test samples), the ratios of the
    mean to each reference, and Spearman's rho of disagreement with normalised Hamming distance (NaN below
    `MIN_CORRELATION_PAIRS` pairs), with its p and n."""
    d = pairs["disagreement"].to_numpy(dtype=float)
    x = pairs["hamming_norm"].to_numpy(dtype=float) if "hamming_norm" in pairs.columns else np.full(len(d), np.nan)
    return _summary(d, pairs["reference"].to_numpy(dtype=float),
                    pairs["reference_given_class"].to_numpy(dtype=float), n_test, x, d)


def matrix_summary(matrices: DisagreementMatrices, pairs: pd.DataFrame) -> pd.DataFrame:
    """`disagreement_summary` of every pair of `matrices` (mean, sd, min, max, references), with Spearman's rho
    from the pairs of the table `pairs` (all of them, or a stated sample: `rho_hamming_n` says how many)."""
    d = upper(matrices.counts).astype(np.int64) / matrices.n_test
    x = pairs["hamming_norm"].to_numpy(dtype=float) if "hamming_norm" in pairs.columns else \
        np.full(len(pairs), np.nan)
    return _summary(d, upper(matrices.reference), upper(matrices.reference_given_class), matrices.n_test, x,
                    pairs["disagreement"].to_numpy(dtype=float))


def _summary(d: np.ndarray, q: np.ndarray, given: np.ndarray, n_test: int, x: np.ndarray,
             y: np.ndarray) -> pd.DataFrame:
    empty = len(d) == 0
    row = {"n_pairs": len(d), "n_test": int(n_test), "mean": np.nan if empty else d.mean(),
           "sd": d.std(ddof=1) if len(d) > 1 else np.nan, "min": np.nan if empty else d.min(),
           "max": np.nan if empty else d.max(), "reference": np.nan if empty else q.mean(),
           "reference_given_class": np.nan if empty else given.mean(),
           "reference_sd": np.nan if empty else float(np.sqrt(np.mean(q * (1 - q)) / n_test))}
    row["ratio_to_reference"] = row["mean"] / row["reference"] if row["reference"] else np.nan
    row["ratio_to_reference_given_class"] = (row["mean"] / row["reference_given_class"]
                                             if row["reference_given_class"] else np.nan)
    n, values = _correlations(x, y, MIN_CORRELATION_PAIRS)
    row.update(rho_hamming=values["spearman_rho"], rho_hamming_p=values["spearman_p"], rho_hamming_n=n)
    return pd.DataFrame([row])


# ---- ensembles ----------------------------------------------------------------------------------------------
def _tie_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of argmax(scores) (n x C) with a tie among t classes counted 1/t (uniform tie-breaking, in
    expectation)."""
    tied = scores == scores.max(axis=1, keepdims=True)
    return float(np.mean(tied[np.arange(len(labels)), labels] / tied.sum(axis=1)))


def ensemble_accuracy(outputs: np.ndarray, labels: np.ndarray, vote: str = "softmax") -> float:
    """The accuracy of one ensemble. `outputs`: (k, n, C) class probabilities of the k members for
    ``vote="softmax"`` (averaged), or (k, n) predicted classes for ``vote="majority"``; a tie counts 1/t (see
    the module docstring). The ensemble of one mask has that mask's accuracy.

    Examples
    --------
    >>> ensemble_accuracy(np.array([[0, 1, 1], [0, 2, 1], [1, 2, 1]]), np.array([0, 2, 2]), "majority")
    0.6666666666666666
    """
    labels = np.asarray(labels).astype(np.int64)
    outputs = np.asarray(outputs)
    if vote == "softmax":
        return _tie_accuracy(outputs.mean(axis=0), labels)
    if vote == "majority":
        n_classes = int(max(outputs.max(initial=0), labels.max(initial=0))) + 1
        counts = np.zeros((outputs.shape[1], n_classes), dtype=np.int64)
        rows = np.arange(outputs.shape[1])
        for member in outputs.astype(np.int64):
            counts[rows, member] += 1
        return _tie_accuracy(counts, labels)
    raise UserError(f"vote {vote!r} is invalid: use softmax or majority")


def ensemble_orders(n: int, orders: int = DEFAULT_ORDERS, random_state: int = 0) -> np.ndarray:
    """`orders` random permutations of range(n) (orders x n), from one generator seeded by `random_state`."""
    rng = np.random.default_rng(int(random_state))
    return np.stack([rng.permutation(n) for _ in range(int(orders))])


def ensemble_curve(probabilities: np.ndarray, labels: np.ndarray, *, orders: int = DEFAULT_ORDERS,
                   random_state: int = 0, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Ensemble accuracy for k = 1..N members (or the given `ks`), by averaged softmax and by majority vote.

    `probabilities`: (N, n, C) softmax outputs of N masks on n test samples (the vote uses their argmax);
    `labels`: the n true classes. The ensemble of size k in order r is the first k masks of permutation r of
    `ensemble_orders(N, orders, random_state)`; each row gives, over the orders, the mean, sd, min and max of
    its accuracy, the mean accuracy of its members and of its best member (each averaged over the orders) and
    the mean gains over them. Cost: orders x N x n x C.

    Returns
    -------
    DataFrame with columns k, vote ("softmax", "majority"), acc_mean, acc_sd, acc_min, acc_max, member_mean,
    member_best, gain_over_mean, gain_over_best, n_orders, n_masks.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probabilities.ndim != 3 or len(probabilities) < 1 or probabilities.shape[1] != len(labels):
        raise UserError(f"ensemble_curve needs (N >= 1, n, C) probabilities for the n = {len(labels)} labels, "
                        f"got shape {probabilities.shape}")
    n_masks, n, n_classes = probabilities.shape
    ks = list(range(1, n_masks + 1)) if ks is None else sorted({int(k) for k in ks if 1 <= int(k) <= n_masks})
    predicted = probabilities.argmax(axis=2)
    single = np.array([_tie_accuracy(p, labels) for p in probabilities])
    perms = ensemble_orders(n_masks, orders, random_state)
    rows = np.arange(n)
    acc = {v: np.zeros((len(perms), len(ks))) for v in ("softmax", "majority")}
    member_mean, member_best = np.zeros((len(perms), len(ks))), np.zeros((len(perms), len(ks)))
    for r, perm in enumerate(perms):
        summed = np.zeros((n, n_classes))
        votes = np.zeros((n, n_classes), dtype=np.int64)
        col = 0
        for k, m in enumerate(perm, 1):
            summed += probabilities[m]
            votes[rows, predicted[m]] += 1
            if col < len(ks) and k == ks[col]:
                acc["softmax"][r, col] = _tie_accuracy(summed, labels)  # the mean's argmax is the sum's
                acc["majority"][r, col] = _tie_accuracy(votes, labels)
                member_mean[r, col] = single[perm[:k]].mean()
                member_best[r, col] = single[perm[:k]].max()
                col += 1
    out = []
    for vote, a in acc.items():
        out.append(pd.DataFrame({
            "k": ks, "vote": vote, "acc_mean": a.mean(axis=0),
            "acc_sd": a.std(axis=0, ddof=1) if len(perms) > 1 else np.nan,
            "acc_min": a.min(axis=0), "acc_max": a.max(axis=0), "member_mean": member_mean.mean(axis=0),
            "member_best": member_best.mean(axis=0), "gain_over_mean": (a - member_mean).mean(axis=0),
            "gain_over_best": (a - member_best).mean(axis=0), "n_orders": len(perms), "seed": int(random_state),
            "n_masks": n_masks}))
    return pd.concat(out, ignore_index=True)[ENSEMBLE_COLUMNS]


# ---- linear CKA ---------------------------------------------------------------------------------------------
def centred_gram(x: np.ndarray) -> np.ndarray:
    """The centred Gram matrix ``Xc Xc^T`` (n x n, float64) of a representation X (n samples; any trailing
    shape is flattened into features), Xc = X less its column means."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    centred = x - x.mean(axis=0, keepdims=True)
    return centred @ centred.T


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n samples (n x d_x and n x d_y) in the feature form
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` (Kornblith et al., 2019, after centring). 1 for X
    against itself; invariant to orthogonal transforms and isotropic scaling of either; NaN for a constant one.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(20, 5))
    >>> q = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0]
    >>> round(linear_cka(x, 3 * x @ q), 12)
    1.0
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise UserError(f"CKA compares representations of the same samples: {len(x)} and {len(y)} rows")
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    norms = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / norms) if norms > 0 else float("nan")


def cka_matrix(grams: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Linear CKA of every pair from centred Gram matrices (N x n x n, `centred_gram`):
    ``<K_a, K_b>_F / (||K_a||_F ||K_b||_F)``, all pairs in one matrix product (N x N; N x M against `other`).
    Cost N^2 n^2 (the feature form costs n d_x d_y per pair)."""
    a = np.asarray(grams).reshape(len(grams), -1).astype(np.float64, copy=False)
    b = a if other is None else np.asarray(other).reshape(len(other), -1).astype(np.float64, copy=False)
    na, nb = np.sqrt(np.einsum("ij,ij->i", a, a)), np.sqrt(np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a @ b.T) / np.outer(na, nb)


# ---- forward passes -------------------------------------------------------------------------------------------
def cka_batch(n_test: int, cka_samples: int = DEFAULT_CKA_SAMPLES, seed: int = 0) -> np.ndarray:
    """The fixed CKA batch: `cka_samples` test-sample indices drawn without replacement by `seed`, sorted (the
    whole test split when it is not larger)."""
    if cka_samples >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(int(seed)).choice(n_test, int(cka_samples), replace=False))


@dataclass
class Forward:
    """One pass of each of N masks: softmax probabilities on the test set (N x n_test x C, float64), the
    predicted classes (N x n_test), and per representation (masked layer name) the centred Gram matrices of
    the CKA batch (N x n x n, float32)."""

    ids: list[int]
    probabilities: np.ndarray
    predicted: np.ndarray
    grams: dict[str, np.ndarray] = field(default_factory=dict)


@contextlib.contextmanager
def _representations(model) -> Iterator[dict[str, np.ndarray]]:
    """While open, every forward pass stores each masked layer's representation: the input of the next masked
    layer (named by the layer that made it), and the last layer's output, named "logits"."""
    from masklab.nn.layers import masked_layers

    layers = masked_layers(model)
    captured: dict[str, np.ndarray] = {}
    handles = []
    for j in range(1, len(layers)):
        def before(_module, inputs, name=layers[j - 1][0]):
            captured[name] = inputs[0].detach().cpu().numpy()
        handles.append(layers[j][1].register_forward_pre_hook(before))

    def after(_module, _inputs, output, name=LOGITS):
        captured[name] = output.detach().cpu().numpy()
    handles.append(layers[-1][1].register_forward_hook(after))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _batch_grams(model, dataset, batch: np.ndarray, device: str) -> dict[str, np.ndarray]:
    """Centred Gram matrices (float32) of every representation of `model` on the test samples `batch`."""
    import torch

    with _representations(model) as captured, torch.no_grad():
        model.eval()
        model(dataset.normalize(dataset.x_test[torch.as_tensor(batch)], device))
    return {name: centred_gram(value).astype(np.float32) for name, value in captured.items()}


def _threads(model, n_samples: int, device: str) -> int | None:
    """1 where one pass is small work on CPU (as `PathEvaluator` decides: a second torch thread costs more than
    it gives there, 2-6x on a busy 2-core machine), else None (torch's own)."""
    from masklab.analysis.paths.evaluation import SERIAL_EVAL_WORK
    from masklab.nn.layers import masked_layers

    work = n_samples * sum(layer.weight.numel() for _, layer in masked_layers(model))
    return 1 if str(device).startswith("cpu") and work < SERIAL_EVAL_WORK else None


def _probabilities(model, dataset, device: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        model.eval()
        return np.concatenate([torch.softmax(model(x).double(), dim=1).cpu().numpy()
                               for x, _ in dataset.test_batches(EVAL_BATCH, device=device)])


def forward_passes(run, ids: Sequence[int], *, cka_samples: int = DEFAULT_CKA_SAMPLES, seed: int = 0,
                   device: str = "cpu", progress: bool = False) -> Forward:
    """One pass of each of masks `ids` of `run` (`Run.model(i)`, rebuilt exactly) over its test set in the
    recorded final pass's batches, and one over the CKA batch (`cka_batch(n_test, cka_samples, seed)`)."""
    from tqdm import tqdm

    from masklab.analysis.paths.evaluation import torch_threads
    from masklab.train.rebuild import run_models

    dataset = run.dataset()
    batch = cka_batch(dataset.n_test, cka_samples, seed)
    probabilities: list[np.ndarray] = []
    grams: dict[str, np.ndarray] = {}  # filled in place: a list stacked at the end held them twice (64 masks:
    ids = [int(i) for i in ids]        # 3 x 52 MB more at the peak of a 1,024-mask analysis)
    models = run_models(run, ids, device)
    for row, (_, model) in enumerate(tqdm(models, total=len(ids), desc="functional: masks", unit="mask",
                                          disable=not progress, leave=False)):
        with torch_threads(_threads(model, dataset.n_test, device)):
            probabilities.append(_probabilities(model, dataset, device))
            for name, value in _batch_grams(model, dataset, batch, device).items():
                if name not in grams:
                    grams[name] = np.empty((len(ids), *value.shape), dtype=value.dtype)
                grams[name][row] = value
    stacked = np.stack(probabilities)
    return Forward(ids, stacked, stacked.argmax(axis=2), grams)


def random_mask_grams(run, n_random: int = DEFAULT_RANDOM_MASKS, *, cka_samples: int = DEFAULT_CKA_SAMPLES,
                      seed: int = 0, random_state: int = 0, device: str = "cpu") -> dict[str, np.ndarray] | None:
    """The CKA reference: centred Gram matrices (per layer, n_random x n x n) of subnetworks of the run's initial
    weights (its first mask's weight seed, no recycling) with random masks of the run's per-layer counts
    (`random_sets.random_mask_bits`, one generator seeded by `random_state`), on the CKA batch. None where there is
    no mask to randomise (dense runs) or no seed to rebuild the weights from (imports)."""
    from types import SimpleNamespace

    from masklab.analysis.paths.evaluation import torch_threads
    from masklab.train.rebuild import rebuild_subnet

    if run.config.method == "dense" or run.imported is not None or not run.has_architecture or not len(run.ids):
        return None
    masks = run.masks
    counts = np.repeat(layer_counts(masks)[:1], int(n_random), axis=0)
    random = MaskSet(random_mask_bits(masks.layers, counts, int(n_random), np.random.default_rng(int(random_state))),
                     masks.layers)
    shape = SimpleNamespace(input_shape=tuple(run.meta["dataset"]["input_shape"]),
                            n_classes=int(run.meta["dataset"]["n_classes"]))
    record = run.record(run.ids[0])
    dataset = run.dataset()
    batch = cka_batch(dataset.n_test, cka_samples, seed)
    grams: dict[str, list[np.ndarray]] = {}
    for r in range(int(n_random)):
        layers = [m.reshape(s) for m, s in zip(random.unpack_layers(r), masks.layers["shape"])]
        model = rebuild_subnet(run.config, shape, int(record["weight_seed"]), int(record["score_seed"]), layers,
                               device=device)
        with torch_threads(_threads(model, len(batch), device)):
            for name, value in _batch_grams(model, dataset, batch, device).items():
                grams.setdefault(name, []).append(value)
    return {k: np.stack(v) for k, v in grams.items()}


# ---- everything for one run ------------------------------------------------------------------------------------
@dataclass
class FunctionalSimilarity:
    """The functional similarity of a run's masks (`functional_similarity`).

    disagreement : one row per pair (`DisagreementMatrices.pairs`): every pair of the masks compared, or a stated
        uniform sample of them beyond `TABLE_MAX_PAIRS` (`samples`).
    disagreement_summary : one row (`matrix_summary`): over every pair of the masks compared; the correlation
        with Hamming distance over the pairs of `disagreement`.
    ensemble : the ensemble curve (`ensemble_curve`) over the masks evaluated.
    cka : one row per layer and pair of the masks evaluated: layer, mask_a, mask_b, cka.
    cka_summary : per layer: mean, sd, min, max, n_pairs of the masks' CKA; random_mean, random_sd,
        n_random_pairs of the random-mask reference; sd_from_random.
    sample_pairs, sample_forward, sample_cka : what each rests on (n, how chosen, seed).
    chance_accuracy : 1 / classes. mismatches : test predictions of the evaluated masks that differ from the
        stored ones (0 on the device that trained them; another device may round near-ties differently).
    n_test : test samples the disagreement counts are over.
    matrices : the per-pair results of the masks compared as N x N matrices (`write_pairs` stores them).
    samples : the samples the stage drew (`masklab.analysis.sampling.Sample`: the masks compared, the pairs
        tabulated, the masks evaluated), for the `samples` table.
    """

    disagreement: pd.DataFrame
    disagreement_summary: pd.DataFrame
    ensemble: pd.DataFrame
    cka: pd.DataFrame
    cka_summary: pd.DataFrame
    sample_pairs: str
    sample_forward: str
    sample_cka: str
    chance_accuracy: float
    mismatches: int = 0
    n_test: int = 0
    matrices: DisagreementMatrices | None = None
    samples: list[Sample] = field(default_factory=list)

    def write_pairs(self, folder: str | os.PathLike, *,
                    root: str | os.PathLike | None = None) -> dict[str, PairStore]:
        """Store the per-pair results as N x N matrices, as the distances are (`masklab.analysis.pairs.PairStore`,
        one memory-mappable .npy per quantity and layer): ``folder/disagreement`` over the masks compared holds
        ``disagreement_count`` (test samples predicted differently: exact, in the smallest unsigned integer type;
        attrs n_test), ``reference`` and ``reference_given_class`` (fractions, float32, 0 on the diagonal);
        ``folder/cka`` over the masks evaluated (`sample_forward`) holds ``cka`` per representation (float64,
        diagonal 1). Returns the two stores by name. A later call for the same masks replaces the matrices."""
        folder = Path(folder)
        root = Path(root) if root is not None else folder.parent
        m = self.matrices
        if m is None:
            raise UserError("these results hold no per-pair matrices (functional_similarity makes them)")
        stores = {"disagreement": PairStore.create(folder / "disagreement", m.ids, root=root)}
        stores["disagreement"].write("disagreement_count", m.counts, unit="test samples",
                                     description=f"test samples (of {m.n_test}) predicted differently",
                                     attrs={"n_test": int(m.n_test)})
        for name, text in (("reference", "1 - sum_c p_a(c) p_b(c): predictors independent of the input"),
                           ("reference_given_class", "predictors independent given the true class")):
            with stores["disagreement"].writer(name, ALL, np.float32, unit="fraction", description=text) as out:
                out[:] = getattr(m, name)
                np.fill_diagonal(out, 0)
        if len(self.cka):
            cka_ids = np.unique(np.concatenate([self.cka["mask_a"].to_numpy(), self.cka["mask_b"].to_numpy()]))
            stores["cka"] = PairStore.create(folder / "cka", cka_ids.astype(np.int64), root=root)
            stores["cka"].write_long(self.cka.rename(columns={"cka": "value"}), "cka", dtype=np.float64,
                                     unit="CKA", description="linear CKA of the representations on the CKA batch",
                                     diagonal=1.0)
        elif (folder / "cka").is_dir() and not (folder / "cka").is_symlink():
            shutil.rmtree(folder / "cka")  # an earlier analysis' CKA of other masks must not stay beside these
        return stores


def _cka_tables(forward: Forward, random: dict[str, np.ndarray] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = np.asarray(forward.ids, dtype=np.int64)
    i, j = np.triu_indices(len(ids), 1)
    pairs, summary = [], []
    for layer, grams in forward.grams.items():
        values = cka_matrix(grams)[i, j]
        pairs.append(pd.DataFrame({"layer": layer, "mask_a": ids[i], "mask_b": ids[j], "cka": values}))
        ref = upper(cka_matrix(random[layer])) if random is not None and layer in random else np.zeros(0)
        mean = float(values.mean()) if len(values) else np.nan
        random_mean = float(ref.mean()) if len(ref) else np.nan
        random_sd = float(ref.std(ddof=1)) if len(ref) > 1 else np.nan
        summary.append({"layer": layer, "mean": mean, "sd": values.std(ddof=1) if len(values) > 1 else np.nan,
                        "min": values.min() if len(values) else np.nan, "max": values.max() if len(values) else np.nan,
                        "n_pairs": len(values), "random_mean": random_mean, "random_sd": random_sd,
                        "n_random_pairs": len(ref),
                        "sd_from_random": (mean - random_mean) / random_sd if random_sd > 0 else np.nan})
    columns = ["layer", "mask_a", "mask_b", "cka"]
    return (pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=columns)), pd.DataFrame(summary)


def functional_similarity(run, *, hamming_norm: pd.DataFrame | None = None, intersections: Intersections | None = None,
                          orders: int = DEFAULT_ORDERS, cka_samples: int = DEFAULT_CKA_SAMPLES,
                          max_masks: int = FORWARD_MAX_MASKS, pair_masks: int | None = PAIR_MAX_MASKS,
                          table_pairs: int | None = TABLE_MAX_PAIRS, n_random_masks: int = DEFAULT_RANDOM_MASKS,
                          random_state: int = 0, device: str = "cpu", progress: bool = False) -> FunctionalSimilarity:
    """Disagreement of every pair of the run's masks (at most `pair_masks`, a random subset seeded by
    `random_state` beyond; from the stored predictions) as N x N matrices, a long table of at most `table_pairs`
    of their pairs (a uniform random sample seeded by `random_state` beyond; the correlation with Hamming
    distance rests on it), the ensemble curve and linear CKA per layer (from one pass of at most `max_masks`
    masks, a random subset seeded by `random_state` beyond; the CKA batch: `cka_samples` test samples drawn
    with seed `random_state`; its reference: `n_random_masks` random masks). The mask subsets are
    `masklab.analysis.sampling.mask_sample`'s, nested with the other stages' samples of the same seed (None:
    all). The Hamming distances come from `intersections` (the distances stage's) or the square `hamming_norm`
    when given, else are computed. See the module docstring for the definitions."""
    ids = [int(i) for i in run.ids]
    if len(ids) < 2:
        raise UserError(f"functional similarity compares masks: run {run.id} has {len(ids)}")
    n_classes = int(run.meta["dataset"]["n_classes"])
    compared = mask_sample(len(ids), pair_masks, random_state, "functional: masks compared")
    used = [ids[p] for p in compared.positions]
    predictions = test_predictions(run, used, device=device, progress=progress)
    labels = run.dataset().y_test.numpy()
    matrices = disagreement_matrices(predictions, n_classes, labels, used)
    tabulated = pair_sample(len(used), table_pairs, random_state, "functional: pairs tabulated")
    a, b = condensed_pairs(tabulated.positions, len(used))
    hamming = _pair_hamming(run, compared.positions[a], compared.positions[b], hamming_norm, intersections)
    pairs = matrices.pairs(a, b, hamming)
    summary = disagreement_summary(pairs, matrices.n_test) if tabulated.complete else matrix_summary(matrices, pairs)
    sample = mask_sample(len(ids), max_masks, random_state, "functional: masks evaluated")  # nested (see above)
    evaluated = [ids[p] for p in sample.positions]
    sample_forward = sample.describe()
    # numpy's BLAS on one thread for the Gram matrices and CKA: with two threads on a shared 2-core machine the
    # same CKA product took 0.25 to 9 s (threads waiting for each other), with one 0.14 s, and the same bits
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        forward = forward_passes(run, evaluated, cka_samples=cka_samples, seed=random_state, device=device,
                                 progress=progress)
        random = random_mask_grams(run, n_random_masks, cka_samples=cka_samples, seed=random_state,
                                   random_state=random_state, device=device) if n_random_masks >= 2 else None
        cka, cka_summary = _cka_tables(forward, random)
    row_of = {i: r for r, i in enumerate(used)}
    stored = predictions[[row_of[i] for i in evaluated]]
    ensemble = ensemble_curve(forward.probabilities, labels, orders=orders, random_state=random_state)
    n_cka = min(int(cka_samples), len(labels))
    sample_cka = (f"{n_cka} test samples (seed {random_state}) of {sample_forward}; reference: "
                  f"{n_random_masks if random is not None else 0} random masks (seed {random_state})")
    if compared.complete and tabulated.complete:
        sample_pairs = f"all {len(pairs)} pairs of {len(ids)} masks on {predictions.shape[1]} test samples"
    else:
        sample_pairs = (f"every pair of {compared.describe()} on {predictions.shape[1]} test samples; the table and "
                        f"the correlation with Hamming distance: {tabulated.describe()}")
    return FunctionalSimilarity(
        pairs, summary, ensemble, cka, cka_summary, sample_pairs=sample_pairs,
        sample_forward=sample_forward + f"; {orders} random orders (seed {random_state})", sample_cka=sample_cka,
        chance_accuracy=1.0 / n_classes, mismatches=int((forward.predicted != stored).sum()),
        n_test=int(predictions.shape[1]), matrices=matrices, samples=[compared, tabulated, sample])


def _pair_hamming(run, a: np.ndarray, b: np.ndarray, square: pd.DataFrame | None,
                  result: Intersections | None) -> np.ndarray:
    """Normalised whole-mask Hamming distances of the pairs of masks at positions (a, b) of the run: read at
    those pairs from `result` (no N x N of them is made) or `square`, else computed for the masks involved."""
    if result is not None:
        counts = np.asarray(result.counts[0][a, b], dtype=np.int64)
        return metric_values("hamming_norm", counts, result.kept_a[a, 0], result.kept_b[b, 0], result.n_bits[0])
    ids = np.asarray(run.ids, dtype=np.int64)
    if square is not None:
        return square.loc[ids, ids].to_numpy()[a, b]
    involved = np.unique(np.concatenate([a, b]))
    local = np.searchsorted(involved, a), np.searchsorted(involved, b)
    masks = run.masks if len(involved) == len(ids) else run.masks.subset(ids[involved].tolist())
    return distance_intersections(masks, per_layer=False).metric("hamming_norm", ALL)[local]


