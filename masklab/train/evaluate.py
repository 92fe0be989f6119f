"""Evaluation: mean cross-entropy and accuracy on a dataset's test split (or any batches).

Losses are added per sample in float64 by numpy (a fixed order), so the figures do not depend on the
thread count. `LossTotals` keeps them on the device until the end of a pass (one copy to the host, none per
batch) and adds them exactly as a copy per batch would have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Evaluation(NamedTuple):
    """A network's figures on a test split: `loss`, the mean cross-entropy in nats, and `acc`, the accuracy
    as a fraction. A tuple: `loss, acc = run.evaluate(i)` unpacks it."""

    loss: float
    acc: float


class LossTotals:
    """Per-sample losses and correct predictions of K models over many batches, kept on the device until
    `result()`: one copy to the host for the whole pass instead of one per step (each copy waits for the
    device). The losses are then added per batch, in batch order, in float64 by numpy: the same numbers a
    copy per batch gave.

    Examples
    --------
    >>> totals = LossTotals()
    >>> totals.add(torch.tensor([[1.0, 3.0]]), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[1, 1]]))
    >>> totals.result()
    [(2.0, 0.5)]
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []

    def add(self, per_sample: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """One batch: per-sample losses (K, B), logits (K, B, classes), labels (K, B)."""
        self.add_counted(per_sample, (logits.detach().argmax(-1) == y).sum(-1))

    def add_counted(self, per_sample: torch.Tensor, correct: torch.Tensor) -> None:
        """One batch: per-sample losses (K, B) and the number of correct predictions per model (K,)."""
        self.losses.append(per_sample.detach())
        self.correct.append(correct)

    def result(self) -> list[tuple[float, float]]:
        """(mean loss, accuracy) per model."""
        if not self.losses:
            return []
        sizes = [part.shape[-1] for part in self.losses]
        losses = torch.cat(self.losses, -1).cpu().numpy()
        correct = torch.stack(self.correct, -1).sum(-1).cpu().numpy()
        total = np.zeros(losses.shape[:-1], dtype=np.float64)
        for part in np.split(losses, np.cumsum(sizes)[:-1], axis=-1):
            total += part.astype(np.float64).sum(-1)
        seen = sum(sizes)
        return [(float(total[k]) / seen, int(correct[k]) / seen) for k in range(len(total))]


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     predictions: list[np.ndarray] | None = None) -> Evaluation:
    """(mean loss, accuracy) over the batches, in eval mode. Masks are computed once and reused. With a list
    `predictions`, each batch's predicted classes (argmax of the logits, int64) are appended to it."""
    was_training = model.training
    model.eval()
    totals = LossTotals()
    for x, y in batches:
        logits = model(x)
        totals.add(F.cross_entropy(logits, y, reduction="none")[None], logits[None], y[None])
        if predictions is not None:
            predictions.append(logits.argmax(1).cpu().numpy())
    model.train(was_training)
    return Evaluation(*totals.result()[0])


def evaluate(model: nn.Module, dataset, device: str | torch.device = "cpu",
             batch_size: int = 1000) -> Evaluation:
    """(mean loss, accuracy) on the dataset's test split."""
    return evaluate_batches(model, dataset.test_batches(batch_size, device=device))


def evaluate_predictions(model: nn.Module, dataset, device: str | torch.device = "cpu",
                         batch_size: int = 1000) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predicted class of every test sample in test-split order, int64): `evaluate` and
    the predictions of the same pass (what a run stores per mask as its `predictions` extra)."""
    predictions: list[np.ndarray] = []
    loss, acc = evaluate_batches(model, dataset.test_batches(batch_size, device=device), predictions)
    return loss, acc, np.concatenate(predictions) if predictions else np.zeros(0, np.int64)
