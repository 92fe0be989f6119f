"""`masklab analyze` and `masklab compare`: the report of one run, or of two compared."""

from __future__ import annotations

import argparse
import sys

from masklab.cli.options import at_least
from masklab.cli.text import frame_text, pairs_text
from masklab.errors import UserError
from masklab.report import analyze, check_formats, compare, comparison_text, seconds_text
from masklab.report.settings import AnalysisSettings
from masklab.store.run import open_run


def cmd_analyze(args: argparse.Namespace) -> int:
    at_least("--points", args.points, 2)
    at_least("--pairs", args.pairs, 0)
    if args.scheduler and args.jobs:
        raise UserError("--scheduler and --jobs both run the barrier pairs elsewhere: choose one")
    if args.workers is not None and args.scheduler != "local":
        raise UserError("--workers starts a local Dask cluster: use it with --scheduler local")
    settings = AnalysisSettings(pairs=args.pairs, points=args.points, embedding=not args.no_embedding,
                                random_state=args.seed, cluster_masks=args.cluster_masks,
                                embedding_masks=args.embedding_masks, structure_masks=args.structure_masks,
                                n_random=args.random_sets, null_masks=args.null_masks, full=args.full,
                                functional_masks=args.functional_masks, functional_pairs=args.functional_pairs,
                                functional=not args.no_functional)
    engine = None
    if args.jobs is not None:
        from masklab.scale.pair_jobs import SubmititEngine  # here: it brings submitit and torch (--jobs only)

        engine = SubmititEngine(args.jobs, args.executor)
    run = open_run(args.run, args.runs_dir)
    report = analyze(run, args.figures, quiet=args.quiet, settings=settings, formats=check_formats(args.formats),
                     scheduler=args.scheduler, workers=args.workers, engine=engine)
    warn(report)
    if not args.quiet:
        print(pairs_text(report.summary()))
        print(f"settings {settings.id} ({settings.describe()}); tables: {report.folder}  ({len(report.tables)} "
              f"tables); figures: {len(report.figures)}")
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
