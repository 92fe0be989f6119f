"""`masklab generate` and `masklab sweep`: training runs of masks, here or as submitit jobs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from masklab.cli.options import (
    check_scale_args,
    config_from_args,
    distinct,
    given_run_options,
    parse_seeds,
    parse_sparsities,
    slurm_options,
)
from masklab.cli.parser import SWEEP_VARIES
from masklab.cli.text import bytes_text, frame_text
from masklab.config import MAX_MASKS
from masklab.config_file import load_toml
from masklab.errors import UserError
from masklab.generation import banner, generate, prepare, resume_config
from masklab.plots import accuracy_vs_sparsity, save_figure
from masklab.scale.executors import setup_python_note, submit_shards
from masklab.scale.jobs import cancel_jobs, job_table
from masklab.store.files import atomic_write
from masklab.store.run import Run
from masklab.sweep import sweep, sweep_id
from masklab.units import percent, points, shown_accuracy, sparsity_text


def cmd_generate(args: argparse.Namespace) -> int:
    check_scale_args(args)
    if isinstance(args.resume, str):  # --resume RUN: that run's own config, with what the flags repeat or raise
        from_file = {k.replace("-", "_"): v for k, v in (load_toml(args.config) if args.config else {}).items()}
        changes = {**from_file, **given_run_options(args)}
        config, runs_dir = resume_config(args.resume, args.runs_dir, changes)
        args.runs_dir, args.resume = str(runs_dir), True
    else:
        config = config_from_args(args)
    dataset, _, _ = prepare(config)  # all checks before any output or any file
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    for line in banner(config, args.runs_dir):
        say(line)
    if args.jobs is not None:
        return generate_jobs(args, config, say)
    try:
        run = generate(config, runs_dir=args.runs_dir, resume=bool(args.resume), quiet=args.quiet, data=dataset,
                       log=say, shard=args.shard, allow_device_change=args.allow_device_change)
    except KeyboardInterrupt:
        print(f"masklab: interrupted; the finished masks and the others' last finished epochs are kept: run the "
              f"same command again to continue {os.path.join(args.runs_dir, config.run_id)}", file=sys.stderr)
        return 130
    table = run.table
    if len(table):
        acc = table["test_acc"]
        say(f"{len(run)} masks: test accuracy mean {percent(acc.mean())} (min {percent(acc.min())}, max "
            f"{percent(acc.max())}); {table['seconds'].mean():.1f} s per mask; {bytes_text(run)}")
    print(run.path, flush=True)
    return 0


def generate_jobs(args: argparse.Namespace, config, say) -> int:
    """`generate --jobs N`: the run's N shards through submitit."""
    options = slurm_options(args)
    note = setup_python_note(options.setup) if args.executor == "slurm" else None
    if note:
        say(note)
    submission = submit_shards([config], args.runs_dir, args.jobs, args.executor, slurm=options,
                               wait=not args.no_wait, quiet=args.quiet, log=say,
                               allow_device_change=args.allow_device_change)
    path = Path(args.runs_dir) / config.run_id  # as the user named it (the jobs get it absolute)
    if args.no_wait:
        print(f"jobs: {' '.join(submission.job_ids)}", flush=True)
    elif submission.job_ids:
        run = Run(path)
        say(f"{len(run)} of {config.masks} masks stored by {len(submission.job_ids)} shard job(s)")
    print(path, flush=True)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.cancel:
        cancelled = cancel_jobs(args.run, args.runs_dir)
        print(f"cancelled {len(cancelled)} task(s){': ' + ' '.join(cancelled) if cancelled else ' (none was running)'}",
              flush=True)
        return 0
    table = job_table(args.run, args.runs_dir)
    if table.empty:
        print(f"run {args.run} records no shard jobs (`generate --jobs N` records them)")
        return 0
    print(frame_text(table.fillna("-")))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    for dest in SWEEP_VARIES:
        setattr(args, dest, None)
    config = config_from_args(args)
    if args.seeds > MAX_MASKS:
        raise UserError(f"--seeds {args.seeds} is invalid: a cell is one run of at most {MAX_MASKS:,} masks")
    methods = distinct("--methods", args.methods, [m.strip() for m in args.methods.split(",") if m.strip()])
    sparsities = distinct("--sparsities", args.sparsities, parse_sparsities(args.sparsities))
    weight_seeds = distinct("--weight-seeds", args.weight_seeds, parse_seeds("--weight-seeds", args.weight_seeds))
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    check_scale_args(args)
    if args.no_wait:
        raise UserError("sweep --no-wait is not supported: the sweep's table needs every cell; run it again "
                        "later instead (finished cells are reused)")
    table = sweep(config, methods, sparsities, args.seeds, weight_seeds, runs_dir=args.runs_dir, quiet=args.quiet,
                  log=say, jobs=args.jobs, executor=args.executor,
                  slurm=slurm_options(args) if args.jobs else None, allow_device_change=args.allow_device_change)
    name = sweep_id(config, methods, sparsities, args.seeds, weight_seeds)
    header, shown = sweep_text(table)
    say(f"{name}: {header}")
    say(frame_text(shown))
    stem = Path(args.figures) / name
    figure = accuracy_vs_sparsity(table, title=f"{config.model} on {config.dataset}: accuracy vs sparsity "
                                  f"({name})")
    paths = save_figure(figure, stem)
    atomic_write(stem.with_suffix(".csv"), table.to_csv(index=False).encode(), durable=False)
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
