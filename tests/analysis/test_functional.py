"""Functional similarity against its definitions (masklab.analysis.functional): disagreement, its references,
ensembles and linear CKA on small arrays where the answer is known, then on real (digits) masks."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

import masklab
from masklab.analysis import functional as fn
from masklab.data import load_dataset
from masklab.errors import UserError


# ---- disagreement --------------------------------------------------------------------------------------------
def _brute_disagreement(p: np.ndarray) -> np.ndarray:
    return np.array([[np.mean(a != b) for b in p] for a in p])


@pytest.mark.parametrize("n_test", [1, 63, 64, 65, 300])
def test_disagreement_is_the_fraction_of_samples_predicted_differently(n_test):
    rng = np.random.default_rng(n_test)
    p = rng.integers(0, 5, size=(7, n_test))
    p[3] = p[1]  # a mask and its copy agree everywhere
    d = fn.disagreement(p, 5, ids=range(10, 17))
    assert list(d.index) == list(range(10, 17)) and list(d.columns) == list(range(10, 17))
    np.testing.assert_allclose(d.to_numpy(), _brute_disagreement(p), atol=1e-15)
    assert (np.diag(d.to_numpy()) == 0).all() and d.loc[11, 13] == 0.0 and d.loc[13, 11] == 0.0


def test_disagreement_with_a_constant_predictor_is_one_minus_its_share():
    rng = np.random.default_rng(1)
    p = rng.integers(0, 4, size=(1, 1000))
    both = np.vstack([p, np.full((1, 1000), 2)])
    d = fn.disagreement(both, 4).to_numpy()
    assert d[0, 1] == 1.0 - np.mean(p[0] == 2)
    # the reference of two input-independent predictors with these class rates: 1 - p_a(2) exactly
    ref = fn.disagreement_reference(both, 4).to_numpy()
    assert ref[0, 1] == pytest.approx(1.0 - np.mean(p[0] == 2), abs=1e-15)
    assert ref[1, 1] == 0.0  # a constant predictor never disagrees with an independent copy of itself


def test_references_against_their_formulas():
    rng = np.random.default_rng(2)
    C, n = 4, 500
    labels = rng.integers(0, C, n)
    p = np.where(rng.random((5, n)) < 0.7, labels, rng.integers(0, C, (5, n)))
    marginal = fn.disagreement_reference(p, C).to_numpy()
    given = fn.disagreement_reference(p, C, labels).to_numpy()
    for a, b in itertools.product(range(5), repeat=2):
        pa, pb = (np.bincount(p[x], minlength=C) / n for x in (a, b))
        assert marginal[a, b] == pytest.approx(1 - pa @ pb, abs=1e-14)
        total = 0.0
        for y in range(C):
            w = labels == y
            qa, qb = (np.bincount(p[x][w], minlength=C) / w.sum() for x in (a, b))
            total += w.mean() * (qa @ qb)
        assert given[a, b] == pytest.approx(1 - total, abs=1e-14)
    # a perfect classifier against itself: errors independent given the class never disagree
    assert fn.disagreement_reference(labels[None, :], C, labels).to_numpy()[0, 0] == pytest.approx(0.0, abs=1e-15)


def test_disagreement_summary_gives_a_correlation_only_from_ten_pairs():
    rng = np.random.default_rng(3)
    pairs = lambda k: __import__("pandas").DataFrame({  # noqa: E731
        "disagreement": rng.random(k), "reference": np.full(k, 0.9), "reference_given_class": np.full(k, 0.2),
        "hamming_norm": rng.random(k)})
    few, many = fn.disagreement_summary(pairs(6), 100), fn.disagreement_summary(pairs(10), 100)
    assert np.isnan(few["rho_hamming"].iloc[0]) and few["rho_hamming_n"].iloc[0] == 6
    assert np.isfinite(many["rho_hamming"].iloc[0]) and many["rho_hamming_n"].iloc[0] == 10
    assert few["reference_sd"].iloc[0] == pytest.approx(np.sqrt(0.9 * 0.1 / 100))


# ---- ensembles -----------------------------------------------------------------------------------------------
def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_an_ensemble_of_one_mask_has_that_masks_accuracy():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 400)
    probs = _softmax(rng.normal(size=(5, 400, 6)))
    for m in range(5):
        accuracy = np.mean(probs[m].argmax(1) == labels)
        assert fn.ensemble_accuracy(probs[m:m + 1], labels, "softmax") == accuracy
        assert fn.ensemble_accuracy(probs[m:m + 1].argmax(2), labels, "majority") == accuracy
    curve = fn.ensemble_curve(probs, labels, orders=7, random_state=3)
    first = fn.ensemble_orders(5, 7, 3)[:, 0]
    singles = np.array([np.mean(probs[m].argmax(1) == labels) for m in range(5)])
    for vote in ("softmax", "majority"):
        one = curve[(curve["vote"] == vote) & (curve["k"] == 1)].iloc[0]
        assert one["acc_mean"] == pytest.approx(singles[first].mean(), abs=1e-15)
        assert one["gain_over_mean"] == 0.0 and one["gain_over_best"] == 0.0
        every = curve[(curve["vote"] == vote) & (curve["k"] == 5)].iloc[0]  # all masks: the same set in every order
        assert every["acc_sd"] == 0.0 and every["member_mean"] == pytest.approx(singles.mean())
        assert every["member_best"] == pytest.approx(singles.max(), abs=1e-15)
    assert list(curve["k"]) == [1, 2, 3, 4, 5] * 2 and (curve["n_orders"] == 7).all() and (curve["seed"] == 3).all()


def test_ensemble_of_all_masks_against_a_direct_computation_and_ties_count_half():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 200)
    probs = _softmax(rng.normal(size=(4, 200, 3)))
    curve = fn.ensemble_curve(probs, labels, orders=3)
    soft = curve[(curve["vote"] == "softmax") & (curve["k"] == 4)]["acc_mean"].iloc[0]
    assert soft == np.mean(probs.mean(0).argmax(1) == labels)
    # majority of two that disagree: a tie, half credit when one of them is right
    y = np.array([0, 0, 1])
    two = np.array([[0, 1, 2], [1, 0, 2]])
    assert fn.ensemble_accuracy(two, y, "majority") == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    with pytest.raises(UserError, match="vote 'mean' is invalid"):
        fn.ensemble_accuracy(two, y, "mean")


# ---- linear CKA ----------------------------------------------------------------------------------------------
def _hsic_cka(x, y):
    """The definition: HSIC with the centring matrix H, tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, m = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))


def test_cka_of_a_representation_with_itself_is_one_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 7))
    q = np.linalg.qr(rng.normal(size=(7, 7)))[0]
    assert fn.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert fn.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    y = rng.normal(size=(40, 3)) + x[:, :3]
    base = fn.linear_cka(x, y)
    assert 0 < base < 1
    assert fn.linear_cka(5.0 * x @ q, y) == pytest.approx(base, abs=1e-12)
    assert fn.linear_cka(x, 0.1 * y + 4.0) == pytest.approx(base, abs=1e-12)  # shifts are centred away
    assert fn.linear_cka(x, y) == pytest.approx(_hsic_cka(x, y), abs=1e-12)
    assert np.isnan(fn.linear_cka(x, np.ones((40, 2))))
    with pytest.raises(UserError, match="same samples"):
        fn.linear_cka(x, y[:10])


def test_cka_matrix_from_gram_matrices_equals_the_feature_form():
    rng = np.random.default_rng(7)
    reps = [rng.normal(size=(30, d)) for d in (4, 4, 9)]
    reps[1] = reps[0] @ np.linalg.qr(rng.normal(size=(4, 4)))[0] * 2.0 + rng.normal(size=(30, 4)) * 0.3
    grams = np.stack([fn.centred_gram(r) for r in reps])
    matrix = fn.cka_matrix(grams)
    for a, b in itertools.product(range(3), repeat=2):
        assert matrix[a, b] == pytest.approx(fn.linear_cka(reps[a], reps[b]), abs=1e-12)
        assert matrix[a, b] == pytest.approx(_hsic_cka(reps[a], reps[b]), abs=1e-12)
    assert np.diag(matrix) == pytest.approx(1.0, abs=1e-12)


# ---- on real masks -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return masklab.generate(masks=4, epochs=2, width=0.25, device="cpu", runs_dir=tmp_path_factory.mktemp("runs"),
                            data=load_dataset("digits"))


def test_stored_predictions_are_the_rebuilt_masks_and_give_their_recorded_accuracy(run):
    dataset = run.dataset()
    labels = dataset.y_test.numpy()
    stored = fn.test_predictions(run)
    assert stored.shape == (4, dataset.n_test) and run.predictions(0).dtype == np.int8
    forward = fn.forward_passes(run, run.ids, cka_samples=50)
    assert (forward.predicted == stored).all()
    for row, i in enumerate(run.ids):
        assert np.mean(stored[row] == labels) == run.record(i)["test_acc"]
        assert fn.ensemble_accuracy(forward.probabilities[row:row + 1], labels) == run.record(i)["test_acc"]
    assert set(forward.grams) == {"fc1", "fc2", "logits"} and forward.grams["fc1"].shape == (4, 50, 50)
    assert "predictions" in run.record(0)["extras"] and run.verify()["status"].eq("ok").all()


def test_runs_without_stored_predictions_evaluate_them_once_and_cache_them(run, monkeypatch):
    import importlib

    from masklab.store.run import Run

    rebuild = importlib.import_module("masklab.train.rebuild")
    expected = fn.test_predictions(run)
    monkeypatch.setattr(Run, "has_extra", lambda self, i, kind: kind != "predictions" and
                        kind in self.record(i).get("extras", {}))
    computed = fn.test_predictions(run)
    assert (computed == expected).all() and (run.path / "analysis" / fn.PREDICTIONS_CACHE).is_file()

    def no_evaluation(*args, **kwargs):
        raise AssertionError("cached predictions must not be evaluated again")

    monkeypatch.setattr(rebuild, "run_models", no_evaluation)
    assert (fn.test_predictions(run) == expected).all()


def test_functional_similarity_of_real_masks(run):
    result = fn.functional_similarity(run, cka_samples=100, n_random_masks=3)
    d = result.disagreement
    assert len(d) == 6 and d["disagreement"].between(0, 1).all()
    assert (d["disagreement"] < d["reference"]).all()  # trained masks agree far more than input-blind guessers
    one = result.ensemble[(result.ensemble["k"] == 1) & (result.ensemble["vote"] == "softmax")].iloc[0]
    first = fn.ensemble_orders(4, 10, 0)[:, 0]
    assert one["acc_mean"] == pytest.approx(run.table["test_acc"].to_numpy()[first].mean(), abs=1e-15)
    s = result.cka_summary.set_index("layer")
    assert list(s.index) == ["fc1", "fc2", "logits"] and (s["n_pairs"] == 6).all() and (s["n_random_pairs"] == 3).all()
    assert result.mismatches == 0 and "100 test samples (seed 0)" in result.sample_cka


def test_per_pair_results_are_stored_as_matrices_the_way_distances_are(run, tmp_path):
    """write_pairs: the disagreement counts are exact (the direct count of samples predicted differently, 0 on
    the diagonal), the references and CKA are the tables' values on both sides of the diagonal, CKA's diagonal
    is 1, and `long` gives the tables back."""
    from masklab.analysis.pairs import PairStore

    result = fn.functional_similarity(run, cka_samples=60, n_random_masks=0)
    stores = result.write_pairs(tmp_path / "functional", root=tmp_path)
    store = PairStore.open(tmp_path / "functional" / "disagreement")
    predictions = fn.test_predictions(run)
    direct = np.array([[int(np.sum(a != b)) for b in predictions] for a in predictions])
    counts = store.read("disagreement_count", mmap=False)
    assert counts.dtype == np.uint16 and (counts == direct).all() and store.attrs("disagreement_count") == {
        "n_test": predictions.shape[1]}
    assert store.ids.tolist() == list(run.ids)
    reference = store.square("reference")
    d = result.disagreement
    assert np.allclose(reference.to_numpy()[np.triu_indices(4, 1)], d["reference"], atol=1e-7)
    assert np.allclose(reference.to_numpy(), reference.to_numpy().T)
    cka = stores["cka"]
    assert np.allclose(np.diag(cka.read("cka", "logits")), 1.0)
    back = cka.long("cka").sort_values(["layer", "mask_a", "mask_b"]).reset_index(drop=True)
    table = result.cka.sort_values(["layer", "mask_a", "mask_b"]).reset_index(drop=True)
    assert np.array_equal(back["value"].to_numpy(), table["cka"].to_numpy())


# ---- at scale: models built once, pairs as matrices, stated samples -----------------------------------------
@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """12 random masks of the width-0.25 digits MLP, imported without evaluation: no stored predictions."""
    from masklab.analysis.random_sets import random_mask_bits
    from masklab.store.bits import MaskSet, make_layout

    shapes = [("fc1", (64, 64)), ("fc2", (64, 64)), ("fc3", (10, 64))]
    keep = [int(np.prod(s)) // 2 for _, s in shapes]
    layout = make_layout([n for n, _ in shapes], [s for _, s in shapes], keep)
    masks = MaskSet(random_mask_bits(layout, np.array([keep]), 12, np.random.default_rng(5)), layout)
    return masklab.import_maskset(masks, model="mlp", dataset="digits", width=0.25,
                                  runs_dir=tmp_path_factory.mktemp("runs"), evaluate=False)


@pytest.fixture
def gappy(imported, tmp_path):
    """A copy of `imported` without mask 3 (as a run killed between shards leaves it): ids 0-2, 4-11."""
    path = tmp_path / "runs" / imported.id
    shutil.copytree(imported.path, path, ignore=shutil.ignore_patterns("analysis"))
    for file in (path / "masks").glob("000003.*"):
        file.unlink()
    run = masklab.open_run(path)
    assert 3 not in run.ids and len(run.ids) == 11
    return run


@pytest.mark.parametrize("which", ["imported", "run", "gappy"])
def test_models_built_once_compute_exactly_what_each_rebuilt_model_computes(which, request, monkeypatch):
    """run_models reuses one model for masks that differ in their masks alone: its logits on the test split are
    bit-identical to those of the model run_model rebuilds for each mask, and it is rebuilt only once. With a
    mask id missing too (it took mask i's position for its id: mask 5 computed with mask 4's bits)."""
    import torch

    from masklab.train import rebuild

    run = request.getfixturevalue(which)
    x = run.dataset().normalize(run.dataset().x_test, "cpu")
    with torch.no_grad():
        expected = [run.model(i)(x) for i in run.ids]
    built = []
    original = rebuild.run_model
    monkeypatch.setattr(rebuild, "run_model", lambda r, i, device="cpu": built.append(i) or original(r, i, device))
    with torch.no_grad():
        for (i, model), logits in zip(rebuild.run_models(run, list(run.ids)[::-1], "cpu"), expected[::-1]):
            assert torch.equal(model(x), logits), f"mask {i}"
    assert built == [run.ids[-1]]


def test_disagreement_beyond_the_caps_is_over_a_stated_sample_and_its_matrices_are_exact(imported):
    """With at most 8 masks compared and 10 pairs tabulated: the matrices are those of the 8 masks of the nested
    mask sample, exact against a direct count; the summary's mean is over all their 28 pairs; the table holds the
    10 pairs of the stated pair sample (the same given the seed) and the correlation rests on them."""
    from masklab.analysis.sampling import condensed_pairs, mask_sample, pair_sample

    result = fn.functional_similarity(imported, pair_masks=8, table_pairs=10, max_masks=4, cka_samples=40,
                                      n_random_masks=0, random_state=2)
    ids = np.asarray(imported.ids)
    compared = mask_sample(12, 8, 2)
    m = result.matrices
    assert m is not None and m.ids.tolist() == ids[compared.positions].tolist()
    predictions = fn.test_predictions(imported, m.ids)
    direct = np.array([[int(np.sum(a != b)) for b in predictions] for a in predictions])
    assert np.array_equal(m.counts, direct)
    s = result.disagreement_summary.iloc[0]
    assert s["n_pairs"] == 28 and s["mean"] == pytest.approx(direct[np.triu_indices(8, 1)].mean() / m.n_test)
    assert len(result.disagreement) == 10 and s["rho_hamming_n"] == 10
    a, b = condensed_pairs(pair_sample(8, 10, 2).positions, 8)
    assert result.disagreement["mask_a"].tolist() == m.ids[a].tolist()
    assert result.disagreement["mask_b"].tolist() == m.ids[b].tolist()
    assert [x.stage for x in result.samples] == ["functional: masks compared", "functional: pairs tabulated",
                                               "functional: masks evaluated"]
    assert "10 of 28 pairs (a uniform random sample without replacement, seed 2)" in result.sample_pairs
    again = fn.functional_similarity(imported, pair_masks=8, table_pairs=10, max_masks=4, cka_samples=40,
                                     n_random_masks=0, random_state=2)
    assert again.disagreement.equals(result.disagreement)


def test_analyze_and_the_functional_stage_import_no_torch_until_a_stage_needs_it():
    """torch costs seconds to import: `analyze --pairs 0 --no-functional` and runs without a model never need it."""
    import subprocess
    import sys

    code = ("import sys; import masklab.report, masklab.report.functional, masklab.analysis.functional; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
