"""`masklab sweep`: a grid of runs over models, widths, methods, sparsities and epochs, its accuracy table and
figure and, with two or more seeds per cell, the landscape across settings (docs/landscape.md). Apart from
`generate` (cli/train.py) so that training a run does not import the sweep's analysis and figures."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from masklab.analysis.landscape import LandscapeSettings
from masklab.cli.options import (
    at_least,
    check_scale_args,
    config_from_args,
    distinct,
    parse_floats,
    parse_seeds,
    parse_sparsities,
    slurm_options,
)
from masklab.cli.parser import SWEEP_VARIES
from masklab.cli.text import frame_text
from masklab.config import MAX_MASKS
from masklab.errors import UserError
from masklab.files import write_table
from masklab.plots import accuracy_vs_sparsity, save_figure
from masklab.report.base import check_formats
from masklab.sweep import sweep_configs, sweep_id, sweep_landscape, sweep_runs, sweep_table
from masklab.units import percent, points, shown_accuracy, sparsity_text


def cmd_sweep(args: argparse.Namespace) -> int:
    name = args.name
    for dest in SWEEP_VARIES:
        setattr(args, dest, None)
    if name is not None:
        check_name("--name", name)
    config = config_from_args(args)
    if args.seeds > MAX_MASKS:
        raise UserError(f"--seeds {args.seeds} is invalid: a cell is one run of at most {MAX_MASKS:,} masks")
    methods = distinct("--methods", args.methods, [m.strip() for m in args.methods.split(",") if m.strip()])
    sparsities = distinct("--sparsities", args.sparsities, parse_sparsities(args.sparsities))
    weight_seeds = distinct("--weight-seeds", args.weight_seeds, parse_seeds("--weight-seeds", args.weight_seeds))
    axes = {"models": axis(args, "--models", "model", str), "widths": axis(args, "--widths", "width", float),
            "epochs": axis(args, "--epochs-list", "epochs", int)}
    pairs = parse_pairs(args.pairs)
    at_least("--cka-samples", args.cka_samples, 2)
    formats = check_formats(args.formats)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    check_scale_args(args)
    if args.no_wait:
        raise UserError("sweep --no-wait is not supported: the sweep's table needs every cell; run it again "
                        "later instead (finished cells are reused)")
    sweep_configs(config, methods, sparsities, args.seeds, weight_seeds, **axes)  # every check before training
    runs = sweep_runs(config, methods, sparsities, args.seeds, weight_seeds, **axes, runs_dir=args.runs_dir,
                      quiet=args.quiet, log=say, jobs=args.jobs, executor=args.executor,
                      slurm=slurm_options(args) if args.jobs else None,
                      allow_device_change=args.allow_device_change)
    table = sweep_table(runs)
    sweep_name = sweep_id(config, methods, sparsities, args.seeds, weight_seeds, **axes, name=name)
    models = "+".join(dict.fromkeys(table["model"]))
    constant = [c for c in ("model", "width") if table[c].nunique() == 1]  # (the header names the model)
    header, shown = sweep_text(table.drop(columns=constant))
    say(f"{sweep_name}: {header} ({models} on {config.dataset})")
    say(frame_text(shown))
    stem = Path(args.figures) / sweep_name
    figure = accuracy_vs_sparsity(table, title=f"{models} on {config.dataset}: accuracy vs sparsity ({sweep_name})")
    paths = save_figure(figure, stem, formats=formats)
    write_table(stem.with_suffix(".csv"), table)
    if args.landscape or (args.landscape is None and args.seeds >= 2):
        folder = stem
        settings = LandscapeSettings(pairs=pairs, cka_samples=args.cka_samples)
        written = sweep_landscape(runs, folder, settings=settings, pages=args.pages, formats=formats,
                                  quiet=args.quiet, title=f"{models} on {config.dataset} ({sweep_name})")
        say(f"{sweep_name}: the landscape across settings (docs/landscape.md), {len(runs)} cells")
        say(frame_text(landscape_text(written.key_table)))
        say(f"landscape: {written.paths['table']} ({written.rows:,} rows); figures: "
            f"{', '.join(p.name for k, p in written.paths.items() if k not in ('table', 'csv', 'pages', 'seconds'))}"
            + (f"; pages: {folder / 'cells'}" if args.pages else ""))
        seconds = written.seconds
        say(f"seconds per cell (mean over {len(seconds)}; {written.paths['seconds']}): training "
            f"{seconds['train_seconds'].mean():.1f} (the masks' recorded time), measuring "
            f"{seconds['measure_seconds'].mean():.1f}")
    print(next(p for p in paths if p.suffix == ".png"), flush=True)
    return 0


def sweep_text(table) -> tuple[str, object]:
    """The sweep table as printed and the header that says its units: sparsity and accuracies in % (the
    figure's axes), epochs as integers; the published numbers (%) and the differences to them (percentage
    points) only where the table has them (CIFAR-10 conv-N)."""
    shown = shown_accuracy(table.drop(columns=["runs"], errors="ignore"),
                           ["acc_mean", "acc_std", "best_mean", "best_std", "chance"])
    shown["sparsity"] = [sparsity_text(float(v)) for v in table["sparsity"]]
    header = "sparsity and test accuracy in %"
    if "published" in table.columns:
        shown["published"] = [percent(float(v) / 100) for v in table["published"]]  # (stored in %)
        shown["best_minus_published"] = [points(float(v) / 100) for v in table["best_minus_published"]]
        header += "; published best accuracy in %, the differences to it in percentage points"
    return header, shown


def landscape_text(keys):
    """The key table (`masklab.analysis.landscape.key_table`) as text columns, each number in its unit."""
    def fmt(value, kind):
        if not np.isfinite(value):
            return "n/a"
        return {"%": f"{100 * value:.2f}%", "sd": f"{value:+.1f}", "p": f"{value:.2g}", "pt": f"{value:+.2f}",
                "x": f"{value:.3f}"}[kind]

    out = pd.DataFrame({"model": keys["model"], "width": keys["width"].map(lambda w: f"{w:g}"),
                        "method": keys["method"], "sparsity": keys["sparsity"].map(lambda s: f"{100 * s:g}%"),
                        "epochs": keys["epochs"], "masks": keys["masks"]})
    for column, kind, title in (("acc", "%", "acc"), ("matching", "%", "matching"), ("matching_sd", "sd", "sd"),
                                ("jaccard", "x", "jaccard"), ("jaccard_chance", "x", "(chance)"),
                                ("silhouette_sd", "sd", "silhouette sd"), ("silhouette_p", "p", "p"),
                                ("error_barrier", "x", "err barrier pt"), ("disagreement", "%", "disagree"),
                                ("disagreement_given_class_chance", "%", "(indep.)"),
                                ("ensemble_gain", "pt", "ens. gain pt"), ("cka_last_hidden", "x", "CKA"),
                                ("cka_last_hidden_chance", "x", "(random)")):
        out[title] = [fmt(float(v), kind) for v in keys[column]]
    return out


def axis(args: argparse.Namespace, flag: str, dest: str, kind: type) -> list | None:
    """A sweep axis from its list flag (`--models`, ...), which replaces the one-value option (`--model`)."""
    text = getattr(args, flag.lstrip("-").replace("-", "_"))
    if text is None:
        return None
    if getattr(args, dest, None) is not None:
        raise UserError(f"{flag} and --{dest.replace('_', '-')} exclude each other: give the values as {flag}")
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [kind(x) for x in items] if kind is not float else parse_floats(flag, text)
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of {kind.__name__}s") from None
    return distinct(flag, text, values)


def parse_pairs(text: str) -> int | None:
    """--pairs: 'all' (None), or an integer >= 0."""
    if str(text).strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--pairs {text!r} is invalid: give a number of pairs (0 for none) or 'all'") from None
    at_least("--pairs", value, 0)
    return value


def check_name(flag: str, name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", name) or ".." in name:
        raise UserError(f"{flag} {name!r} is invalid: use 1-64 letters, digits, '.', '_', '+', '-' (no slashes, "
                        "no '..', not starting with '.')")
