"""The functional-similarity stage of `analyze`: prediction disagreement, ensembles and linear CKA of a run's
masks (`masklab.analysis.functional`), their tables, figures and key numbers."""

from __future__ import annotations

import numpy as np

from masklab.analysis.functional import functional_similarity
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.plots import cka_by_layer, disagreement_vs_distance, ensemble_accuracy_vs_k
from masklab.report.base import Report, Shared, figure
from masklab.report.settings import AnalysisSettings
from masklab.units import percent, signed_sd
from masklab.units import points as points_text


def function_stage(run, report: Report, shared: Shared, random_state: int = 0) -> None:
    """Tables disagreement, disagreement_summary, ensemble, cka, cka_summary; the per-pair results as N x N
    matrices in ``<run>/analysis/<settings id>/functional/`` (`FunctionalSimilarity.write_pairs`: disagreement/,
    cka/); three figures; key numbers: disagreement, the ensembles of all masks, CKA per representation. The
    samples (masks compared, pairs tabulated, masks evaluated) go to the samples table; the Hamming distances
    are read at the pairs tabulated from the distances stage's stored counts."""
    settings = shared.settings or AnalysisSettings()
    result = functional_similarity(run, intersections=shared.intersections, random_state=random_state,
                                   pair_masks=settings.limit("functional_masks"),
                                   table_pairs=settings.limit("functional_pairs"), progress=not shared.quiet)
    shared.functional = result
    shared.samples.extend(result.samples)
    result.write_pairs((shared.tables or run.path / "analysis") / "functional", root=run.path)
    report.tables.update(disagreement=result.disagreement, disagreement_summary=result.disagreement_summary,
                         ensemble=result.ensemble, cka=result.cka, cka_summary=result.cka_summary)
    s = result.disagreement_summary.iloc[0]
    figure(report, shared, "disagreement", disagreement_vs_distance, (result.disagreement,),
           "Prediction disagreement of mask pairs (fraction of test samples predicted differently; "
           f"{result.sample_pairs}) against their Hamming distance, beside two independent predictors: with the "
           "masks' errors independent given the true class (dotted), and independent of the input with the masks' "
           "class rates (dashed).")
    figure(report, shared, "ensemble", ensemble_accuracy_vs_k, (result.ensemble,),
           f"Accuracy of ensembles of k masks (averaged softmax and majority vote; the first k of "
           f"{int(result.ensemble['n_orders'].iloc[0])} random orders, mean and min-max), against their members' "
           "mean and best accuracy.")
    if len(result.cka_summary):
        figure(report, shared, "cka", cka_by_layer, (result.cka_summary,),
               "Linear CKA of the masks' representations per layer on a fixed batch of test samples, beside "
               "subnetworks of the same weights with random masks of the same counts.")
    rho = (f"Spearman rho with Hamming distance {s['rho_hamming']:+.2f} (p = {s['rho_hamming_p']:.2g}, "
           f"n = {int(s['rho_hamming_n'])} pairs)" if np.isfinite(s["rho_hamming"]) else
           f"no correlation with Hamming distance: {int(s['n_pairs'])} pairs, it needs {MIN_CORRELATION_PAIRS}")
    given = float(s["reference_given_class"])
    report.note("prediction disagreement",
                f"mean {percent(s['mean'])} of {int(s['n_test']):,} test samples (min {percent(s['min'])}, max "
                f"{percent(s['max'])}, {int(s['n_pairs'])} pairs) vs {percent(given)} for errors independent given "
                f"the class and {percent(s['reference'])} for predictors independent of the input; {rho}",
                value=float(s["mean"]), unit="fraction", chance=float(s["reference"]),
                sd_from_chance=(float(s["mean"]) - float(s["reference"])) / float(s["reference_sd"])
                if s["reference_sd"] > 0 else None, n=int(s["n_pairs"]))
    top = result.ensemble[result.ensemble["k"] == result.ensemble["k"].max()].set_index("vote")
    for vote, label in (("softmax", "averaged softmax"), ("majority", "majority vote")):
        if vote not in top.index:
            continue
        row = top.loc[vote]
        report.note(f"ensemble of all evaluated masks ({label})",
                    f"{percent(row['acc_mean'])}: {points_text(row['gain_over_mean'])} over the mean mask, "
                    f"{points_text(row['gain_over_best'])} over the best ({result.sample_forward})",
                    value=float(row["acc_mean"]), unit="fraction", chance=result.chance_accuracy,
                    n=int(row["k"]))
    for r in result.cka_summary.itertuples():
        report.note(f"linear CKA {r.layer}",
                    f"{r.mean:.3f} (min {r.min:.3f}, max {r.max:.3f}) vs {r.random_mean:.3f} for random masks of the "
                    f"same weights, {signed_sd(r.sd_from_random)} sd ({result.sample_cka})",
                    value=float(r.mean), unit="CKA", chance=float(r.random_mean),
                    sd_from_chance=float(r.sd_from_random), n=int(r.n_pairs))
    if result.mismatches:
        report.note("predictions re-evaluated",
                    f"{result.mismatches} test predictions differ from those stored at training (another device or "
                    "library rounds near-ties differently); ensembles and CKA use the re-evaluated ones",
                    value=float(result.mismatches), unit="test predictions")
