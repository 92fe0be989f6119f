"""`masklab interpolate`: loss and accuracy along a path between two masks, and barriers."""

from __future__ import annotations

import argparse

from masklab.analysis.interpolation import barrier, barrier_correlation, barrier_matrix, interpolate
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.cli.options import at_least
from masklab.cli.text import frame_text, order_words, path_words
from masklab.errors import UserError
from masklab.store.run import open_run
from masklab.units import shown_accuracy


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
