"""Evaluation: mean cross-entropy and accuracy on a dataset's test split (or any batches).

Losses are added per sample in float64 by numpy (a fixed order), so the figures do not depend on the
thread count.
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


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Evaluation:
    """(mean loss, accuracy) over the batches, in eval mode. Masks are computed once and reused."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="none").cpu().numpy().astype(np.float64).sum())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return Evaluation(total_loss / seen, correct / seen)


def evaluate(model: nn.Module, dataset, device: str | torch.device = "cpu",
             batch_size: int = 1000) -> Evaluation:
    """(mean loss, accuracy) on the dataset's test split."""
    return evaluate_batches(model, dataset.test_batches(batch_size, device=device))
