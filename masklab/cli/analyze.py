"""`masklab analyze`, `compare`, `interpolate` and `distances`: the analyses of one run or two."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from masklab.analysis.distances import distances_to_file
from masklab.analysis.interpolation import barrier, barrier_correlation, barrier_matrix, interpolate
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.analysis.tiles import connect
from masklab.cli.options import at_least
from masklab.cli.text import frame_text, order_words, pairs_text, path_words
from masklab.errors import UserError
from masklab.report import analyze, check_formats, compare, comparison_text, seconds_text
from masklab.store.run import open_run
from masklab.units import shown_accuracy


def cmd_analyze(args: argparse.Namespace) -> int:
    at_least("--points", args.points, 2)
    at_least("--pairs", args.pairs, 0)
    run = open_run(args.run, args.runs_dir)
    report = analyze(run, args.figures, quiet=args.quiet, pairs=args.pairs, points=args.points,
                     embedding=not args.no_embedding, formats=check_formats(args.formats))
    if not args.quiet:
        print(pairs_text(report.summary()))
        print(f"tables: {run.path / 'analysis'}  ({len(report.tables)} tables); figures: {len(report.figures)}")
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    report = compare(open_run(args.run_a, args.runs_dir), open_run(args.run_b, args.runs_dir), args.figures,
                     quiet=args.quiet, formats=check_formats(args.formats))
    if not args.quiet:
        print("matching in %, Jaccard as a fraction; within A / within B: pairs of one run's masks, across: one "
              "mask of each run")
        print(frame_text(comparison_text(report.tables["comparison"])))
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    at_least("--points", args.points, 2)
    at_least("--orders", args.orders, 1)
    run = open_run(args.run, args.runs_dir)
    if args.pairs is not None:
        at_least("--pairs", args.pairs, 1)
        table = barrier_matrix(run, pairs=args.pairs, path=args.path, points=args.points, orders=args.orders,
                               order=args.order, random_state=args.seed, progress=not args.quiet)
        print(f"run {run.id}: barriers of {len(table.groupby(['mask_a', 'mask_b']))} sampled mask pairs (seed "
              f"{args.seed}), {path_words(args)}; loss barrier in nats, error barrier in percentage points")
        columns = ["mask_a", "mask_b"] + (["order"] if args.path == "hamming" else []) + \
            ["hamming_norm", "loss_barrier", "error_barrier"]
        print(frame_text(shown_accuracy(order_words(table, args), ["error_barrier"], "points")[columns]))
        if len(table) >= MIN_CORRELATION_PAIRS:
            print(frame_text(barrier_correlation(table)))
        else:
            print(f"(no correlation with Hamming distance: {len(table)} pairs, at least {MIN_CORRELATION_PAIRS} "
                  "needed; use --pairs)")
        return 0
    if args.a is None or args.b is None:
        raise UserError("give two mask ids A B (e.g. `masklab interpolate RUN 0 1`) or --pairs M")
    curve = interpolate(run, args.a, args.b, args.path, points=args.points, orders=args.orders, order=args.order,
                        random_state=args.seed, progress=not args.quiet)
    print(f"run {run.id}: masks {args.a} -> {args.b}, {path_words(args)}; loss in nats, accuracy in %, "
          "Hamming distances to both ends as fractions of the bits")
    order = ["order"] if args.path == "hamming" else []
    shown = shown_accuracy(order_words(curve, args), ["acc"])
    print(frame_text(shown[order + ["t", "hamming_to_a", "hamming_to_b", "loss", "acc"]]))
    found = barrier(curve)
    print("barriers (loss in nats, error in percentage points):")
    print(frame_text(shown_accuracy(order_words(found, args), ["error_barrier"], "points")[
        order + ["loss_barrier", "error_barrier"]]))
    return 0


def cmd_distances(args: argparse.Namespace) -> int:
    if args.workers is not None:
        at_least("--workers", args.workers, 1)
    run = open_run(args.run, args.runs_dir)
    if len(run) < 2:
        raise UserError(f"run {run.id} has {len(run)} finished mask(s); distances need at least 2")
    out = Path(args.out) if args.out else run.path / "analysis" / f"distances-{args.metric}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    client = connect(args.scheduler, args.workers) if args.scheduler else None
    try:
        bar = tqdm(desc="tiles", unit="tile", dynamic_ncols=True, disable=client is None or args.quiet)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = distances_to_file(run.masks, out, args.metric, args.per_layer, client, progress)
        bar.close()
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and args.scheduler == "local":
                cluster.close()
    if not args.quiet:
        print(frame_text(summary))
    print(out, flush=True)
    return 0

