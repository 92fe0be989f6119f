import numpy as np
import pandas as pd
import pytest
import torch

from masklab.analysis.interpolation import (
    PathEvaluator,
    Subnet,
    barrier,
    barrier_correlation,
    barrier_matrix,
    evaluation_batches,
    from_trained,
    interpolate,
    path_points,
    recompute_batchnorm,
    sample_pairs,
)
from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.errors import UserError
from masklab.nn.layers import masked_layers
from masklab.train import train_mask
from masklab.train.trainer import make_model

TINY = RunConfig(epochs=3, width=0.25, device="cpu")
IWR = RunConfig(recycle="iwr", recycle_every=1, epochs=4, width=0.25, device="cpu")


@pytest.fixture(scope="module")
def trained(digits):
    """Three edge-popup masks, two biprop masks, two IWR masks (edge-popup and biprop)."""
    out = {}
    for key, config, n in (("edge-popup", TINY, 3), ("biprop", TINY.replace(method="biprop"), 2),
                           ("iwr", IWR, 2), ("iwr-biprop", IWR.replace(method="biprop"), 2)):
        out[key] = (config, [train_mask(config, i, dataset=digits) for i in range(n)])
    return out


def source(trained, key, digits):
    config, masks = trained[key]
    return from_trained(config, masks, digits)


def assert_ends_reproduce(curve, ta, tb):
    first, last = curve.iloc[0], curve.iloc[-1]
    assert (first.loss, first.acc) == (ta.metrics["test_loss"], ta.metrics["test_acc"])
    assert (last.loss, last.acc) == (tb.metrics["test_loss"], tb.metrics["test_acc"])
    assert first.hamming_to_a == 0 and last.hamming_to_b == 0


# ---- ends ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["edge-popup", "biprop"])
@pytest.mark.parametrize("path", ["soft", "hamming", "score"])
def test_ends_equal_the_masks_own_evaluation(trained, digits, key, path):
    config, (ta, tb, *_) = trained[key]
    curve = interpolate(source(trained, key, digits), 0, 1, path, points=7)
    assert len(curve) == 7 and list(curve["point"]) == list(range(7))
    assert curve["t"].iloc[0] == 0.0 and curve["t"].iloc[-1] == 1.0
    assert_ends_reproduce(curve, ta, tb)
    # the recorded figures are the trained model's own evaluation; check one directly too
    from masklab.train.evaluate import evaluate

    model = make_model(config, digits, ta.score_seed)
    with torch.no_grad():
        for (_, layer), s in zip(masked_layers(model), ta.scores):
            layer.scores.copy_(torch.from_numpy(s))
    assert evaluate(model, digits) == (curve.loss.iloc[0], curve.acc.iloc[0])
    assert ((curve.error - (1 - curve.acc)).abs() < 1e-12).all()
    interior = curve.iloc[1:-1]
    assert (interior.hamming_to_a > 0).all() and (interior.hamming_to_b > 0).all()


@pytest.mark.parametrize("key", ["iwr", "iwr-biprop"])
@pytest.mark.parametrize("path", ["soft", "hamming", "score"])
def test_iwr_ends_use_each_masks_own_weights(trained, digits, key, path):
    config, (ta, tb) = trained[key]
    assert any((s != np.arange(s.size)).any() for s in ta.src)  # recycling happened
    src = source(trained, key, digits)
    curve = interpolate(src, 0, 1, path, points=5)
    assert_ends_reproduce(curve, ta, tb)
    # the weights matter: each mask keeps many positions the other one recycled, so with the ends' weights
    # exchanged neither end is its own subnetwork any more
    a, b = src.subnet(0), src.subnet(1)
    swapped = PathEvaluator(src.model(), evaluation_batches(digits)).curve(
        Subnet(a.masks, b.weights, a.scores), Subnet(b.masks, a.weights, b.scores), path, 3)
    assert swapped.loss.iloc[0] != curve.loss.iloc[0] and swapped.loss.iloc[-1] != curve.loss.iloc[-1]


def test_soft_path_ends_are_the_masks_and_the_middle_mixes_them(trained, digits):
    config, (ta, tb, _) = trained["edge-popup"]
    a, b = Subnet.of(ta.masks), Subnet.of(tb.masks)
    pts = list(path_points(a, b, "soft", 5))
    assert [p.t for p in pts] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for x, y in zip(pts[0].masks, a.masks):
        assert torch.equal(x, y.float())
    for x, y in zip(pts[-1].masks, b.masks):
        assert torch.equal(x, y.float())
    assert torch.equal(pts[2].masks[0], 0.5 * a.masks[0].float() + 0.5 * b.masks[0].float())
    d = sum(int((x != y).sum()) for x, y in zip(a.masks, b.masks))
    assert pts[1].to_a == 0.25 * d and pts[1].to_b == 0.75 * d


@pytest.mark.parametrize("key", ["iwr", "iwr-biprop"])
def test_iwr_soft_path_interpolates_each_ends_masked_weights(trained, digits, key):
    src = source(trained, key, digits)
    a, b = src.subnet(0), src.subnet(1)
    assert not all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    layers = [layer for _, layer in masked_layers(src.model())]
    for p in path_points(a, b, "soft", 4):
        for k, layer in enumerate(layers):
            with torch.no_grad():
                layer.weight.copy_(p.weights[k] if p.weights[k] is not None else a.weights[k])
            layer.pin(p.masks[k])
            masked = (1 - p.t) * a.weights[k] * a.masks[k] + p.t * b.weights[k] * b.masks[k]  # P(t)
            if key == "iwr-biprop":  # sign(P) * alpha(t) * m(t), alpha(t) = sum |P| / sum m
                m = (1 - p.t) * a.masks[k].float() + p.t * b.masks[k].float()
                expected = torch.sign(masked) * (masked.abs().sum() / m.sum()) * m
            else:
                expected = masked
            torch.testing.assert_close(layer.effective_weight(), expected, rtol=1e-5, atol=1e-6)
            if p.weights[k] is not None:  # where the ends agree the weight is exactly theirs
                same = a.weights[k] == b.weights[k]
                assert torch.equal(p.weights[k][same], a.weights[k][same])


def test_common_bits_with_differing_weights_switch_from_a_to_b():
    """Positions both ends keep but with different weights (possible with IWR) move from W_a to W_b."""
    g = torch.Generator().manual_seed(0)
    n = 200
    ma, mb = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    ma[:100], mb[50:150] = True, True
    wa = torch.randn(n, generator=g)
    wb = wa.clone()
    wb[10:20] += 1  # a-only bits
    wb[60:90] += 1  # bits kept by both
    wb[120:130] -= 1  # b-only bits
    sa = torch.rand(n, generator=g) + 2 * ma
    sb = torch.rand(n, generator=g) + 2 * mb
    a, b = Subnet([ma], [wa], [sa]), Subnet([mb], [wb], [sb])
    for path in ("hamming", "score"):
        pts = list(path_points(a, b, path, 7))
        assert torch.equal(pts[0].weights[0][ma], wa[ma]) and torch.equal(pts[-1].weights[0][mb], wb[mb])
        switched = [int((p.weights[0][60:90] == wb[60:90]).sum()) for p in pts]
        assert switched[0] == 0 and switched[-1] == 30 and 0 < switched[3] < 30
        assert all(x <= y for x, y in zip(switched, switched[1:]))
        for p in pts:
            kept_a_only, kept_b_only = p.masks[0] & ma & ~mb, p.masks[0] & mb & ~ma
            assert torch.equal(p.weights[0][kept_a_only], wa[kept_a_only])
            assert torch.equal(p.weights[0][kept_b_only], wb[kept_b_only])


# ---- hamming path -------------------------------------------------------------------------------------------
def hamming(x, y):
    return sum(int((u != v).sum()) for u, v in zip(x, y))


@pytest.mark.parametrize("order", ["random", "score"])
def test_hamming_path_keeps_counts_and_moves_monotonically(trained, order):
    _, (ta, tb, _) = trained["edge-popup"]
    a, b = Subnet.of(ta.masks, scores=ta.scores), Subnet.of(tb.masks, scores=tb.scores)
    d = hamming(a.masks, b.masks)
    pts = list(path_points(a, b, "hamming", 9, order=order))
    to_a = [hamming(p.masks, a.masks) for p in pts]
    to_b = [hamming(p.masks, b.masks) for p in pts]
    for p in pts:
        assert [int(m.sum()) for m in p.masks] == ta.n_keep
        assert all(m.dtype == torch.bool for m in p.masks)
    assert all(x == y for x, y in zip(to_a, [p.to_a for p in pts]))
    assert to_a[0] == 0 and to_b[-1] == 0 and to_a[-1] == d
    assert all(x <= y for x, y in zip(to_a, to_a[1:])) and all(x >= y for x, y in zip(to_b, to_b[1:]))
    assert all(x + y == d for x, y in zip(to_a, to_b))
    # every layer moves by round(j * n_l / (points - 1)) swaps
    n_l = [int((x & ~y).sum()) for x, y in zip(a.masks, b.masks)]
    for j, p in enumerate(pts):
        assert [hamming([m], [x]) for m, x in zip(p.masks, a.masks)] == [2 * ((2 * j * n + 8) // 16) for n in n_l]
    if order == "score":  # the first bits to leave are a's weakest, the first to enter b's strongest
        k = 0
        left = a.masks[k] & ~pts[1].masks[k]
        out = a.masks[k] & ~b.masks[k]
        s = a.scores[k].abs()
        assert s[left].max() <= s[out & ~left].min()
        entered = pts[1].masks[k] & ~a.masks[k]
        sb = b.scores[k].abs()
        assert sb[entered].min() >= sb[(b.masks[k] & ~a.masks[k]) & ~entered].max()


def test_hamming_orders_are_seeded_and_distinct(trained, digits):
    _, (ta, tb, _) = trained["edge-popup"]
    a, b = Subnet.of(ta.masks), Subnet.of(tb.masks)
    one = [p.masks[1] for p in path_points(a, b, "hamming", 5, order_index=0)]
    again = [p.masks[1] for p in path_points(a, b, "hamming", 5, order_index=0)]
    other = [p.masks[1] for p in path_points(a, b, "hamming", 5, order_index=1)]
    seed = [p.masks[1] for p in path_points(a, b, "hamming", 5, order_index=0, random_state=7)]
    assert all(torch.equal(x, y) for x, y in zip(one, again))
    assert not torch.equal(one[2], other[2]) and not torch.equal(one[2], seed[2])
    curve = interpolate(source(trained, "edge-popup", digits), 0, 1, "hamming", points=5, orders=3)
    assert sorted(curve["order"].unique()) == [0, 1, 2] and len(curve) == 15
    n_bits = sum(m.size for m in ta.masks)
    total = np.rint((curve.hamming_to_a + curve.hamming_to_b) * n_bits)
    assert (total == hamming(a.masks, b.masks)).all()
    assert curve.groupby("order")["hamming_to_a"].apply(lambda s: s.is_monotonic_increasing).all()


def test_iwr_hamming_path_carries_each_ends_weights(trained, digits):
    src = source(trained, "iwr", digits)
    a, b = src.subnet(0), src.subnet(1)
    pts = list(path_points(a, b, "hamming", 5))
    for k in range(len(a.masks)):
        assert torch.equal(pts[0].weights[k][a.masks[k]], a.weights[k][a.masks[k]])
        assert torch.equal(pts[-1].weights[k][b.masks[k]], b.weights[k][b.masks[k]])
        for p in pts:  # kept bits that only one end keeps always carry that end's weight
            only_a, only_b = p.masks[k] & a.masks[k] & ~b.masks[k], p.masks[k] & b.masks[k] & ~a.masks[k]
            assert torch.equal(p.weights[k][only_a], a.weights[k][only_a])
            assert torch.equal(p.weights[k][only_b], b.weights[k][only_b])


# ---- score path ---------------------------------------------------------------------------------------------
def test_score_path_keeps_counts_and_needs_scores(trained, digits):
    _, (ta, tb, _) = trained["edge-popup"]
    # float16 scores (as a run stores them) still give exactly the two masks at the ends
    a = Subnet.of(ta.masks, scores=[s.astype(np.float16) for s in ta.scores])
    b = Subnet.of(tb.masks, scores=[s.astype(np.float16) for s in tb.scores])
    pts = list(path_points(a, b, "score", 6))
    assert all(torch.equal(x, y) for x, y in zip(pts[0].masks, a.masks))
    assert all(torch.equal(x, y) for x, y in zip(pts[-1].masks, b.masks))
    for p in pts:
        assert [int(m.sum()) for m in p.masks] == ta.n_keep
        assert p.to_a == hamming(p.masks, a.masks) and p.to_b == hamming(p.masks, b.masks)
    with pytest.raises(UserError, match="keep-scores"):
        list(path_points(Subnet.of(ta.masks), Subnet.of(tb.masks), "score", 3))


# ---- BatchNorm ----------------------------------------------------------------------------------------------
def test_batchnorm_recomputed_only_where_there_is_batchnorm(trained, digits):
    synthetic = load_dataset("synthetic", input_shape=(3, 32, 32))
    config = RunConfig(dataset="synthetic", input_shape="3x32x32", model="resnet18", width=0.125, device="cpu")
    model = make_model(config, synthetic, 0).eval()
    masks = [[layer.mask().clone() for _, layer in masked_layers(make_model(config, synthetic, s))] for s in (1, 2)]
    a, b = Subnet(masks[0]), Subnet(masks[1])
    evals = evaluation_batches(synthetic, 48)
    bn = [x for x, _ in synthetic.test_batches(32)][:2]
    stale = PathEvaluator(model, evals).curve(a, b, "soft", 2)
    fresh = PathEvaluator(model, evals, bn).curve(a, b, "soft", 2)
    assert not np.allclose(stale.loss, fresh.loss)
    again = PathEvaluator(model, evals, bn).curve(a, b, "hamming", 2)
    assert fresh.loss.iloc[[0, -1]].tolist() == again.loss.iloc[[0, -1]].tolist()  # same ends, same statistics
    assert torch.equal(model.bn1.running_mean, torch.zeros_like(model.bn1.running_mean))  # state restored
    # an mlp has no BatchNorm: the flag changes nothing
    src = source(trained, "edge-popup", digits)
    mlp = src.model()
    assert recompute_batchnorm(mlp, [x for x, _ in digits.test_batches(100)]) is False
    with_flag = interpolate(src, 0, 1, "soft", points=5, recompute_bn=True)
    without = interpolate(src, 0, 1, "soft", points=5, recompute_bn=False)
    pd.testing.assert_frame_equal(with_flag, without)


# ---- barriers -----------------------------------------------------------------------------------------------
def test_barrier_formula_on_a_synthetic_curve():
    curve = pd.DataFrame({"t": [0.0, 0.25, 0.5, 0.75, 1.0], "loss": [1.0, 2.0, 4.0, 2.0, 3.0],
                          "acc": [0.9, 0.7, 0.5, 0.8, 0.7]})
    curve["error"] = 1 - curve["acc"]
    table = barrier(curve)
    assert isinstance(table, pd.DataFrame) and len(table) == 1  # a DataFrame whatever the input
    b = table.iloc[0]
    # baseline 1, 1.5, 2, 2.5, 3 -> excess 0, 0.5, 2, -0.5, 0
    assert b["loss_barrier"] == pytest.approx(2.0) and b["t_loss_barrier"] == 0.5
    # max error 0.5 - mean(0.1, 0.3)
    assert b["error_barrier"] == pytest.approx(0.3)
    assert barrier(curve.drop(columns="error"))["error_barrier"].iloc[0] == pytest.approx(0.3)  # from acc
    flat = barrier(curve.assign(loss=[1.0, 1.5, 2.0, 2.5, 3.0]))
    assert flat["loss_barrier"].iloc[0] == pytest.approx(0.0)
    two = pd.concat([curve.assign(order=0), curve.assign(order=1, loss=curve.loss + [0, 0, 1, 0, 0])])
    table = barrier(two)
    assert list(table["order"]) == [0, 1]
    assert table["loss_barrier"].tolist() == pytest.approx([2.0, 3.0])
    with pytest.raises(UserError, match="empty"):
        barrier(curve.iloc[:0])


def test_barriers_need_no_torch():
    """The barrier computation is numpy and pandas only: figures and notebooks use it without a model."""
    import subprocess
    import sys

    code = ("import sys; import masklab.analysis.paths.barriers, masklab.plots.paths; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_mask_sources_are_a_protocol(trained, digits):
    from masklab.analysis.paths.sources import MaskSource, RunSource, as_source

    src = source(trained, "edge-popup", digits)
    assert isinstance(src, MaskSource) and as_source(src) is src
    assert not isinstance(object(), MaskSource) and not issubclass(RunSource, type(src))
    with pytest.raises(UserError, match="expected a run"):
        as_source(42)


def test_barrier_matrix_and_correlation(trained, digits):
    src = source(trained, "edge-popup", digits)
    assert sample_pairs([0, 1, 2], None) == [(0, 1), (0, 2), (1, 2)]
    two = sample_pairs(range(10), 4, random_state=1)
    assert len(set(two)) == 4 and all(a < b for a, b in two) and two == sample_pairs(range(10), 4, random_state=1)
    table, curves = barrier_matrix(src, pairs=None, path="soft", points=5, return_curves=True)
    assert list(zip(table.mask_a, table.mask_b)) == [(0, 1), (0, 2), (1, 2)]
    assert {"mask_a", "mask_b", "loss_barrier", "error_barrier", "hamming", "hamming_norm"} <= set(table.columns)
    _, masks = trained["edge-popup"]
    assert table.hamming.tolist() == [hamming(masks[i].masks, masks[j].masks) for i, j in ((0, 1), (0, 2), (1, 2))]
    single = barrier(interpolate(src, 0, 2, "soft", points=5))
    assert table.loss_barrier.iloc[1] == single["loss_barrier"].iloc[0]
    assert single[["mask_a", "mask_b", "path", "order"]].iloc[0].tolist() == [0, 2, "soft", 0]
    assert len(curves) == 15 and (table.loss_barrier >= 0).all()
    corr = barrier_correlation(table)
    assert list(corr.barrier) == ["loss_barrier", "error_barrier"] and (corr.n == 3).all()
    synthetic = pd.DataFrame({"hamming_norm": [0.1, 0.2, 0.3, 0.4], "loss_barrier": [1.0, 2.0, 3.0, 5.0],
                              "error_barrier": [0.4, 0.3, 0.2, 0.1]})
    # below 10 pairs no correlation is reported (from 4 points rho = 1 means little), only n
    hidden = barrier_correlation(synthetic).set_index("barrier")
    assert hidden["spearman_rho"].isna().all() and hidden["pearson_r"].isna().all() and (hidden["n"] == 4).all()
    c = barrier_correlation(synthetic, min_pairs=3).set_index("barrier")
    assert c.loc["loss_barrier", "spearman_rho"] == pytest.approx(1.0)
    assert c.loc["error_barrier", "pearson_r"] == pytest.approx(-1.0)
    ten = pd.DataFrame({"hamming_norm": np.linspace(0.1, 0.5, 10), "loss_barrier": np.arange(10.0),
                        "error_barrier": np.arange(10.0)[::-1]})
    assert barrier_correlation(ten).set_index("barrier").loc["loss_barrier", "spearman_rho"] == pytest.approx(1.0)
    assert 0.9 < c.loc["loss_barrier", "pearson_r"] < 1.0


def test_bad_arguments(trained, digits):
    src = source(trained, "edge-popup", digits)
    with pytest.raises(UserError, match="path"):
        interpolate(src, 0, 1, "linear")
    with pytest.raises(UserError, match="orders"):
        interpolate(src, 0, 1, "soft", orders=2)
    with pytest.raises(UserError, match="points"):
        interpolate(src, 0, 1, "soft", points=1)
    with pytest.raises(UserError, match="no trained mask 9"):
        interpolate(src, 0, 9)


# ---- a stored run -------------------------------------------------------------------------------------------
def test_run_level_interpolation_reproduces_the_recorded_figures(tmp_path, digits):
    import masklab

    run = masklab.generate(TINY.replace(masks=3, keep_scores=True), runs_dir=tmp_path)
    table = run.table.set_index("mask_id")
    for path in ("score", "hamming"):
        curve = interpolate(run, 2, 0, path, points=4, order="score" if path == "hamming" else "random")
        assert (curve.loss.iloc[0], curve.acc.iloc[0]) == (table.test_loss[2], table.test_acc[2])
        assert (curve.loss.iloc[-1], curve.acc.iloc[-1]) == (table.test_loss[0], table.test_acc[0])
    matrix = barrier_matrix(run, pairs=2, path="hamming", points=3)
    assert len(matrix) == 2 and (matrix.mask_a < matrix.mask_b).all()
