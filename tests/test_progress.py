"""`TrainProgress` counts mask-epochs across a stack, labels masks finished / total, and gives an ETA that is
sane from its first update (fake trainer callbacks, fake clock)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from masklab.progress import TrainProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trained(index: int, acc: float = 0.9):
    return SimpleNamespace(index=index, metrics={"test_acc": acc})


def fake_generate(progress: TrainProgress, clock: Clock, masks: int, epochs: int, stack: int, setup: float,
                  epoch_seconds: float, seen: list) -> None:
    """What `_train_all` does: stacks of `stack` masks, rows K at a time per epoch, then the masks are stored."""
    clock.now += setup  # data, model, numba's first compile: before any epoch
    for first in range(0, masks, stack):
        chunk = list(range(first, min(first + stack, masks)))
        for epoch in range(epochs):
            clock.now += epoch_seconds * len(chunk) / stack
            for index in chunk:
                progress.on_epoch({"index": index, "epoch": epoch, "test_acc": 0.8, "epochs": epochs})
            seen.append((progress.done_epochs, progress.label(), progress.eta_seconds()))
        clock.now += 0.05
        for index in chunk:
            progress.mask_done(trained(index))
            seen.append((progress.done_epochs, progress.label(), progress.eta_seconds()))


def test_counts_mask_epochs_across_the_stack_and_labels_masks_finished():
    clock, seen = Clock(), []
    progress = TrainProgress(16, 20, quiet=True, clock=clock)
    fake_generate(progress, clock, masks=16, epochs=20, stack=16, setup=12.0, epoch_seconds=0.8, seen=seen)
    assert progress.total == 320 and progress.done_epochs == 320
    assert [s[0] for s in seen[:3]] == [16, 32, 48]          # one epoch of the stack = 16 mask-epochs
    labels = [s[1] for s in seen]
    assert labels[0] == "masks 0/16" and labels[-1] == "masks 16/16"
    finished = [int(label.split()[1].split("/")[0]) for label in labels]
    assert finished == sorted(finished)                      # never goes back
    assert progress.accuracies == [0.9] * 16 and "finished mean acc 90.0%" in progress.postfix()
    progress.close()


def test_eta_is_unknown_then_sane_from_the_second_epoch():
    clock, seen = Clock(), []
    progress = TrainProgress(16, 20, quiet=True, clock=clock)
    fake_generate(progress, clock, masks=16, epochs=20, stack=16, setup=12.0, epoch_seconds=0.8, seen=seen)
    assert seen[0][2] is None and progress.eta_text() != "?"   # "?" at the first update, not an hour
    true_left = 19 * 0.8
    assert seen[1][2] == pytest.approx(true_left - 0.8, rel=0.01)   # after epoch 2: 18 epochs of 0.8 s left
    for done, _, eta in seen[1:20]:
        left = (320 - done) / 16 * 0.8
        assert eta == pytest.approx(left, rel=0.05), (done, eta)


@pytest.mark.parametrize("stack, epochs", [(1, 5), (4, 1), (4, 3), (6, 2)])
def test_eta_with_small_stacks_and_single_epochs(stack, epochs):
    clock, seen = Clock(), []
    progress = TrainProgress(12, epochs, quiet=True, clock=clock)
    fake_generate(progress, clock, masks=12, epochs=epochs, stack=stack, setup=30.0, epoch_seconds=1.0, seen=seen)
    assert progress.done_epochs == 12 * epochs and progress.done_masks == 12
    known = [(done, eta) for done, _, eta in seen if eta is not None and done < 12 * epochs]
    assert known, "the ETA must become known before the end"
    for done, eta in known:  # never the set-up's 30 s spread over the first epoch
        left_epochs = (12 * epochs - done) / stack
        assert eta < 2.5 * left_epochs * 1.0 + 1.0, (done, eta)


def test_the_bar_shows_label_counts_and_eta():
    out, clock = io.StringIO(), Clock()
    progress = TrainProgress(2, 2, file=out, clock=clock, mininterval=0)
    clock.now = 10.0
    progress.on_epoch({"index": 0, "epoch": 0, "test_acc": 0.5})
    progress.on_epoch({"index": 1, "epoch": 0, "test_acc": 0.7})
    clock.now = 11.0
    progress.on_epoch({"index": 0, "epoch": 1, "test_acc": 0.6})
    progress.mask_done({"test_acc": 0.6})
    text = out.getvalue()
    assert "masks 0/2" in text and "2/4 mask-epochs" in text and "<?" in text and "training 0-1: acc 60.0%" in text
    assert "masks 1/2" in text and "3/4 mask-epochs" in text and "<00:01" in text
    progress.close()


def test_quiet_prints_nothing_and_results_of_any_form_are_taken():
    out = io.StringIO()
    with TrainProgress(3, 1, quiet=True, file=out) as progress:
        for index in range(3):
            progress.on_epoch({"index": index, "epoch": 0, "test_acc": 0.5})
        progress.mask_done(trained(0, 0.5))
        progress.mask_done({"test_acc": 0.7})
        progress.mask_done(None)
    assert out.getvalue() == "" and progress.accuracies == [0.5, 0.7] and progress.label() == "masks 3/3"
    with pytest.raises(ValueError):
        TrainProgress(3, 0)


def test_the_bar_moves_within_an_epoch_with_a_sane_first_eta():
    """A long epoch (conv2 on Fashion-MNIST: minutes) moves the bar with each block of steps, and the ETA is
    known from the second block, from the steps' own rate (set-up before the first block not counted)."""
    out, clock = io.StringIO(), Clock()
    progress = TrainProgress(2, 1, file=out, clock=clock, mininterval=0, steps_per_epoch=469)
    clock.now = 300.0  # data, model, numba's first compile
    progress.on_steps(2 * 4)  # a stack of 2 masks, a block of 4 steps
    assert progress.eta_seconds() is None
    clock.now += 1.0
    progress.on_steps(2 * 20)  # 20 steps a second
    assert progress.position == pytest.approx(48 / 469)
    assert progress.eta_seconds() == pytest.approx((469 - 24) / 20, rel=0.01)  # not the 300 s of set-up
    text = out.getvalue()
    assert "0.0/2 mask-epochs" in text and "0.1/2 mask-epochs" in text, text
    for _ in range(22):
        clock.now += 1.0
        progress.on_steps(2 * 20)
    progress.on_epoch({"index": 0, "epoch": 0, "test_acc": 0.8})  # the rows only update the accuracy
    assert progress.position == pytest.approx(928 / 469) and "acc 80.0%" in progress.postfix()
    resumed = TrainProgress(2, 4, file=io.StringIO(), steps_per_epoch=10, done=3)  # masks continued from checkpoints
    assert resumed.position == 3 and resumed.bar.n == 3
    progress.close()
