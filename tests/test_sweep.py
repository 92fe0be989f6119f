import pytest

from masklab.config import RunConfig, parse_method
from masklab.errors import UserError
from masklab.published import published_for
from masklab.sweep import sweep, sweep_configs


def test_sweep_on_digits_completes_and_resumes_without_training(tmp_path, monkeypatch):
    base = RunConfig(epochs=2, width=0.25)
    kw = dict(methods=("edge-popup", "biprop"), sparsities=(0.5, 0.8), seeds=2, runs_dir=tmp_path)
    table = sweep(base, **kw)
    assert len(table) == 4 and set(table["method"]) == {"edge-popup", "biprop"}
    assert (table["n"] == 2).all() and table["acc_mean"].between(0.3, 1.0).all()
    assert table["acc_std"].notna().all()
    assert "published" not in table.columns  # digits: no published overlay

    import masklab.train.trainer as trainer

    def no_training(*a, **k):
        raise AssertionError("a resumed sweep must not train")

    monkeypatch.setattr(trainer, "train_mask", no_training)
    again = sweep(base, **kw)
    assert again[["method", "sparsity", "acc_mean"]].equals(table[["method", "sparsity", "acc_mean"]])

    from masklab.plots import accuracy_vs_sparsity, save_figure

    paths = save_figure(accuracy_vs_sparsity(table), tmp_path / "sweep")
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_published_overlay_only_for_cifar10_conv():
    assert published_for("digits", "mlp") is None
    assert published_for("cifar10", "resnet18") is None
    conv4 = published_for("cifar10", "conv4")
    row = conv4[(conv4["method"] == "biprop+iwr") & (conv4["sparsity"] == 0.9)]
    assert float(row["published"].iloc[0]) == 84.3


def test_sweep_grid_and_bad_methods():
    configs = sweep_configs(RunConfig(), ["edge-popup+iwr", "dense"], [0.5, 0.9], seeds=3)
    assert [(c.method, c.recycle, c.sparsity) for c in configs] == [
        ("edge-popup", "iwr", 0.5), ("edge-popup", "iwr", 0.9), ("dense", "none", 0.0)]
    assert all(c.masks == 3 for c in configs)
    assert [c.vary_data_seed for c in configs] == [False, False, True]  # dense repeats differ in batch order
    assert parse_method("biprop+iterand") == ("biprop", "iterand")
    with pytest.raises(UserError, match="is not one of edge-popup, biprop, dense"):
        parse_method("dense+iwr")
    with pytest.raises(UserError, match="is not one of edge-popup, biprop, dense"):
        parse_method("lottery")


def test_sweep_table_overlays_published_numbers_only_for_cifar10_conv():
    """The same two runs, labelled CIFAR-10 conv4 and then digits mlp: only the first gets the published
    column, the difference in points, and the dashed published line in the figure."""
    from types import SimpleNamespace

    import pandas as pd

    from masklab.plots import accuracy_vs_sparsity
    from masklab.sweep import sweep_table

    def fake(dataset, model, method, sparsity, accs):
        config = RunConfig(dataset=dataset, model=model, method=method, sparsity=sparsity)
        table = pd.DataFrame({"test_acc": accs, "best_test_acc": [a + 0.01 for a in accs]})
        return SimpleNamespace(config=config, table=table, id=f"{method}-{sparsity}")

    cifar = sweep_table([fake("cifar10", "conv4", "edge-popup", 0.5, [0.85, 0.87]),
                         fake("cifar10", "conv4", "biprop", 0.9, [0.78, 0.80])])
    row = cifar[cifar["method"] == "edge-popup"].iloc[0]
    assert row["published"] == 86.67 and abs(row["best_minus_published"] - (87.0 - 86.67)) < 1e-9
    labels = [t.get_text() for t in accuracy_vs_sparsity(cifar).axes[0].get_legend().get_texts()]
    assert "edge-popup (published)" in labels and "biprop (published)" in labels
    digits = sweep_table([fake("digits", "mlp", "edge-popup", 0.5, [0.95, 0.96])])
    assert "published" not in digits.columns
    labels = [t.get_text() for t in accuracy_vs_sparsity(digits).axes[0].get_legend().get_texts()]
    assert not any("published" in label for label in labels)


def test_sweep_id_names_the_grid_and_the_base_config():
    from masklab.sweep import sweep_id

    base = RunConfig(epochs=2, width=0.25)
    one = sweep_id(base, ["edge-popup", "biprop"], [0.5, 0.9], 3)
    assert one == sweep_id(base, ["biprop", "edge-popup"], [0.9, 0.5], 3)  # the order given does not matter
    assert one == sweep_id(base.replace(device="cpu", stack=2), ["edge-popup", "biprop"], [0.5, 0.9], 3)
    others = {sweep_id(base, ["edge-popup"], [0.5, 0.9], 3), sweep_id(base, ["edge-popup", "biprop"], [0.5], 3),
              sweep_id(base, ["edge-popup", "biprop"], [0.5, 0.9], 2),
              sweep_id(base, ["edge-popup", "biprop"], [0.5, 0.9], 3, [0, 1]),
              sweep_id(base.replace(epochs=3), ["edge-popup", "biprop"], [0.5, 0.9], 3),
              sweep_id(base.replace(recycle_rate=0.3), ["edge-popup", "biprop"], [0.5, 0.9], 3)}
    assert one not in others and len(others) == 6
    assert one.startswith("sweep-digits-mlp-")


def test_sweep_figure_states_epochs_seeds_band_and_draws_dense_and_chance():
    from types import SimpleNamespace

    import pandas as pd

    from masklab.plots import accuracy_vs_sparsity
    from masklab.sweep import sweep_table

    def fake(method, sparsity, accs):
        config = RunConfig(method=method, sparsity=sparsity, epochs=7)
        table = pd.DataFrame({"test_acc": accs, "best_test_acc": accs})
        return SimpleNamespace(config=config, table=table, id=f"{method}-{sparsity}",
                               meta={"dataset": {"n_classes": 10}})

    table = sweep_table([fake("edge-popup", 0.5, [0.90, 0.92, 0.91]), fake("dense", 0.0, [0.97, 0.96, 0.98])])
    assert table["epochs"].tolist() == [7, 7] and table["chance"].tolist() == pytest.approx([0.1, 0.1])
    ax = accuracy_vs_sparsity(table).axes[0]
    title = ax.get_title()
    assert "7 epochs" in title and "3 seeds (masks) per cell" in title and "band: ±1 std" in title
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("dense, trained weights (97.0%)") for label in labels)
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(10.0) and "1 / 10 classes" in chance[0].get_label()


def test_sweep_axes_models_widths_epochs_and_a_methods_own_settings():
    from masklab.sweep import parse_method_spec

    configs = sweep_configs(RunConfig(), ["edge-popup", "biprop+iwr:recycle_every=2", "dense"], [0.5, 0.9], seeds=2,
                            models=["mlp", "lenet-300-100"], widths=[0.5, 1.0], epochs=[3, 5])
    cells = [(c.model, c.width, c.epochs, c.method, c.recycle, c.sparsity) for c in configs]
    assert len(cells) == len(set(cells)) == 2 * 2 * 2 * (2 + 2 + 1)
    iwr = [c for c in configs if c.recycle == "iwr"]
    assert all(c.recycle_every == 2 for c in iwr)
    assert all(c.recycle_every is None for c in configs if c.recycle == "none")  # the option is that method's only
    assert parse_method_spec("biprop+iwr:recycle_rate=0.3:recycle_every=4") == \
        ("biprop", "iwr", {"recycle_rate": 0.3, "recycle_every": 4})
    for spec, message in (("biprop+iwr:every", "is not key=value"), ("biprop:sparsity=0.3", "an axis of the sweep"),
                          ("biprop:colour=red", "unknown key 'colour'"),
                          ("biprop+iwr:recycle_every=x", "not a valid int")):
        with pytest.raises(UserError, match=message):
            parse_method_spec(spec)
    with pytest.raises(UserError, match="'recycle_every' = 0 is invalid"):
        sweep_configs(RunConfig(), ["biprop+iwr:recycle_every=0"], [0.5], seeds=1)


def test_sweep_id_keeps_one_value_axes_as_before_and_names_more():
    from masklab.sweep import sweep_id

    base = RunConfig(epochs=2, width=0.25)
    one = sweep_id(base, ["edge-popup"], [0.5], 3)
    assert one == sweep_id(base, ["edge-popup"], [0.5], 3, models=["mlp"], widths=[0.25], epochs=[2])
    assert one == "sweep-digits-mlp-" + one.rsplit("-", 1)[1]
    two = sweep_id(base, ["edge-popup"], [0.5], 3, models=["lenet-300-100", "mlp"])
    assert two.startswith("sweep-digits-lenet-300-100+mlp-") and two != one
    assert sweep_id(base, ["edge-popup"], [0.5], 3, widths=[0.25, 0.5]) != one
    assert sweep_id(base, ["edge-popup"], [0.5], 3, epochs=[2, 4]) != one
    assert sweep_id(base, ["edge-popup"], [0.5], 3, name="grid") == "grid-" + one.rsplit("-", 1)[1]


def test_sweep_figure_y_axis_spans_the_accuracies_not_zero():
    """78-84% over an axis from 0 (or from chance at 10%) is a sliver: the axis spans what is measured, and
    chance, then out of view, says so in the legend."""
    import pandas as pd

    from masklab.plots import accuracy_vs_sparsity

    table = pd.DataFrame({"method": ["edge-popup"] * 3, "sparsity": [0.3, 0.5, 0.7], "acc_mean": [0.78, 0.84, 0.80],
                          "acc_std": [0.01, 0.01, 0.01], "n": 3, "epochs": 5, "chance": 0.1})
    ax = accuracy_vs_sparsity(table).axes[0]
    low, high = ax.get_ylim()
    assert 70 < low < 77 and 85 < high < 92, (low, high)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chance (1 / 10 classes: 10%, below the axis)" in labels
    near = accuracy_vs_sparsity(table.assign(acc_mean=[0.12, 0.15, 0.11])).axes[0]
    assert near.get_ylim()[0] < 10 < near.get_ylim()[1]  # chance within reach: drawn in view
