"""`masklab compare`: the masks of two runs of the same network, compared (`masklab.analysis.compare`), with a
page in `analyze`'s style."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from masklab import files as W
from masklab.analysis.compare import check_comparable, compare_runs, density_gap, joint_embedding
from masklab.analysis.embedding import NAMES
from masklab.plots import embedding_scatter
from masklab.report.base import (
    DEFAULT_FORMATS,
    Report,
    Shared,
    check_formats,
    embedding_title,
    figure,
    finish_figures,
    unfinished_warning,
    write_table,
)
from masklab.report.pages import write_compare_index
from masklab.store.run import Run, open_run
from masklab.units import metric_value, sparsity_text


def compare(run_a, run_b, figures_dir: str | os.PathLike | None = None, *, embedding: bool = True,
            quiet: bool = True, formats: tuple[str, ...] | str = DEFAULT_FORMATS,
            embedding_method: str = "auto") -> Report:
    """Cross-run distances (e.g. Edge-Popup vs Biprop masks of the same weights) and a joint embedding,
    computed by `masklab.analysis.compare` and written here with a page in `analyze`'s style.

    Tables: `cross_distances` (every pair across the runs, per layer, with its random baseline),
    `comparison` (per layer and metric: mean within A, within B, across, and chance; when the runs share
    score seeds also across pairs of the same score seed and of other seeds) and `joint_embedding` (MDS
    below 50 masks in all, UMAP from 50: `masklab.analysis.embedding.choose_method`). Figures in `formats`
    (PNG only by default). Refused with a clear message when the runs' layer layouts differ. With
    ``quiet=False`` a progress line follows the steps; `Report.seconds` has their times.
    """
    run_a = run_a if isinstance(run_a, Run) else open_run(run_a)
    run_b = run_b if isinstance(run_b, Run) else open_run(run_b)
    formats = check_formats(formats)
    check_comparable(run_a, run_b)
    if run_a.config.weight_seed != run_b.config.weight_seed:
        print(f"masklab: note: the runs use different weight seeds ({run_a.config.weight_seed} vs "
              f"{run_b.config.weight_seed}): their masks sit on different random weights", flush=True)
    name = f"compare-{run_a.id}-vs-{run_b.id}"
    figures_root = Path(figures_dir) if figures_dir is not None else run_a.path.parent.parent / "figures"
    out = W.make_dirs(figures_root / name, root=figures_root)
    report = Report(name)
    report.warnings.extend(w for w in (unfinished_warning(run_a), unfinished_warning(run_b)) if w)
    shared = Shared(out, formats)
    steps = ["across", "within A", "within B"] + (["embedding"] if embedding and len(run_a) + len(run_b) >= 4
                                                  else []) + ["tables"]
    bar = tqdm(total=len(steps), disable=quiet, unit="step", desc="compare", dynamic_ncols=True, leave=False)
    shared.lap()

    def step(label: str) -> None:
        report.seconds[label] = shared.lap()
        bar.update(1)
        bar.set_description(f"compare: {label} done")

    bar.set_description("compare: distances")
    report.tables.update(compare_runs(run_a, run_b, step=step))
    comparison = report.tables["comparison"]
    for row in comparison[comparison["layer"] == "all"].to_dict("records"):
        metric = str(row["metric"])
        report.note(f"{metric} across runs", f"{metric_value(metric, row['across'])} (chance "
                    f"{metric_value(metric, row['chance across'])})", value=float(row["across"]), unit="fraction",
                    chance=float(row["chance across"]))
        for side in ("within A", "within B"):
            if np.isfinite(row[side]):  # (a run of one mask has no pairs of its own)
                report.note(f"{metric} {side}", f"{metric_value(metric, row[side])} (chance "
                            f"{metric_value(metric, row['chance ' + side])})", value=float(row[side]),
                            unit="fraction", chance=float(row["chance " + side]))
        if "across, same score seed" in row:
            report.note(f"{metric} across runs, same score seed",
                        f"{metric_value(metric, row['across, same score seed'])} (other seeds "
                        f"{metric_value(metric, row['across, other seeds'])})",
                        value=float(row["across, same score seed"]), unit="fraction")
    if "embedding" in steps:
        bar.set_description("compare: joint embedding")
        points, used, why = joint_embedding(run_a, run_b, embedding_method)
        report.tables["joint_embedding"] = points
        method = NAMES[used]
        gap = density_gap(run_a, run_b)
        # runs of other sparsities separate on the embedding by their counts alone: say so where it is seen
        density = "" if gap == 0 else (
            f"the runs keep different fractions of the weights (sparsity {sparsity_text(run_a.config.sparsity)} "
            f"vs {sparsity_text(run_b.config.sparsity)}), so every mask of A is at least {gap:.4f} (normalised "
            "Hamming) from every mask of B by the counts alone: the two groups separate whatever the masks' "
            "structure")
        figure(report, shared, f"joint_{used}", embedding_scatter, (points, ["side"]),
                f"{method} of both runs' masks on their joint normalised Hamming distances, coloured by run "
                f"(A: {run_a.id}, B: {run_b.id})" + (f"; {why}" if why else "") + (f"; {density}" if density
                                                                                     else "") + ".",
                title=embedding_title(f"{method} of both runs' {len(points)} masks", why)
                + (f"\ndensities differ: A and B at least {gap:.3f} apart by their counts" if gap else ""))
        report.note("joint embedding", why or method, n=len(points))
        if density:
            report.note("densities differ", density, value=gap, unit="fraction")
        step("embedding")
    finish_figures(report, shared)
    bar.set_description("compare: tables and page")
    start = time.perf_counter()
    for name_, table in report.tables.items():
        write_table(table, out / name_)
    report.index = write_compare_index(run_a, run_b, report, out, formats)
    report.seconds["tables"] = time.perf_counter() - start
    bar.update(1)
    bar.close()
    return report
