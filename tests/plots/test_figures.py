"""Every figure function draws a titled, labelled figure from DataFrames, without overlapping or clipped text,
and saves PNG + SVG."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from scipy import stats

from masklab import plots as P
from masklab.analysis import clustering as C
from masklab.analysis.paths.barriers import barrier
from masklab.analysis.summary import layer_summary
from masklab.errors import UserError

RNG = np.random.default_rng(0)
N = 12


def square_distances() -> pd.DataFrame:
    centres = RNG.random((3, 400)) < 0.5
    bits = centres[np.arange(N) % 3] ^ (RNG.random((N, 400)) < 0.05)
    d = (bits[:, None, :] != bits[None, :, :]).mean(axis=2)
    ids = np.arange(N) + 5
    return pd.DataFrame(d, index=pd.Index(ids, name="mask_a"), columns=pd.Index(ids, name="mask_b"))


def per_layer_table(n_layers: int) -> pd.DataFrame:
    rows = []
    for i in range(n_layers):
        name = "all" if i == 0 else f"features.{i}.conv.weight"
        for metric, base in (("matching", 0.5), ("jaccard", 1 / 3)):
            mean = base + 0.05 * (i == 1) + 0.01 * RNG.random()
            rows.append({"layer": name, "metric": metric, "mean": mean, "min": mean - 0.01, "max": mean + 0.01,
                         "baseline": base, "chance_sd": 0.004})
    return pd.DataFrame(rows)


def embedding_points() -> pd.DataFrame:
    n_random = 8
    points = pd.DataFrame({"mask_id": list(range(N)) + list(range(-1, -n_random - 1, -1)),
                           "x": RNG.normal(size=N + n_random), "y": RNG.normal(size=N + n_random), "method": "umap",
                           "source": ["mask"] * N + ["random"] * n_random})
    table = pd.DataFrame({"mask_id": range(N), "test_acc": RNG.uniform(0.8, 0.9, N)})
    labels = pd.DataFrame({"mask_id": range(N), "cluster_average": np.arange(N) % 3,
                           "cluster_hdbscan": np.r_[-1, np.arange(N - 1) % 2]})
    return points.merge(table, on="mask_id", how="left").merge(labels, on="mask_id", how="left")


def consensus_table() -> pd.DataFrame:
    """The format of masklab.analysis.consensus.consensus_histogram."""
    rows = []
    for layer, n_bits, k in (("all", 5300, 0.28), ("conv1", 300, 0.5), ("fc1", 5000, 0.2)):
        expected = stats.binom.pmf(np.arange(N + 1), N, k) * n_bits
        observed = RNG.poisson(expected)
        rows += [{"layer": layer, "n_masks_keeping": m, "n_weights": int(observed[m]), "expected": expected[m]}
                 for m in range(N + 1)]
    return pd.DataFrame(rows)


def curve_table() -> pd.DataFrame:
    t = np.linspace(0, 1, 30)
    parts = []
    for path, height, orders in (("soft", 0.8, 1), ("hamming", 0.3, 2)):
        for order in range(orders):
            acc = 0.9 - 0.01 * t - 0.3 * height * np.sin(np.pi * t) ** 2
            parts.append(pd.DataFrame({"mask_a": 0, "mask_b": 1, "path": path, "order": order,
                                       "point": np.arange(30), "t": t, "acc": acc, "error": 1 - acc,
                                       "loss": 0.3 + 0.1 * t + height * np.sin(np.pi * t) ** 2 + 0.01 * order}))
    return pd.concat(parts, ignore_index=True)


def barrier_table() -> pd.DataFrame:
    hamming = RNG.integers(900, 1100, 16)
    return pd.DataFrame({"mask_a": range(16), "mask_b": np.arange(16) + 1, "path": ["soft"] * 8 + ["hamming"] * 8,
                         "hamming": hamming, "hamming_norm": hamming / 2000,
                         "loss_barrier": hamming / 1000 + RNG.normal(0, 0.05, 16),
                         "error_barrier": hamming / 5000 + RNG.normal(0, 0.01, 16)})


def trajectory_table() -> pd.DataFrame:
    return pd.DataFrame([{"mask_id": m, "epoch": e, "distance_to_final": 0.5 * np.exp(-e / 5) + 0.01 * RNG.random(),
                          "distance_to_others_mean": 0.5 - 0.001 * e} for m in range(5) for e in range(0, 21, 4)])


def sweep_table() -> pd.DataFrame:
    return pd.DataFrame({"method": ["edge-popup"] * 4 + ["biprop"] * 4, "sparsity": [0.5, 0.7, 0.8, 0.9] * 2,
                         "acc_mean": [0.88, 0.87, 0.85, 0.80, 0.89, 0.88, 0.87, 0.84], "acc_std": 0.005,
                         "published": [88.5, np.nan, 85.0, 79.0] + [np.nan] * 4})


def make(name: str):
    if name == "heatmap":
        square = square_distances()
        return P.distance_heatmap(square, C.linkage_matrix(square), baseline=0.5)
    if name == "heatmap_order":
        square = square_distances()
        return P.distance_heatmap(square, order=C.dendrogram_order(square)[::-1], metric="hamming_norm")
    if name == "per_layer_20":
        return P.per_layer_similarity(per_layer_table(20))
    if name == "per_layer_std":
        return P.per_layer_similarity(per_layer_table(3).drop(columns=["min", "max"]).assign(std=0.01))
    if name == "histogram":
        observed = pd.DataFrame({"layer": "all", "metric": "hamming_norm", "value": RNG.normal(0.49, 0.01, 66)})
        random = pd.DataFrame({"layer": "all", "metric": "hamming_norm", "value": RNG.normal(0.5, 0.01, 66)})
        return P.distance_histogram(observed, random, expected=0.5)
    if name == "embedding":
        return P.embedding_scatter(embedding_points(), color_by=("test_acc", "cluster_average", "cluster_hdbscan"))
    if name == "consensus":
        return P.consensus_bars(consensus_table(), layers=["conv1", "fc1"])
    if name == "interpolation":
        return P.interpolation_curves(curve_table())
    if name == "interpolation_one":
        return P.interpolation_curves(curve_table().query("path == 'soft'"))
    if name == "barrier":
        return P.barrier_vs_distance(barrier_table())
    if name == "trajectories":
        return P.trajectory_curves(trajectory_table(), baseline=0.5)
    if name == "sweep":
        return P.accuracy_vs_sparsity(sweep_table())
    if name == "sweep_dense":  # and a long title, which must wrap rather than leave the figure
        return P.accuracy_vs_sparsity(make_dense_sweep(), title="lenet-300-100 on Fashion-MNIST, 10 epochs: final "
                                      "test accuracy (mean, band ±1 std over the masks of each cell)")
    if name == "similarity_groups":
        return P.similarity_by_group(grouped_layer_table())
    if name == "barrier_groups":
        return P.barrier_vs_distance(barrier_table().assign(method=["edge-popup", "biprop"] * 8), group="method")
    if name.startswith("landscape_"):
        return P.landscape_vs(landscape_table(), family=name.split("_", 1)[1], title="two models on digits")
    if name == "disagreement":
        return P.disagreement_vs_distance(disagreement_pairs(16))
    if name == "ensemble":
        return P.ensemble_accuracy_vs_k(ensemble_table())
    if name == "cka":
        return P.cka_by_layer(pd.DataFrame({"layer": ["fc1", "fc2", "logits"], "mean": [0.9, 0.8, 0.7],
                                            "min": [0.85, 0.7, 0.6], "max": [0.95, 0.9, 0.8], "n_pairs": 120,
                                            "random_mean": [0.78, 0.55, 0.25], "random_sd": [0.02, 0.03, 0.05]}))
    raise KeyError(name)


FIGURES = ["heatmap", "heatmap_order", "per_layer_20", "per_layer_std", "histogram", "embedding", "consensus",
           "interpolation", "interpolation_one", "barrier", "trajectories", "sweep", "sweep_dense",
           "similarity_groups", "barrier_groups", "landscape_overlap", "landscape_cka", "landscape_ensemble",
           "disagreement", "ensemble", "cka"]


def landscape_table() -> pd.DataFrame:
    """Landscape rows (masklab.analysis.landscape's columns) of 2 models x 2 methods x 3 sparsities."""
    rows = []
    for model in ("mlp", "lenet-300-100"):
        for method in ("edge-popup", "biprop+iwr"):
            for sparsity in (0.5, 0.8, 0.9):
                k = 1 - sparsity
                base = {"run": f"{model}-{method}-{sparsity}", "model": model, "width": 1.0, "method": method,
                        "sparsity": sparsity, "epochs": 10}
                for metric, chance, unit in (("matching", k ** 2 + (1 - k) ** 2, "fraction"),
                                             ("jaccard", k / (2 - k), "index")):
                    rows.append({**base, "family": "overlap", "metric": metric, "layer": "all", "value": chance + 0.01,
                                 "sd": 0.002, "chance": chance, "chance_sd": 0.001, "unit": unit})
                for layer, value in (("fc1", 0.9), ("logits", 0.7)):
                    rows.append({**base, "family": "cka", "metric": "cka", "layer": layer,
                                 "value": value - sparsity / 5, "sd": 0.02, "chance": 0.5, "chance_sd": 0.03,
                                 "unit": ""})
                for metric in ("ensemble_softmax_gain_over_mean", "ensemble_softmax_gain_over_best"):
                    rows.append({**base, "family": "ensemble", "metric": metric, "layer": "all", "value": 1.5,
                                 "sd": np.nan, "chance": np.nan, "chance_sd": np.nan, "unit": "points"})
    return pd.DataFrame(rows)


def disagreement_pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame({"hamming_norm": RNG.normal(0.48, 0.003, n), "disagreement": RNG.normal(0.08, 0.01, n),
                         "reference": np.full(n, 0.89), "reference_given_class": np.full(n, 0.2)})


def ensemble_table() -> pd.DataFrame:
    k = np.arange(1, 17)
    parts = [pd.DataFrame({"k": k, "vote": vote, "acc_mean": 0.87 + shift * (1 - 1 / k), "acc_min": 0.86,
                           "acc_max": 0.9, "member_mean": 0.87, "member_best": 0.872 + 0.001 * np.log(k),
                           "n_orders": 10}) for vote, shift in (("softmax", 0.02), ("majority", 0.015))]
    return pd.concat(parts, ignore_index=True)


def test_landscape_figure_draws_chance_per_point_with_its_band_and_the_excess():
    table = landscape_table()
    fig = P.landscape_vs(table, family="overlap")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 * 2  # matching, matching - chance, jaccard, jaccard - chance; one column per model
    assert [ax.get_title() for ax in axes[:2]] == ["mlp", "lenet-300-100"]
    first = axes[0]
    chance_lines = [line for line in first.get_lines() if line.get_linestyle() == "--"]
    expected = 100 * np.array([0.5, 0.68, 0.82])  # k^2 + (1-k)^2 at 50, 80, 90% sparsity: one point each
    assert any(np.allclose(line.get_ydata(), expected) for line in chance_lines)
    assert first.collections, "no chance band"
    excess = axes[2]
    assert "− chance" in excess.get_ylabel() or "− chance" in axes[2].get_ylabel()
    ensemble = P.landscape_vs(table, family="ensemble")
    assert len([ax for ax in ensemble.axes if ax.get_visible()]) == 2 * 2  # its gains only, no excess rows
    with pytest.raises(UserError, match="no rows of family 'structure'"):
        P.landscape_vs(table, family="structure")


@pytest.mark.parametrize("family", ["overlap", "ensemble"])
def test_landscape_figure_legend_stays_clear_of_the_title(family):
    """The legend beside the panels overlapped the right end of the two-line title (it was placed at the top):
    one model, one column of panels, as the Fashion-MNIST study draws them."""
    table = landscape_table()
    fig = P.landscape_vs(table[table["model"] == "mlp"], family=family,
                         title="lenet-300-100 on fashion-mnist (fmnist-landscape-5b4abca0)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, title = fig.legends[0].get_window_extent(renderer), fig._suptitle.get_window_extent(renderer)
    assert not legend.overlaps(title), (legend, title)


def grouped_layer_table() -> pd.DataFrame:
    """layer_summary rows of four runs: two methods at two sparsities, with their chance levels."""
    parts = []
    for method in ("edge-popup", "biprop+iwr"):
        for sparsity in (0.5, 0.9):
            keep = 1 - sparsity
            table = per_layer_table(4)
            base = np.where(table["metric"] == "matching", keep ** 2 + (1 - keep) ** 2, keep / (2 - keep))
            parts.append(table.assign(baseline=base, mean=base + 0.02, min=base, max=base + 0.04, method=method,
                                      sparsity=sparsity))
    return pd.concat(parts, ignore_index=True)


def is_aux(ax) -> bool:
    """Colour bars and the dendrogram carry no title or axis labels of their own."""
    return ax.get_label() in ("<colorbar>", "dendrogram") or not ax.get_visible()


def drawn_texts(fig) -> list[Text]:
    """Every piece of text the figure shows: titles, axis labels, tick labels in view, legends, annotations."""
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for legend in fig.legends:
        texts += legend.get_texts()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            pad = 1e-9 * max(abs(lo), abs(hi), 1.0)
            for label in axis.get_ticklabels():
                position = label.get_position()[0 if axis is ax.xaxis else 1]
                if lo - pad <= position <= hi + pad:
                    texts.append(label)
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def text_rectangle(text: Text, renderer) -> np.ndarray:
    """The 4 corners (pixels) of the rotated box a text occupies: its upright size, rotated about the centre
    of its axis-aligned extent (a rotated rectangle is centred in its bounding box)."""
    box = text.get_window_extent(renderer)
    angle = text.get_rotation()
    if angle % 180 == 0:
        return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    text.set_rotation(0)
    upright = text.get_window_extent(renderer)
    text.set_rotation(angle)
    half = np.array([upright.width, upright.height]) / 2
    rad = np.deg2rad(angle)
    turn = np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    return corners @ turn.T + [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]


def rectangles_overlap(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> bool:
    """Separating-axis test for two convex quadrilaterals; touching within `tolerance` pixels is no overlap."""
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            normal = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1.0)
            pa, pb = a @ normal, b @ normal
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tolerance:
                return False
    return True


def assert_readable(fig) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = drawn_texts(fig)
    frame = fig.bbox
    for t in texts:
        box = t.get_window_extent(renderer)
        assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 \
            and box.y1 <= frame.y1 + 1, f"text {t.get_text()!r} is cut off by the figure edge"
    shapes = [(t.get_text(), text_rectangle(t, renderer)) for t in texts]
    for i, (text_a, a) in enumerate(shapes):
        for text_b, b in shapes[i + 1:]:
            assert not rectangles_overlap(a, b), f"texts overlap: {text_a!r} and {text_b!r}"


@pytest.mark.parametrize("name", FIGURES)
def test_figure_is_labelled_readable_and_saved(name, tmp_path):
    fig = make(name)
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = [ax for ax in fig.axes if not is_aux(ax)]
    assert axes, "no axes drawn"
    for ax in axes:
        assert ax.get_title() or fig.get_suptitle(), "untitled panel"
        assert ax.get_ylabel(), f"panel {ax.get_title()!r} has no y label"
        siblings = ax.get_shared_x_axes().get_siblings(ax)
        assert any(other.get_xlabel() for other in siblings), f"panel {ax.get_title()!r} has no x label"
        assert ax.has_data() or ax.images, f"panel {ax.get_title()!r} is empty"
    assert any(ax.get_xlabel() for ax in axes)
    assert_readable(fig)
    written = P.save_figure(fig, tmp_path / "sub" / name)
    assert [p.name for p in written] == [f"{name}.png", f"{name}.svg"]
    assert (tmp_path / "sub" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "sub" / f"{name}.svg").read_text()[:2000]


def test_grouped_figures_draw_every_group_and_the_chance_level():
    fig = P.similarity_by_group(grouped_layer_table())
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 and [ax.get_title() for ax in axes[:2]] == ["sparsity 0.5", "sparsity 0.9"]
    labels = axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == ["biprop+iwr", "edge-popup", "random masks (expected)"]
    chance = [c for c in axes[1].collections if c.get_label() == "random masks (expected)"][0].get_segments()
    assert np.allclose([s[0][1] for s in chance], 100 * (0.1 ** 2 + 0.9 ** 2))  # matching at 90% sparsity, in %
    dense = P.accuracy_vs_sparsity(make_dense_sweep())
    legend = dense.axes[0].get_legend().get_texts()
    assert any(t.get_text().startswith("dense, trained weights (90.0%)") for t in legend)
    by_method = P.barrier_vs_distance(barrier_table().assign(method=["a", "b"] * 8), group="method")
    assert [t.get_text().split(" (")[0] for t in by_method.legends[0].get_texts()][1:] == ["a", "b"]


def make_dense_sweep() -> pd.DataFrame:
    dense = pd.DataFrame({"method": ["dense"], "sparsity": [0.0], "acc_mean": [0.9], "acc_std": [0.002]})
    return pd.concat([sweep_table(), dense], ignore_index=True)


def test_random_baselines_are_drawn():
    fig = P.per_layer_similarity(per_layer_table(4))
    top = fig.axes[0]
    assert any("random" in t.get_text() for legend in fig.legends for t in legend.get_texts())
    segments = [c for c in top.collections if c.get_label() == "random masks (expected)"][0].get_segments()
    assert len(segments) == 4 and np.allclose([s[0][1] for s in segments], 50.0)  # matching shown in %
    hist = P.distance_histogram(RNG.normal(0.49, 0.01, 40), RNG.normal(0.5, 0.01, 40), expected=0.5,
                                metric="hamming_norm")
    labels = hist.axes[0].get_legend_handles_labels()[1]
    assert any(label.startswith("random-mask pairs") for label in labels)
    assert any(label.startswith("random expectation") for label in labels)
    cons = P.consensus_bars(consensus_table())
    assert cons.axes[0].get_yscale() == "log"
    assert any("Binomial(12, k)" in t.get_text() for t in cons.legends[0].get_texts())
    assert [ax.get_title() for ax in cons.axes if ax.get_visible()] == ["whole network", "conv1", "fc1"]


def test_layer_order_is_kept_and_layer_summary_builds_the_input():
    long = pd.DataFrame({"mask_a": [0, 0, 1] * 4, "mask_b": [1, 2, 2] * 4,
                         "layer": ["all"] * 3 + ["zeta"] * 3 + ["all"] * 3 + ["zeta"] * 3,
                         "metric": ["matching"] * 6 + ["jaccard"] * 6, "value": np.linspace(0.3, 0.6, 12)})
    base = pd.DataFrame({"layer": ["all", "zeta"], "matching": [0.5, 0.5], "jaccard": [1 / 3, 1 / 3]})
    summary = layer_summary(long, base)
    assert list(summary.columns) == ["layer", "metric", "mean", "std", "min", "max", "n_pairs", "baseline"]
    assert summary["layer"].tolist() == ["all", "zeta", "all", "zeta"]
    assert summary["n_pairs"].tolist() == [3] * 4
    assert summary.query("metric == 'jaccard'")["baseline"].tolist() == pytest.approx([1 / 3, 1 / 3])
    layers = [f"layer{i}" for i in (3, 1, 2, 10)]
    table = pd.DataFrame({"layer": layers * 2, "metric": ["matching"] * 4 + ["jaccard"] * 4, "mean": 0.5})
    fig = P.per_layer_similarity(table)
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == layers


def test_interpolation_figure_marks_the_analysis_barriers():
    """The figure shows the barriers the analysis computes (`masklab.analysis.paths.barriers.barrier`, the one
    definition), the error barrier in percentage points."""
    curve = curve_table().query("path == 'soft'")
    b = barrier(curve).iloc[0]
    fig = P.interpolation_curves(curve)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert f"barrier {b['loss_barrier']:.3g} nats" in texts
    assert f"barrier {100 * b['error_barrier']:.3g} points" in texts
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert f"error barrier {100 * b['error_barrier']:.3g} points" in legend
    # acc given in % instead of as a fraction: the same barriers
    percent = P.interpolation_curves(curve.drop(columns="error").assign(acc=100 * curve["acc"]))
    assert texts == [t.get_text() for ax in percent.axes for t in ax.texts]
    # two orders of one path: the legend's barrier is the mean of the analysis' barriers of both
    two = curve_table().query("path == 'hamming'")
    mean = barrier(two)["loss_barrier"].mean()
    legend = " ".join(t.get_text() for t in P.interpolation_curves(two).legends[0].get_texts())
    assert f"loss barrier {mean:.3g}" in legend and "(mean of 2 orders)" in legend


def test_accuracy_colourbar_and_units():
    fig = P.embedding_scatter(embedding_points())
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bars and bars[0].get_ylabel() == "test accuracy (%)"
    low, high = bars[0].get_ylim()
    assert 75 < low < high < 95
    sweep = P.accuracy_vs_sparsity(sweep_table())
    ax = sweep.axes[0]
    assert ax.get_xlabel() == "sparsity (% of weights removed)"
    published = [line for line in ax.get_lines() if "published" in line.get_label()]
    assert published and published[0].get_linestyle() == "--" and published[0].get_markerfacecolor() == "none"
    assert np.nanmax(published[0].get_ydata()) == pytest.approx(88.5)


def test_missing_columns_are_named():
    with pytest.raises(UserError, match="acc_mean"):
        P.accuracy_vs_sparsity(pd.DataFrame({"method": ["a"], "sparsity": [0.5]}))
    with pytest.raises(UserError, match="distance_to_final"):
        P.trajectory_curves(pd.DataFrame({"mask_id": [0], "epoch": [1]}))


def test_figures_take_the_analysis_tables_as_they_come():
    """The plots read the DataFrames of masklab.analysis directly (formats shared with other modules)."""
    from masklab.analysis import distances, random_baseline
    from masklab.analysis.consensus import consensus_histogram as keep_count_histogram
    from masklab.analysis.random_sets import random_baseline_samples
    from masklab.store.bits import MaskSet

    rng = np.random.default_rng(5)
    masks = MaskSet.from_bool(np.column_stack([rng.random((8, 64)) < 0.5, rng.random((8, 700)) < 0.25]),
                              layer_sizes=[64, 700], layer_names=["conv1", "fc"])
    baseline = random_baseline(masks)
    long = distances(masks, metric=["matching", "jaccard"], per_layer=True)
    summary = layer_summary(long, baseline)
    assert summary["baseline"].notna().all()
    fc = summary.query("layer == 'fc' and metric == 'matching'")["baseline"].iloc[0]
    assert fc == pytest.approx(baseline.set_index("layer").loc["fc", "matching"])
    k = masks.popcounts(per_layer=True)[:, 1].mean() / 700
    assert fc == pytest.approx(k ** 2 + (1 - k) ** 2, abs=1e-3)
    figures = [P.per_layer_similarity(summary)]
    samples = random_baseline_samples(masks, random_state=0)
    expected = float(baseline.set_index("layer").loc["all", "hamming_norm"])
    figures.append(P.distance_histogram(distances(masks, metric="hamming_norm"), samples, expected,
                                        metric="hamming_norm"))
    figures.append(P.consensus_bars(keep_count_histogram(masks)))
    square = distances(masks, metric="hamming_norm", form="square")
    figures.append(P.distance_heatmap(square, C.linkage_matrix(square), baseline=expected))
    for fig in figures:
        assert_readable(fig)
    assert len([ax for ax in figures[2].axes if ax.get_visible()]) == 3  # all, conv1, fc


def test_barrier_figure_shows_a_correlation_only_from_ten_pairs():
    few = P.barrier_vs_distance(barrier_table().iloc[:3])
    legend = " ".join(t.get_text() for t in few.legends[0].get_texts())
    assert "ρ" not in legend and "n = 3" in legend
    assert "too few for a correlation" in few._suptitle.get_text()
    many = P.barrier_vs_distance(barrier_table().assign(path="soft"))  # 16 pairs in one group
    legend = " ".join(t.get_text() for t in many.legends[0].get_texts())
    assert "n = 16; Spearman ρ: loss " in legend and "too few" not in many._suptitle.get_text()
    split = P.barrier_vs_distance(barrier_table())  # two paths of 8 pairs each: no correlation for either
    assert "ρ" not in " ".join(t.get_text() for t in split.legends[0].get_texts())


# ---- legends beside the data, chance where it shows, sizes a page can hold (issue 16) -------------------------
def _data_boxes(ax, renderer):
    """Pixel boxes of what an axes draws as data: bars, lines with points, scatter collections."""
    boxes = [p.get_window_extent(renderer) for p in ax.patches]
    boxes += [line.get_window_extent(renderer) for line in ax.get_lines() if len(line.get_xdata()) > 1]
    boxes += [c.get_window_extent(renderer) for c in ax.collections]
    return [b for b in boxes if b.width > 0 and b.height > 0]


@pytest.mark.parametrize("name", ["histogram", "barrier", "barrier_groups", "consensus", "interpolation"])
def test_legends_sit_outside_the_data(name):
    fig = make(name)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes), "a legend inside a panel"
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer)), f"the legend covers {ax.get_title()!r}"


def test_heatmap_zooms_the_dendrogram_and_shows_chance_inside_the_colour_bar():
    rng = np.random.default_rng(3)
    d = 0.47 + 0.02 * rng.random((N, N))  # near-equidistant masks, all below chance (0.5)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    square = pd.DataFrame(d, index=range(N), columns=range(N))
    link = C.linkage_matrix(square, "average")
    fig = P.distance_heatmap(square, link, baseline=0.5)
    tree = next(ax for ax in fig.axes if ax.get_label() == "dendrogram")
    low, high = tree.get_ylim()
    assert 0.4 < low < link[:, 2].min() and 0.5 < high < 0.55, "the merge axis is not zoomed to the data"
    assert [line.get_ydata()[0] for line in tree.get_lines()] == [0.5]  # chance on the tree
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    low, high = bar.get_ylim()
    chance = [line for line in bar.get_lines() if line.get_label() == "chance"]
    assert chance and low + 0.05 * (high - low) < chance[0].get_ydata()[0] < high - 0.05 * (high - low)
    assert_readable(fig)


def test_consensus_figure_fits_the_page():
    """At most two panels a row, so the PNG is about the page's 1100 px wide and its text stays readable."""
    rows = []
    for layer in ("all", "fc1", "fc2", "fc3"):
        expected = stats.binom.pmf(np.arange(17), 16, 0.5) * 5000
        rows += [{"layer": layer, "n_masks_keeping": m, "n_weights": int(expected[m]), "expected": expected[m]}
                 for m in range(17)]
    fig = P.consensus_bars(pd.DataFrame(rows))
    width, height = fig.get_size_inches() * P._style.DPI
    assert width <= 1150 and 0.5 < height / width < 1.2, (width, height)
    assert [ax.get_yaxis().get_minor_locator().__class__.__name__ for ax in fig.axes][:1] == ["NullLocator"]
    assert_readable(fig)


def test_heatmap_colours_diverge_around_chance_and_label_every_kth_mask_at_64():
    """Above chance one hue, below it the other, white at chance; at 64+ masks every k-th tick is labelled
    (at most MAX_TICK_LABELS) and the axis says which and in which order."""
    rng = np.random.default_rng(5)
    n = 64
    d = 0.40 + 0.2 * rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    square = pd.DataFrame(d, index=range(100, 100 + n), columns=range(100, 100 + n))
    link = C.linkage_matrix(square, "average")
    fig = P.distance_heatmap(square, link, baseline=0.5)
    ax = next(a for a in fig.axes if a.images)
    image = ax.images[0]
    rgba = lambda v: np.asarray(image.cmap(image.norm(v)))  # noqa: E731
    assert np.allclose(rgba(0.5)[:3], rgba(0.5)[:3].mean(), atol=0.05) and rgba(0.5)[:3].min() > 0.9  # white
    above, below = rgba(0.58), rgba(0.42)
    assert above[0] > above[2] + 0.3 and below[2] > below[0] + 0.3  # red above chance, blue below
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == 32 and all(labels)  # every 2nd of 64
    from scipy.cluster import hierarchy

    order = hierarchy.leaves_list(link)
    assert labels == [str(100 + i) for i in order[::2]]
    assert ax.get_xlabel() == "mask id, every 2nd of 64 labelled (dendrogram order)"
    assert P.landscape.tick_step(40) == 1 and P.landscape.tick_step(41) == 2 and P.landscape.tick_step(10_000) == 250
    plain = P.distance_heatmap(square.iloc[:8, :8])  # no chance given: a sequential scale, every id labelled
    assert len(next(a for a in plain.axes if a.images).get_xticklabels()) == 8
    assert_readable(fig)


def test_per_layer_similarity_draws_chance_with_its_band():
    """Each layer's chance level with a band of +-1 sd of one random pair (chance_sd), in the panel's unit."""
    table = per_layer_table(3)
    fig = P.per_layer_similarity(table)
    matching = fig.axes[0]
    bands = list(matching.patches)
    assert len(bands) == 3
    for patch, base in zip(bands, table[table["metric"] == "matching"]["baseline"]):
        assert patch.get_y() == pytest.approx(100 * (base - 0.004)) and patch.get_height() == pytest.approx(0.8)
    names = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "random masks: +-1 sd of one pair" in names
    assert not P.per_layer_similarity(table.drop(columns=["chance_sd"])).axes[0].patches  # no sd: no band


@pytest.mark.parametrize("n_pairs", [3, 10])
def test_interpolation_figure_draws_every_pair_computed_and_gives_the_barriers_units(n_pairs):
    """analyze computed 3 pairs and drew 1: every pair's curve is drawn (the legend names up to
    MAX_NAMED_CURVES and sums up the rest); the loss barrier is in nats, the error barrier in points."""
    t = np.linspace(0, 1, 7)
    curves = pd.concat([pd.DataFrame({"mask_a": a, "mask_b": a + 1, "path": "soft", "point": np.arange(7), "t": t,
                                      "loss": 0.3 + (0.1 + 0.01 * a) * np.sin(np.pi * t), "acc": 0.9 - 0.1 * t})
                        for a in range(n_pairs)], ignore_index=True)
    fig = P.interpolation_curves(curves)
    ax_loss = fig.axes[0]
    solid = [line for line in ax_loss.get_lines() if line.get_linestyle() == "-"]
    assert len(solid) == n_pairs  # one curve per pair
    names = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    named = [n for n in names if n.startswith("masks ")]
    assert len(named) == min(n_pairs, P.paths.MAX_NAMED_CURVES)
    assert all(" nats, error barrier " in n and n.endswith(" points") for n in named)
    if n_pairs > P.paths.MAX_NAMED_CURVES:
        assert any(n.startswith(f"... {n_pairs - P.paths.MAX_NAMED_CURVES} more drawn; all {n_pairs}: mean loss "
                                "barrier ") for n in names)
    assert_readable(fig)
