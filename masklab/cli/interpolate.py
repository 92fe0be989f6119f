"""`masklab interpolate`: loss and accuracy along a path between two masks, and barriers."""

from __future__ import annotations

import argparse
from pathlib import Path

from masklab import files as W
from masklab.analysis.interpolation import (
    DEFAULT_EVAL_SAMPLES,
    barrier,
    barrier_correlation,
    barrier_matrix,
    interpolate,
)
from masklab.analysis.paths.geometry import check_args
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.cli.options import at_least
from masklab.cli.text import frame_text, order_words, path_words
from masklab.errors import UserError
from masklab.store.run import Run, open_run
from masklab.units import count, shown_accuracy


def cmd_interpolate(args: argparse.Namespace) -> int:
    at_least("--points", args.points, 2)
    at_least("--orders", args.orders, 1)
    check_args(args.path, args.points, args.orders, args.order)  # bounds, before the run is opened
    if args.out is not None:
        if Path(args.out).suffix not in W.TABLE_SUFFIXES:
            raise UserError(f"--out {args.out}: give a .csv or .parquet file")
        W.check_target(args.out)  # outside runs, no link: refused before the work
    run = open_run(args.run, args.runs_dir)
    eval_samples = None if args.full_test else DEFAULT_EVAL_SAMPLES
    say = (lambda *_: None) if args.quiet else print
    if args.pairs is not None:
        at_least("--pairs", args.pairs, 1)
        table = barrier_matrix(run, pairs=args.pairs, path=args.path, points=args.points, orders=args.orders,
                               order=args.order, random_state=args.seed, eval_samples=eval_samples,
                               progress=not args.quiet)
        say(f"run {run.id}: barriers of {len(table.groupby(['mask_a', 'mask_b']))} sampled mask pairs (seed "
            f"{args.seed}), {path_words(args)}; loss barrier in nats, error barrier in percentage points; "
            f"{evaluation_words(run, eval_samples)}")
        columns = ["mask_a", "mask_b"] + (["order"] if args.path == "hamming" else []) + \
            ["hamming_norm", "loss_barrier", "error_barrier"]
        say(frame_text(shown_accuracy(order_words(table, args), ["error_barrier"], "points")[columns]))
        if len(table) >= MIN_CORRELATION_PAIRS:
            say(frame_text(barrier_correlation(table)))
        else:
            say(f"(no correlation with Hamming distance: {count(len(table), 'pair')}, at least {MIN_CORRELATION_PAIRS} "
                "needed; use --pairs)")
        return write_out(args, table)
    if args.a is None or args.b is None:
        raise UserError("give two mask ids A B (e.g. `masklab interpolate RUN 0 1`) or --pairs M")
    curve = interpolate(run, args.a, args.b, args.path, points=args.points, orders=args.orders, order=args.order,
                        random_state=args.seed, eval_samples=eval_samples, progress=not args.quiet)
    say(f"run {run.id}: masks {args.a} -> {args.b}, {path_words(args)}; loss in nats, accuracy in %, "
        f"Hamming distances to both ends as fractions of the bits; {evaluation_words(run, eval_samples)}")
    order = ["order"] if args.path == "hamming" else []
    shown = shown_accuracy(order_words(curve, args), ["acc"])
    say(frame_text(shown[order + ["t", "hamming_to_a", "hamming_to_b", "loss", "acc"]]))
    found = barrier(curve)
    say("barriers (loss in nats, error in percentage points):")
    say(frame_text(shown_accuracy(order_words(found, args), ["error_barrier"], "points")[
        order + ["loss_barrier", "error_barrier"]]))
    return write_out(args, curve)


def evaluation_words(run: Run, eval_samples: int | None) -> str:
    """What every point (both ends too) is evaluated on: the fixed evaluation subset or the whole test split
    (why t=0 can differ from the accuracy `show` records, which is on the whole test split)."""
    n_test = run.dataset().n_test
    if eval_samples is None or eval_samples >= n_test:
        return f"every point evaluated on the whole test split ({n_test:,} images)"
    return (f"every point, both ends too, evaluated on a fixed subset of {eval_samples:,} of the {n_test:,} test "
            "images (so t=0 and t=1 differ from the accuracy `show` records on all of them; --full-test uses all)")


def write_out(args: argparse.Namespace, table) -> int:
    """Write the table to --out (CSV or Parquet) and print its path as the last line."""
    if args.out is not None:
        print(W.write_frame(Path(args.out), table, root=Path(args.out).parent), flush=True)
    return 0
