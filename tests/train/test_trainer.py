import os

import numpy as np
import pytest

from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.train import train_mask
from masklab.train.trainer import cosine_lr

FASHION = "/usr/share/datasets/fashion-mnist"


def test_same_seeds_give_bit_identical_masks(digits):
    config = RunConfig(epochs=3, recycle="iwr", recycle_every=1)
    a = train_mask(config, 1, dataset=digits)
    b = train_mask(config, 1, dataset=digits)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert all(np.array_equal(x, y) for x, y in zip(a.scores, b.scores))
    assert a.metrics["test_acc"] == b.metrics["test_acc"]
    c = train_mask(config, 2, dataset=digits)  # another score seed: another mask, same counts
    assert not all(np.array_equal(x, y) for x, y in zip(a.masks, c.masks))
    assert [m.sum() for m in a.masks] == [m.sum() for m in c.masks] == a.n_keep


def test_history_and_metrics(digits):
    result = train_mask(RunConfig(epochs=4, method="biprop"), 0, dataset=digits)
    h = result.history
    assert list(h["epoch"]) == [0, 1, 2, 3]
    assert h["lr"].iloc[0] == pytest.approx(0.1) and h["lr"].is_monotonic_decreasing
    assert result.metrics["best_test_acc"] == h["test_acc"].max()
    assert result.metrics["test_acc"] == h["test_acc"].iloc[-1]
    assert len(result.alphas) == 3 and all(a > 0 for a in result.alphas)


def test_cosine_schedule():
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)


def test_snapshots(digits):
    result = train_mask(RunConfig(epochs=5, width=0.25), 0, dataset=digits, snapshot_every=2)
    assert [e for e, _ in result.snapshots] == [1, 3]
    assert all(int(m.sum()) == k for _, masks in result.snapshots for m, k in zip(masks, result.n_keep))


@pytest.mark.parametrize("field,value,match", [
    ("sparsity", 1.0, "sparsity"), ("sparsity", -0.1, "sparsity"), ("model", "vgg", "model"),
    ("dataset", "imagenet", "dataset"), ("method", "lottery", "method"), ("width", 0.001, "width"),
    ("recycle_rate", 0.6, "recycle_rate"), ("recycle_rate", 0.0, "recycle_rate"), ("model", "conv8", "fit"),
])
def test_bad_config_is_a_value_error_naming_the_field(digits, field, value, match):
    kw = {field: value}
    if field == "recycle_rate":
        kw["recycle"] = "iwr"
    with pytest.raises(ValueError, match=match) as info:
        train_mask(RunConfig(epochs=1, **kw), 0, dataset=digits)
    assert isinstance(info.value, UserError)


@pytest.mark.slow
def test_edge_popup_learns_digits(digits):
    """Real data: Edge-Popup MLP 64-256-256-10 at sparsity 0.5 reaches >= 94% mean over 4 score seeds."""
    config = RunConfig(sparsity=0.5, epochs=20)
    accs = [train_mask(config, i, dataset=digits).metrics["test_acc"] for i in range(4)]
    assert np.mean(accs) >= 0.94, accs


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist is not installed")
def test_edge_popup_learns_fashion_mnist():
    """Real data: lenet-300-100 Edge-Popup at sparsity 0.5 reaches >= 84% test accuracy in 3 epochs."""
    config = RunConfig(dataset="fashion-mnist", model="lenet-300-100", sparsity=0.5, epochs=3)
    result = train_mask(config, 0)
    assert result.metrics["test_acc"] >= 0.84, result.metrics


def test_steps_are_reported_within_epochs(digits, monkeypatch):
    """`on_steps` hears every block of steps (so that progress moves inside long epochs): K per step in all."""
    from masklab.train.plan import StepPlan
    from masklab.train.trainer import train_masks

    monkeypatch.setattr(StepPlan, "BLOCK_SECONDS", 0.0)  # blocks of one step, as in an epoch of minutes
    config = RunConfig(epochs=2, width=0.25)
    blocks: list[int] = []
    train_masks(config, [0, 1], dataset=digits, on_steps=blocks.append)
    steps = -(-digits.n_train // config.batch_size)
    assert sum(blocks) == 2 * 2 * steps and set(blocks[1:]) == {2}  # (the first block: 2 steps, unmeasured)


def test_final_figures_are_the_rebuilt_subnetworks_evaluated_on_one_thread(digits):
    """The last epoch's figures (history, metrics, predictions, what `on_epoch` reports) are each rebuilt
    subnetwork's own evaluation, the numbers of one thread, though the K evaluations ran side by side."""
    import torch

    from masklab.nn.exact import blas_one_thread, set_threads
    from masklab.train.evaluate import evaluate_predictions
    from masklab.train.rebuild import rebuild_trained
    from masklab.train.trainer import train_masks

    config = RunConfig(epochs=2)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    reported = []
    try:
        results = train_masks(config, [0, 1, 2, 3], dataset=digits, on_epoch=reported.append)
    finally:
        torch.set_num_threads(old)
    last = {row["index"]: row for row in reported if row["epoch"] == 1}
    with blas_one_thread():
        set_threads(1)
        try:
            for result in results:
                loss, acc, predictions = evaluate_predictions(rebuild_trained(config, digits, result), digits)
                assert (result.metrics["test_loss"], result.metrics["test_acc"]) == (loss, acc)
                assert list(result.history[["test_loss", "test_acc"]].iloc[-1]) == [loss, acc]
                assert (last[result.index]["test_loss"], last[result.index]["test_acc"]) == (loss, acc)
                assert np.array_equal(result.predictions, predictions)
        finally:
            set_threads(old)
