"""The `masklab` command: a thin shell over the Python API.

Each subcommand is an `add_<name>(subparsers)` function that declares its options and sets `func` to a
`cmd_<name>(args)` function, which calls the Python API and prints. To add a subcommand, write the pair
and append `add_<name>` to COMMANDS. Heavy modules (torch, the trainer) are imported inside the commands,
so `masklab runs` and `--help` stay quick.

Exit codes: 0 success; 2 bad input (one line `masklab: error: ...` on stderr, no traceback); 1 an
internal error (a short message; the traceback with MASKLAB_DEBUG=1); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from masklab.errors import UserError

DEFAULT_RUNS_DIR = "runs"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors: one line on stderr and exit code 2, like all bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


# ---- generate ---------------------------------------------------------------------------------------------
# (flag, RunConfig field, type, metavar, help). Every one can also be set in the --config TOML file.
GENERATE_OPTIONS: list[tuple[str, str, Callable | None, str | None, str]] = [
    ("--dataset", "dataset", str, "D", "digits (embedded, default), fashion-mnist, mnist, cifar10, synthetic"),
    ("--data-root", "data_root", str, "DIR", "directory holding the dataset files"),
    ("--input-shape", "input_shape", str, "SHAPE", "synthetic dataset only: per-sample shape, e.g. 3x32x32"),
    ("--model", "model", str, "M", "mlp (default), lenet-300-100, conv2, conv4, conv6, conv8, resnet18"),
    ("--width", "width", float, "W", "width multiplier (default 1)"),
    ("--method", "method", str, "M", "edge-popup (default), biprop or dense"),
    ("--recycle", "recycle", str, "R", "none (default), iwr or iterand"),
    ("--recycle-rate", "recycle_rate", float, "R", "fraction of a layer recycled (default: the method's)"),
    ("--recycle-every", "recycle_every", int, "E", "recycle every E epochs (default: the method's)"),
    ("--recycle-warmup", "recycle_warmup", int, "E", "epochs before the first recycling (default 0)"),
    ("--sparsity", "sparsity", float, "S", "fraction of each layer's weights removed, in [0, 1) (default 0.5)"),
    ("--masks", "masks", int, "N", "number of masks (default 16)"),
    ("--epochs", "epochs", int, "E", "epochs per mask (default 20)"),
    ("--batch-size", "batch_size", int, "B", "batch size (default 128)"),
    ("--lr", "lr", float, "LR", "learning rate (default: 0.1, dense 0.01)"),
    ("--weight-seed", "weight_seed", int, "S", "seed of the random weights, shared by all masks (default 0)"),
    ("--score-seed", "score_seed", int, "S", "score seed of mask 0; mask i uses S + i (default 0)"),
    ("--data-seed", "data_seed", int, "S", "seed of batch order and augmentation (default 0)"),
    ("--vary-data-seed", "vary_data_seed", None, None, "mask i also uses data seed S + i"),
    ("--stack", "stack", str, "K", "masks trained together in one pass over the shared weights, or auto "
                                  "(default auto; mask i's result does not depend on K)"),
    ("--device", "device", str, "D", "auto (default), cpu, cuda or cuda:N"),
    ("--keep-scores", "keep_scores", None, None, "store each mask's final scores (float16)"),
    ("--snapshot-every", "snapshot_every", int, "E", "store each mask every E epochs (default 0: never)"),
    ("--name", "name", str, "NAME", "run name: the run id is NAME-<hash8> (default <dataset>-<model>-...)"),
]


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="train many masks over the same random weights into a run directory",
                       description="Train N masks that differ only in score seed (and, with --vary-data-seed, "
                       "data seed) and store them in RUNS_DIR/<run_id>. Every option can also be set in a TOML "
                       "file (--config, keys = option names with '_'); flags override the file. The last "
                       "line printed is the run directory.")
    p.add_argument("--config", metavar="F", help="TOML file of run options (e.g. a run's config.toml)")
    add_run_options(p)
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.add_argument("--resume", action="store_true", help="continue an incomplete run: train only missing masks")
    p.add_argument("--quiet", action="store_true", help="no banner, no progress bar: print only the run directory")
    p.set_defaults(func=cmd_generate)


def add_run_options(p, skip: tuple[str, ...] = ()) -> None:
    """The RunConfig options of GENERATE_OPTIONS (all default None, so the --config file shows through)."""
    for flag, dest, kind, metavar, text in GENERATE_OPTIONS:
        if dest in skip:
            continue
        if kind is None:
            p.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
        else:
            p.add_argument(flag, dest=dest, type=kind, metavar=metavar, default=None, help=text)


def config_from_args(args: argparse.Namespace):
    """The RunConfig of `generate`: the --config file, then the flags given on the command line."""
    from masklab.config import RunConfig, read_config

    base = read_config(args.config) if args.config else RunConfig()
    given = {dest: getattr(args, dest) for _, dest, *_ in GENERATE_OPTIONS if getattr(args, dest) is not None}
    return RunConfig.from_dict({**base.to_dict(), **given}, source="command line")


def cmd_generate(args: argparse.Namespace) -> int:
    from masklab.store.generate import banner, generate, prepare

    config = config_from_args(args)
    dataset, _, _ = prepare(config)  # all checks before any output or any file
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    for line in banner(config, args.runs_dir):
        say(line)
    try:
        run = generate(config, runs_dir=args.runs_dir, resume=args.resume, quiet=args.quiet, data=dataset,
                       log=say)
    except KeyboardInterrupt:
        print(f"masklab: interrupted; the finished masks are kept: rerun with --resume to continue "
              f"{os.path.join(args.runs_dir, config.run_id)}", file=sys.stderr)
        return 130
    table = run.table
    if len(table):
        acc = table["test_acc"]
        size = run.disk_bytes()["total"].mean()
        say(f"{len(run)} masks: test accuracy mean {acc.mean():.4f} (min {acc.min():.4f}, max {acc.max():.4f}); "
            f"{table['seconds'].mean():.1f} s per mask; {size:,.0f} bytes per mask on disk")
    print(run.path, flush=True)
    return 0


# ---- runs -------------------------------------------------------------------------------------------------
def add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the runs (id, model, dataset, method, sparsity, masks, accuracy)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from masklab.store.run import list_runs

    table = list_runs(args.runs_dir)
    if table.empty:
        print(f"no runs under {args.runs_dir}; make one with `masklab generate`")
        return 0
    ok = table[table["error"].isna()].copy()
    ok["masks"] = [f"{m}" if m == p else f"{m}/{p}" for m, p in zip(ok["masks"], ok["planned"])]
    cols = ["run_id", "model", "dataset", "method", "sparsity", "epochs", "masks", "test_acc"]
    if len(ok):
        print(frame_text(ok[cols]))
    for row in table[table["error"].notna()].itertuples():
        print(f"{row.run_id}: damaged: {row.error}")
    return 0


# ---- show -------------------------------------------------------------------------------------------------
def add_show(sub) -> None:
    p = sub.add_parser("show", help="a run's config, per-mask table and layer layout")
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--mask", type=int, metavar="I", help="show mask I's record and per-epoch history instead")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from masklab.store.run import open_run

    run = open_run(args.run, args.runs_dir)
    if args.mask is not None:
        record = run.record(args.mask)
        history = run.history(args.mask)
        for key, value in record.items():
            if key not in ("files", "extras"):
                print(f"{key:>14}  {value}")
        print(f"{'extras':>14}  {', '.join(record.get('extras', {})) or '-'}")
        print("\nhistory:")
        print(frame_text(history))
        return 0
    parts = run.summary()
    for key, value in parts["run"].iloc[0].items():
        print(f"{key:>20}  {value:.4f}" if isinstance(value, float) else f"{key:>20}  {value}")
    config = parts["config"]
    changed = config[[_differs(v, d) for v, d in zip(config["value"], config["default"])]]
    print("\nconfig (fields not at their default; * = part of the hash):")
    if changed.empty:
        print("  (all defaults)")
    for row in changed.itertuples():
        print(f"  {'*' if row.hashed else ' '} {row.field} = {row.value!r}")
    print("\nmasks:")
    cols = ["mask_id", "score_seed", "data_seed", "test_acc", "best_test_acc", "test_loss", "train_acc",
            "epochs", "seconds"]
    masks = parts["masks"]
    print(frame_text(masks[[c for c in cols if c in masks.columns]]) if len(masks) else "  (none finished yet)")
    print("\nlayers:")
    print(frame_text(parts["layers"][["layer", "shape", "n_bits", "n_keep", "keep", "word_start", "word_stop"]]))
    return 0


def _differs(value, default) -> bool:
    return not (value == default or (value is None and default is None))


# ---- analyze ----------------------------------------------------------------------------------------------
def add_analyze(sub) -> None:
    p = sub.add_parser("analyze",
                       help="distances, baselines, consensus, clustering, embedding, barriers: tables + figures",
                       description="Run every analysis that fits RUN; write tables under RUN/analysis/ (Parquet and "
                       "CSV) and figures under FIGURES/<run id>/ (PNG; --formats png,svg for more). The last line "
                       "printed is the path of the index page.")
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--figures", metavar="DIR", help="figures folder (default: figures/ beside the runs folder)")
    p.add_argument("--pairs", type=int, default=3, metavar="M", help="mask pairs to interpolate (default 3; 0: none)")
    p.add_argument("--points", type=int, default=30, metavar="P", help="points per interpolation path (default 30)")
    p.add_argument("--no-embedding", action="store_true",
                   help="skip the embedding (MDS below 50 masks, UMAP from 50)")
    add_formats_option(p)
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary: print only the index path")
    p.set_defaults(func=cmd_analyze)


def add_formats_option(p) -> None:
    p.add_argument("--formats", default="png", metavar="LIST",
                   help="figure formats, comma-separated: png, svg, pdf (default png; each extra format costs "
                   "about as much time again)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from masklab.report import analyze
    from masklab.store.run import open_run

    _positive("--points", args.points, 2)
    _positive("--pairs", args.pairs, 0)
    run = open_run(args.run, args.runs_dir)
    report = analyze(run, args.figures, quiet=args.quiet, pairs=args.pairs, points=args.points,
                     embedding=not args.no_embedding, formats=_check_formats(args.formats))
    if not args.quiet:
        with pd_display():
            print(frame_text(report.summary()))
        print(f"tables: {run.path / 'analysis'}  ({len(report.tables)} tables); figures: {len(report.figures)}")
        print(f"seconds: {seconds_text(report.seconds)}")
        for name, value in report.parallel_seconds.items():
            print(f"  ({name}, alongside the stages: {value:.2f} s)")
    print(report.index, flush=True)
    return 0


def _check_formats(text: str) -> tuple[str, ...]:
    from masklab.report import _check_formats as check

    return check(text)


def seconds_text(seconds: dict) -> str:
    from masklab.report import seconds_text as text

    return text(seconds)


def pd_display():
    """Print long key numbers whole (pandas would cut them at 50 characters)."""
    import pandas as pd

    return pd.option_context("display.max_colwidth", None, "display.width", 250)


# ---- interpolate ------------------------------------------------------------------------------------------
def add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="loss and accuracy along a path between two masks; barriers",
                       description="Evaluate loss and accuracy along a path from mask A to mask B of RUN and print "
                       "the curve and its barriers; with --pairs M instead, the barriers of M sampled pairs and "
                       "their correlation with Hamming distance.")
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("a", type=int, nargs="?", metavar="A", help="mask id of one end")
    p.add_argument("b", type=int, nargs="?", metavar="B", help="mask id of the other end")
    p.add_argument("--path", default="soft", choices=["soft", "hamming", "score"],
                   help="soft: W*((1-t)a + t b); hamming: swap bits keeping every layer's count; score: "
                   "top-k of interpolated scores (needs --keep-scores runs). Default soft")
    p.add_argument("--points", type=int, default=30, metavar="P", help="points including both ends (default 30)")
    p.add_argument("--orders", type=int, default=1, metavar="K", help="hamming path: K random bit orders")
    p.add_argument("--order", default="random", choices=["random", "score"], help="hamming path: bit order")
    p.add_argument("--pairs", type=int, metavar="M", help="barrier matrix over M sampled pairs instead of A B")
    p.add_argument("--seed", type=int, default=0, help="seed of bit orders and pair sampling (default 0)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.add_argument("--quiet", action="store_true", help="no progress line (on stderr); the tables still print")
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from masklab.analysis.interpolation import barrier, barrier_correlation, barrier_matrix, interpolate
    from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
    from masklab.store.run import open_run

    _positive("--points", args.points, 2)
    _positive("--orders", args.orders, 1)
    run = open_run(args.run, args.runs_dir)
    if args.pairs is not None:
        _positive("--pairs", args.pairs, 1)
        table = barrier_matrix(run, pairs=args.pairs, path=args.path, points=args.points, orders=args.orders,
                               order=args.order, random_state=args.seed, progress=not args.quiet)
        print(frame_text(table[["mask_a", "mask_b", "hamming_norm", "loss_barrier", "error_barrier"]]))
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
    print(frame_text(curve[["order", "t", "hamming_to_a", "hamming_to_b", "loss", "acc"]]))
    found = barrier(curve)
    rows = found if isinstance(found, type(curve)) else found.to_frame().T
    print(frame_text(rows[["loss_barrier", "error_barrier"]].astype(float)))
    return 0


# ---- compare ----------------------------------------------------------------------------------------------
def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="distances between the masks of two runs of the same network; joint embedding",
                       description="Cross-run distances per layer against chance (e.g. Edge-Popup vs Biprop masks "
                       "of the same weights) and a joint embedding (MDS below 50 masks, UMAP from 50). The last "
                       "line printed is the index page.")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--figures", metavar="DIR", help="figures folder (default: figures/ beside the runs folder)")
    add_formats_option(p)
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.add_argument("--quiet", action="store_true", help="no progress line and no table: print only the index path")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from masklab.report import compare
    from masklab.store.run import open_run

    report = compare(open_run(args.run_a, args.runs_dir), open_run(args.run_b, args.runs_dir), args.figures,
                     quiet=args.quiet, formats=_check_formats(args.formats))
    if not args.quiet:
        print(frame_text(report.tables["comparison"]))
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


# ---- sweep ------------------------------------------------------------------------------------------------
SWEEP_VARIES = ("method", "recycle", "sparsity", "masks", "name")  # set per cell by the sweep itself


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of runs over methods and sparsities: accuracy table and figure",
                       description="Train (or reuse: each cell is a run, cached by its config hash) a grid of runs "
                       "over --methods and --sparsities with --seeds masks each, on the model and dataset the "
                       "generate options give; print accuracy per method and sparsity and draw accuracy vs "
                       "sparsity (published CIFAR-10 numbers beside conv-N). The last line is the figure's path.")
    p.add_argument("--config", metavar="F", help="TOML file of run options shared by every cell")
    add_run_options(p, skip=SWEEP_VARIES)
    p.add_argument("--methods", default="edge-popup,biprop", metavar="LIST",
                   help="comma-separated: edge-popup, biprop, dense, with +iwr or +iterand (default edge-popup,biprop)")
    p.add_argument("--sparsities", default="0.5,0.9", metavar="LIST", help="comma-separated (default 0.5,0.9)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="masks (score seeds) per cell (default 3)")
    p.add_argument("--weight-seeds", default="0", metavar="LIST", help="comma-separated weight seeds (default 0)")
    p.add_argument("--figures", default="figures", metavar="DIR", help="where the figure goes (default figures/)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    p.add_argument("--quiet", action="store_true", help="no progress: print only the figure path")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from masklab.plots import accuracy_vs_sparsity, save_figure
    from masklab.sweep import sweep

    for dest in SWEEP_VARIES:
        setattr(args, dest, None)
    config = config_from_args(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sparsities = _floats("--sparsities", args.sparsities)
    weight_seeds = [int(x) for x in _floats("--weight-seeds", args.weight_seeds)]
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    table = sweep(config, methods, sparsities, args.seeds, weight_seeds, runs_dir=args.runs_dir, quiet=args.quiet,
                  log=say)
    say(frame_text(table.drop(columns=["runs"])))
    stem = Path(args.figures) / f"sweep-{config.dataset}-{config.model}"
    paths = save_figure(accuracy_vs_sparsity(table, title=f"{config.model} on {config.dataset}: accuracy vs "
                                             "sparsity"), stem)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    print(next(p for p in paths if p.suffix == ".png"), flush=True)
    return 0


def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of numbers (e.g. 0.5,0.9)") from None


def _positive(flag: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{flag} {value} is invalid: use at least {low}")


# ---- helpers ----------------------------------------------------------------------------------------------
def frame_text(frame) -> str:
    """A DataFrame as plain aligned text (floats with 4 decimals, no index)."""
    return frame.to_string(index=False, float_format=lambda x: f"{x:.4f}")


COMMANDS: list[Callable] = [add_generate, add_runs, add_show, add_analyze, add_interpolate, add_compare, add_sweep]


def build_parser() -> argparse.ArgumentParser:
    from masklab import __version__

    parser = _Parser(prog="masklab", description="The mask landscape of randomly initialised neural networks.")
    parser.add_argument("--version", action="version", version=f"masklab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


# Commands that, run as the program (`masklab ...`), end with os._exit once their output is flushed: tearing
# down the interpreter with torch, scikit-learn, scipy and matplotlib loaded takes about a second (a fifth of
# a warm `analyze`), and these commands leave nothing for it to do (files are closed, locks released).
FAST_EXIT_COMMANDS = ("analyze", "compare", "interpolate", "runs", "show")


def _exit_now(code: int) -> None:
    """Flush stdout and stderr and end the process without the interpreter's teardown; not under a
    profiler or a tracer (coverage), which write their results at exit, nor with $MASKLAB_NO_FAST_EXIT."""
    if sys.getprofile() is not None or sys.gettrace() is not None or os.environ.get("MASKLAB_NO_FAST_EXIT"):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = int(args.func(args) or 0)
        if argv is None and args.command in FAST_EXIT_COMMANDS:
            _exit_now(code)
        return code
    except UserError as e:
        print(f"masklab: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("masklab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `masklab runs | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if os.environ.get("MASKLAB_DEBUG"):
            raise
        print(f"masklab: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(rerun with MASKLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
