"""`masklab generate` and `masklab jobs`: training runs of masks, here or as submitit jobs (`masklab sweep`:
cli/sweep.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from masklab.cli.options import (
    check_scale_args,
    config_from_args,
    given_run_options,
    slurm_options,
)
from masklab.cli.text import bytes_text, frame_text
from masklab.config_file import load_toml
from masklab.errors import UserError
from masklab.generation import banner, generate, prepare, resume_config
from masklab.scale.executors import setup_python_note, submit_shards
from masklab.scale.jobs import cancel_jobs, job_table
from masklab.store.run import Run
from masklab.tracking import require_tensorboard
from masklab.units import percent


def cmd_generate(args: argparse.Namespace) -> int:
    check_scale_args(args)
    if isinstance(args.resume, str):  # --resume RUN: that run's own config, with what the flags repeat or raise
        from_file = {k.replace("-", "_"): v for k, v in (load_toml(args.config) if args.config else {}).items()}
        changes = {**from_file, **given_run_options(args)}
        config, runs_dir = resume_config(args.resume, args.runs_dir, changes)
        args.runs_dir, args.resume = str(runs_dir), True
    else:
        config = config_from_args(args)
    if args.tensorboard:
        require_tensorboard()
        if args.jobs is not None:
            raise UserError("--tensorboard with --jobs: the jobs write no event files; once they are done, run "
                            "`masklab export-history RUN --tensorboard`")
    dataset, _, _ = prepare(config)  # all checks before any output or any file
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    for line in banner(config, args.runs_dir):
        say(line)
    if args.jobs is not None:
        return generate_jobs(args, config, say)
    try:
        run = generate(config, runs_dir=args.runs_dir, resume=bool(args.resume), quiet=args.quiet, data=dataset,
                       log=say, shard=args.shard, allow_device_change=args.allow_device_change,
                       tensorboard=args.tensorboard)
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
