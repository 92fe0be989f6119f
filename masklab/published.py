"""Published CIFAR-10 accuracies (%) from REFERENCE.md, for overlays beside masklab's own numbers.

Reported accuracy in the papers is the best test accuracy over epochs.
"""

from __future__ import annotations

import pandas as pd

SPARSITIES = (0.2, 0.4, 0.5, 0.6, 0.8, 0.9)

# model -> method -> accuracies at SPARSITIES (iterand = edge-popup + IteRand)
CIFAR10 = {
    "conv2": {"edge-popup": (70.06, 78.6, 79.69, 79.1, 75.15, 64.05),
              "biprop": (64.1, 78.3, 79.56, 79.98, 77.9, 70.1),
              "edge-popup+iterand": (80.7, 81.3, 81.83, 81.75, 78.04, 68.87),
              "edge-popup+iwr": (81.05, 81.6, 81.68, 81.12, 79.06, 70.22),
              "biprop+iwr": (80.28, 81.2, 81.36, 81.36, 80.23, 76.9)},
    "conv4": {"edge-popup": (77.6, 86.74, 86.67, 86.43, 83.28, 74.42),
              "biprop": (74.71, 85.9, 87.42, 87.2, 85.34, 79),
              "edge-popup+iterand": (88.4, 89.2, 88.37, 87.66, 85.34, 78.88),
              "edge-popup+iwr": (88.95, 88.9, 88.5, 88.15, 86.9, 79.78),
              "biprop+iwr": (88.05, 88.8, 88.91, 88.64, 87.75, 84.3)},
    "conv6": {"edge-popup": (83, 89.33, 89.53, 89.1, 85.4, 79.57),
              "biprop": (78.2, 88.9, 89.52, 90.25, 87.5, 82.38),
              "edge-popup+iterand": (90.58, 91.1, 90.74, 90, 86.94, 81.22),
              "edge-popup+iwr": (91.1, 91.2, 90.9, 90.4, 88.6, 83.2),
              "biprop+iwr": (90.2, 90.8, 90.9, 90.6, 90, 85.5)},
    "conv8": {"edge-popup": (84.39, 90.15, 90.28, 90.5, 86.9, 83.6),
              "biprop": (76.59, 89.13, 90.35, 90.54, 89.11, 84.84),
              "edge-popup+iterand": (90.99, 91.55, 91.11, 91.16, 88.42, 84.73),
              "edge-popup+iwr": (91.15, 91.5, 91.36, 90.95, 89.87, 86.93),
              "biprop+iwr": (90.15, 91.0, 91.6, 91.2, 90.55, 86.4)},
}
DENSE = {"conv2": 79.9, "conv4": 87.0, "conv6": 89.0, "conv8": 89.41}
# high sparsity: (model, sparsity) -> method -> accuracy
HIGH_SPARSITY = {
    ("conv4", 0.95): {"biprop+iwr": 73.5, "edge-popup+iterand": 64.72, "edge-popup": 57.61, "biprop": 64.83},
    ("conv4", 0.98): {"biprop+iwr": 49.38, "edge-popup+iterand": 41.6, "edge-popup": 35.28, "biprop": 44},
    ("conv6", 0.95): {"biprop+iwr": 72.11, "edge-popup+iterand": 68.8, "edge-popup": 60.63, "biprop": 66.12},
}


def published_cifar10() -> pd.DataFrame:
    """One row per (model, method, sparsity): the published best test accuracy in %."""
    rows = [{"model": model, "method": method, "sparsity": s, "published": acc}
            for model, methods in CIFAR10.items() for method, accs in methods.items()
            for s, acc in zip(SPARSITIES, accs)]
    rows += [{"model": model, "method": method, "sparsity": s, "published": acc}
             for (model, s), methods in HIGH_SPARSITY.items() for method, acc in methods.items()]
    rows += [{"model": model, "method": "dense", "sparsity": 0.0, "published": acc} for model, acc in DENSE.items()]
    return pd.DataFrame(rows)


def published_for(dataset: str, model: str) -> pd.DataFrame | None:
    """The published numbers that apply to a sweep, or None (only CIFAR-10 with conv2/4/6/8)."""
    if dataset != "cifar10" or model not in CIFAR10:
        return None
    table = published_cifar10()
    return table[table["model"] == model].drop(columns="model").reset_index(drop=True)
