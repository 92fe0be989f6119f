"""The in-memory dataset every part of masklab trains and evaluates on: its batches (one seed per epoch),
CIFAR's crop-and-flip augmentation, and the protocols (Shaped, Batches) other code asks of a dataset.

Images are stored as the source has them (uint8 for the IDX and CIFAR-10 files, float32 in [0, 1] or raw
float32 for the tiny and synthetic sets) and turned into normalised float32 batches of shape
(B, *input_shape) one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from masklab.errors import UserError

CIFAR_PAD = 4  # random crop 32 with zero padding 4 (REFERENCE.md)


# ---- what the rest of masklab needs of a dataset --------------------------------------------------------
class Shaped(Protocol):
    """What building a model needs: the per-sample shape and the class count (a Dataset, or a run's record
    of them)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def n_classes(self) -> int: ...


class Batches(Shaped, Protocol):
    """What training and evaluation need: seeded training batches and the test split, as normalised float32
    tensors of shape (B, *input_shape) with int64 labels. `Dataset` is the one implementation."""

    name: str

    def train_batches(self, batch_size: int, seed: int, epoch: int,
                      device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...

    def train_batches_stacked(self, batch_size: int, seeds: list[int], epoch: int,
                              device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...

    def test_batches(self, batch_size: int = 1000,
                     device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...


# ---- the in-memory dataset ----------------------------------------------------------------------------
@dataclass
class Dataset:
    """A whole dataset in memory. Batches come out as normalised float32 of shape (B, *input_shape).

    `x_*` hold the raw images: uint8 (pixel/255 is the value in [0, 1]) or float32 (used as is). `y_*`
    are int64 class indices in [0, n_classes). A batch is `(x_raw_in_[0,1] - mean) / std` per channel
    (`mean`/`std` have one entry per channel, i.e. per `input_shape[0]`, or a single entry for all).
    `augment` is "cifar" (random crop with zero padding 4 + horizontal flip, applied to training batches
    before normalisation, as torchvision's RandomCrop/RandomHorizontalFlip/Normalize would) or None.
    """

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    input_shape: tuple[int, ...]
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None = None

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def normalize(self, x: Tensor, device: str | torch.device = "cpu") -> Tensor:
        """Raw images (N, *input_shape) as stored -> normalised float32 on `device`."""
        x = to_device(x, device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        shape = (len(self.mean),) + (1,) * (len(self.input_shape) - 1) if len(self.mean) > 1 else (1,)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (x - mean) / std

    def train_batches(self, batch_size: int, seed: int, epoch: int,
                      device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled (x, y) batches, the last one partial; augmented if `augment` is set.

        The order and the augmentation come from one CPU torch.Generator seeded by `epoch_seed(seed,
        epoch)`, so the same (seed, epoch, batch_size) always gives identical batches on any device.
        """
        for idx, crop in self._train_plan(batch_size, seed, epoch):
            x = self.x_train[idx]
            if crop is not None:
                x = crop_flip(x, *crop)
            yield self.normalize(x, device), to_device(self.y_train[idx], device)

    def train_batches_stacked(self, batch_size: int, seeds: list[int], epoch: int,
                              device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of `train_batches` for several data seeds at once: (x, y) of shapes (K, B,
        *input_shape) and (K, B), x[k], y[k] equal to seed k's batch. The K batches are gathered, augmented,
        normalised and copied to the device as one tensor (one host gather and one copy per step, not K)."""
        plans = [self._train_plan(batch_size, seed, epoch) for seed in seeds]
        for parts in zip(*plans):
            idx = torch.cat([i for i, _ in parts])
            x = self.x_train[idx]
            if parts[0][1] is not None:
                dy, dx, flip = (torch.cat(values) for values in zip(*(c for _, c in parts)))
                x = crop_flip(x, dy, dx, flip)
            K, B = len(parts), len(parts[0][0])
            yield (self.normalize(x, device).view(K, B, *self.input_shape),
                   to_device(self.y_train[idx], device).view(K, B))

    def _train_plan(self, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[Tensor, tuple | None]]:
        """Per batch of an epoch: the sample indices and the augmentation's (dy, dx, flip) (None without
        augmentation), drawn from one CPU generator in a fixed order: the order, then each batch's draws."""
        _check_batch_size(batch_size)
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(self.n_train, generator=gen)
        for start in range(0, self.n_train, batch_size):
            idx = order[start:start + batch_size]
            yield idx, (crop_flip_draws(len(idx), gen) if self.augment == "cifar" else None)

    def test_batches(self, batch_size: int = 1000,
                     device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """The test set in its fixed order, not augmented, the last batch partial."""
        _check_batch_size(batch_size)
        for start in range(0, self.n_test, batch_size):
            yield (self.normalize(self.x_test[start:start + batch_size], device),
                   to_device(self.y_test[start:start + batch_size], device))

    def eval_subset(self, n: int, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """`min(n, n_train)` training samples picked by `seed`, normalised and not augmented (e.g. for
        measuring training accuracy cheaply)."""
        gen = torch.Generator().manual_seed(epoch_seed(seed, 0))
        idx = torch.randperm(self.n_train, generator=gen)[:max(0, n)]
        return self.normalize(self.x_train[idx], device), to_device(self.y_train[idx], device)


def to_device(x: Tensor, device: str | torch.device) -> Tensor:
    """`x` on `device`. To CUDA through pinned (page-locked) host memory without waiting: the copy is
    queued on the current stream, ahead of the step that reads it, and the host goes on preparing the next
    batch (torch's pinned-memory cache keeps the staging buffer until the copy is done)."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed for one (seed, epoch): `seed * 1_000_003 + epoch`, folded into [0, 2^63)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 63)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UserError(f"batch_size = {batch_size!r} is invalid: it must be an integer >= 1")


# ---- CIFAR augmentation -------------------------------------------------------------------------------
def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = CIFAR_PAD) -> Tensor:
    """Per-sample crop of the zero-padded batch and optional horizontal flip, vectorised.

    x: (B, C, H, W). Sample b becomes `padded[b, :, dy[b]:dy[b]+H, dx[b]:dx[b]+W]` where `padded` is x
    with `pad` zeros on every side (so dy = dx = pad is the identity), then mirrored left-right where
    `flip[b]`. Offsets lie in [0, 2 * pad]. Keeps the dtype of x.
    """
    b, c, h, w = x.shape
    padded = x.new_zeros(b, c, h + 2 * pad, w + 2 * pad)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    rows = dy.view(b, 1) + torch.arange(h)  # (B, H)
    cols = torch.arange(w).expand(b, w)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), w - 1 - cols, cols)  # (B, W)
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, flat).view(b, c, h, w)


def random_crop_flip(x: Tensor, gen: torch.Generator, pad: int = CIFAR_PAD) -> Tensor:
    """Random crop (zero padding `pad`) and random horizontal flip (p = 0.5) per sample, drawn from `gen`."""
    return crop_flip(x, *crop_flip_draws(x.shape[0], gen, pad), pad)


def crop_flip_draws(b: int, gen: torch.Generator, pad: int = CIFAR_PAD) -> tuple[Tensor, Tensor, Tensor]:
    """`random_crop_flip`'s draws for a batch of `b`: offsets dy, dx in [0, 2 * pad] and the flips."""
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    return dy, dx, flip
