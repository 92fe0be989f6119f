"""`masklab analyze` and `masklab compare`: the report of one run, or of two compared."""

from __future__ import annotations

import argparse
import sys

from masklab.cli.options import at_least
from masklab.cli.text import frame_text, pairs_text
from masklab.report import analyze, check_formats, compare, comparison_text, seconds_text
from masklab.store.run import open_run


def cmd_analyze(args: argparse.Namespace) -> int:
    at_least("--points", args.points, 2)
    at_least("--pairs", args.pairs, 0)
    run = open_run(args.run, args.runs_dir)
    report = analyze(run, args.figures, quiet=args.quiet, pairs=args.pairs, points=args.points,
                     embedding=not args.no_embedding,
                     functional=not args.no_functional, formats=check_formats(args.formats))
    warn(report)
    if not args.quiet:
        print(pairs_text(report.summary()))
        print(f"tables: {run.path / 'analysis'}  ({len(report.tables)} tables); figures: {len(report.figures)}")
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    report = compare(open_run(args.run_a, args.runs_dir), open_run(args.run_b, args.runs_dir), args.figures,
                     quiet=args.quiet, formats=check_formats(args.formats))
    warn(report)
    if not args.quiet:
        print("matching in %, Jaccard as a fraction; within A / within B: pairs of one run's masks, across: one "
              "mask of each run")
        print(frame_text(comparison_text(report.tables["comparison"])))
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


def warn(report) -> None:
    """The report's warnings (an unfinished run) on stderr, --quiet or not: stdout keeps the page's path last."""
    for line in report.warnings:
        print(f"masklab: note: {line}", file=sys.stderr, flush=True)
