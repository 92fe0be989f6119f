"""`masklab import` and `masklab export`: masks trained elsewhere into a run, and a stored mask back out
(masklab/interop, docs/interop.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from masklab.errors import UserError
from masklab.files import TABLE_SUFFIXES
from masklab.interop.exporter import export_mask
from masklab.interop.importer import import_masks
from masklab.store.run import open_run
from masklab.tracking import export_history, require_tensorboard, write_tensorboard
from masklab.units import percent


def cmd_import(args: argparse.Namespace) -> int:
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    run = import_masks(args.files, args.format, keep=args.keep, sparsity=args.sparsity, method=args.method,
                       model=args.model, dataset=args.dataset, data_root=args.data_root, width=args.width,
                       runs_dir=args.runs_dir, name=args.name, allow_different_weights=args.allow_different_weights,
                       log=say)
    section = run.imported or {}
    rule_text = {"reference": f"the reference rule at keep {run.config.keep_fraction!r}",
                 "masklab": f"masklab's rule at sparsity {run.config.sparsity:g}"}.get(run.config.keep_rule,
                                                                                     "as stored in the files")
    say(f"run {run.id}: {len(run)} masks from {section.get('format')} ({run.config.method}), kept {rule_text}, "
        f"weights {section.get('weights')}")
    acc = run.table["test_acc"].dropna()
    if len(acc):
        say(f"test accuracy mean {percent(acc.mean())} (min {percent(acc.min())}, max {percent(acc.max())})")
    print(run.path, flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    run = open_run(args.run, args.runs_dir)
    print(export_mask(run, args.mask, args.format, args.out), flush=True)
    return 0


def cmd_export_history(args: argparse.Namespace) -> int:
    if args.out is not None and Path(args.out).suffix not in TABLE_SUFFIXES:
        raise UserError(f"--out {args.out}: give a .csv or .parquet file")
    if args.tensorboard:
        require_tensorboard()
    run = open_run(args.run, args.runs_dir)
    if args.tensorboard:
        print(f"TensorBoard event files: {write_tensorboard(run)}", flush=True)
    print(export_history(run, args.out), flush=True)
    return 0
