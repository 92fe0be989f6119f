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
import re
import sys
from collections.abc import Callable

from masklab.errors import ENVIRONMENT_ERRNOS, UserError, environment_message

DEFAULT_RUNS_DIR = "runs"


def RUNS_DIR() -> argparse.ArgumentParser:  # noqa: N802 (a parent parser, named like the option it adds)
    """The parent parser of every command that finds runs: --runs-dir."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    return p


def QUIET() -> argparse.ArgumentParser:  # noqa: N802
    """The parent parser of every command that shows progress: --quiet."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quiet", action="store_true", help="no progress and no summary: print only the last line "
                   "(the path of what the command made)")
    return p


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors: one line on stderr and exit code 2, like all bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


# ---- generate ---------------------------------------------------------------------------------------------
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="train many masks over the same random weights into a run directory",
                       description="Train N masks that differ only in score seed (and, with --vary-data-seed, "
                       "data seed) and store them in RUNS_DIR/<run_id>. Every option can also be set in a TOML "
                       "file (--config, keys = option names with '_'); flags override the file. The last "
                       "line printed is the run directory.", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("--config", metavar="F", help="TOML file of run options (e.g. a run's config.toml)")
    add_run_options(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue an incomplete run: train only the missing masks. With RUN (a run directory or "
                   "id): continue that run with its own config.toml (options may only repeat it, or raise "
                   "--masks to extend it)")
    add_scale_options(p)
    p.set_defaults(func=cmd_generate)


def add_scale_options(p) -> None:
    """--shard, --jobs, --executor and the job array's --slurm-* options (also a [slurm] table in --config)."""
    g = p.add_argument_group("beyond one machine (see README: Beyond one machine)")
    if p.prog.endswith("generate"):
        g.add_argument("--shard", metavar="I/N", help="train only shard I of N (the masks i with i %% N == I) into "
                       "the same run directory; N shards can run at once, and the run is the same, bit for bit")
    g.add_argument("--jobs", type=int, metavar="N", help="run N shard jobs through submitit and wait for them "
                   "(rerunning the same command resumes)")
    g.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="with --jobs: local (N processes here, threads split between them) or slurm (one job "
                   "array; requeued on preemption). Default local")
    g.add_argument("--no-wait", action="store_true", help="with --jobs: submit, print the job ids and return")
    g.add_argument("--slurm-partition", metavar="P", help="SLURM partition")
    g.add_argument("--slurm-time", type=int, metavar="MIN", help="minutes per task (default 60; a task that runs "
                   "out is requeued)")
    g.add_argument("--slurm-gpus-per-task", type=int, metavar="G", help="GPUs per task (default 0)")
    g.add_argument("--slurm-cpus-per-task", type=int, metavar="C", help="CPUs per task")
    g.add_argument("--slurm-mem", metavar="M", help="memory per task, e.g. 16GB")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="K", help="tasks running at once (default 256)")
    g.add_argument("--slurm-setup", action="append", metavar="CMD", help="a shell line run before each task, e.g. "
                   "'module load cuda' (repeatable)")


def slurm_options(args: argparse.Namespace):
    """The job array's resources: the --config file's [slurm] table, then the --slurm-* flags."""
    from masklab.config import load_tables
    from masklab.scale.executors import SlurmOptions

    values = dict(load_tables(args.config).get("slurm", {})) if getattr(args, "config", None) else {}
    for key in ("partition", "time", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism", "setup"):
        flag = getattr(args, f"slurm_{key}", None)
        if flag is not None:
            values[key] = flag
    return SlurmOptions.from_dict(values, source="[slurm] / --slurm-*")


def _check_scale_args(args: argparse.Namespace) -> None:
    if args.jobs is not None:
        _positive("--jobs", args.jobs, 1)
    if getattr(args, "shard", None) and args.jobs is not None:
        raise UserError("--shard and --jobs exclude each other: --jobs N submits the N shards itself")
    if args.jobs is None and (args.no_wait or args.executor != "local"):
        raise UserError("--executor and --no-wait go with --jobs N")


def run_options() -> list[tuple[str, str, type | None, str | None, str]]:
    """(flag, RunConfig field, parse type (None: a switch), metavar, help) of every run option, made from
    the fields of RunConfig (their help and metavar live beside the field, `masklab.config.option`)."""
    from dataclasses import fields

    from masklab.config import RunConfig, default_text, field_type

    out = []
    for f in fields(RunConfig):
        if f.name.startswith("_") or not f.metadata.get("flag", True):  # (the import fields have no flag)
            continue
        kind = f.metadata.get("cli_type") or field_type(f.name)
        default = default_text(f.name)
        text = f.metadata["help"] + (f" (default {default})" if default else "")
        switch = kind is bool and f.default is False
        out.append((f"--{f.name.replace('_', '-')}", f.name, None if switch else kind, f.metadata.get("metavar"),
                    text))
    return out


def add_run_options(p, skip: tuple[str, ...] = ()) -> None:
    """The RunConfig options (all default None, so that the --config file shows through)."""
    from masklab.config import parse_bool

    for flag, dest, kind, metavar, text in run_options():
        if dest in skip:
            continue
        if kind is None:
            p.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
        else:
            p.add_argument(flag, dest=dest, type=parse_bool if kind is bool else kind, metavar=metavar, default=None,
                           help=text)


def config_from_args(args: argparse.Namespace):
    """The RunConfig of `generate`: the --config file, then the flags given on the command line."""
    from masklab.config import RunConfig, read_config

    base = read_config(args.config) if args.config else RunConfig()
    return RunConfig.from_dict({**base.to_dict(), **_given(args)}, source="command line")


def _given(args: argparse.Namespace) -> dict:
    return {dest: getattr(args, dest) for _, dest, *_ in run_options() if getattr(args, dest, None) is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    from masklab.generation import banner, generate, prepare, resume_config

    _check_scale_args(args)
    if isinstance(args.resume, str):  # --resume RUN: that run's own config, with what the flags repeat or raise
        from masklab.config import load_toml

        from_file = {k.replace("-", "_"): v for k, v in (load_toml(args.config) if args.config else {}).items()}
        changes = {**from_file, **_given(args)}
        config, runs_dir = resume_config(args.resume, args.runs_dir, changes)
        args.runs_dir, args.resume = str(runs_dir), True
    else:
        config = config_from_args(args)
    dataset, _, _ = prepare(config)  # all checks before any output or any file
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    for line in banner(config, args.runs_dir):
        say(line)
    if args.jobs is not None:
        return _generate_jobs(args, config, say)
    try:
        run = generate(config, runs_dir=args.runs_dir, resume=bool(args.resume), quiet=args.quiet, data=dataset,
                       log=say, shard=args.shard)
    except KeyboardInterrupt:
        print(f"masklab: interrupted; the finished masks are kept: rerun with --resume to continue "
              f"{os.path.join(args.runs_dir, config.run_id)}", file=sys.stderr)
        return 130
    table = run.table
    if len(table):
        from masklab.units import percent

        acc = table["test_acc"]
        say(f"{len(run)} masks: test accuracy mean {percent(acc.mean())} (min {percent(acc.min())}, max "
            f"{percent(acc.max())}); {table['seconds'].mean():.1f} s per mask; {bytes_text(run)}")
    print(run.path, flush=True)
    return 0


def bytes_text(run, size: dict | None = None) -> str:
    """Bytes on disk per mask as `generate` and `show` print them (`Run.bytes_per_mask`, or `size` when the
    caller has it already)."""
    size = size or run.bytes_per_mask()
    text = f"{size['mask file']:,.0f} bytes per mask file"
    extras = size["mask with its extras"]
    return text + (f", {extras:,.0f} per mask with its record and extras" if extras == extras else "")


def _generate_jobs(args: argparse.Namespace, config, say) -> int:
    """`generate --jobs N`: the run's N shards through submitit."""
    from masklab.scale.executors import submit_shards
    from masklab.store.run import Run

    options = slurm_options(args)
    submission = submit_shards([config], args.runs_dir, args.jobs, args.executor, slurm=options,
                               wait=not args.no_wait, quiet=args.quiet, log=say)
    path = submission.runs[0]
    if args.no_wait:
        print(f"jobs: {' '.join(submission.job_ids)}", flush=True)
    else:
        run = Run(path)
        say(f"{len(run)} of {config.masks} masks stored by {args.jobs} shard job(s)")
    print(path, flush=True)
    return 0


# ---- runs -------------------------------------------------------------------------------------------------
def add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the runs (id, model, dataset, method, sparsity, masks, accuracy)",
                       description="List every run under --runs-dir, one line each: its id, model, dataset, "
                       "method, sparsity, epochs, masks finished (of those planned when the run is incomplete) "
                       "and the mean final test accuracy (%%). Damaged runs are named with what is wrong.",
                       parents=[RUNS_DIR()])
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
        from masklab.units import shown_accuracy

        print(frame_text(shown_accuracy(ok[cols], ["test_acc"])))
    for row in table[table["error"].notna()].itertuples():
        print(f"{row.run_id}: damaged: {row.error}")
    return 0


# ---- show -------------------------------------------------------------------------------------------------
def add_show(sub) -> None:
    p = sub.add_parser("show", help="a run's config, per-mask table and layer layout", parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--mask", type=int, metavar="I", help="show mask I's record and per-epoch history instead")
    p.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from masklab.store.run import open_run
    from masklab.units import shown_accuracy

    run = open_run(args.run, args.runs_dir)
    if args.mask is not None:
        record = run.record(args.mask)
        history = shown_accuracy(run.history(args.mask), ["train_acc", "test_acc"])
        for key, value in record.items():
            if key not in ("files", "extras"):
                print(f"{key:>14}  {_value_text(key, value)}")
        print(f"{'extras':>14}  {', '.join(record.get('extras', {})) or '-'}")
        print("\nhistory:")
        print(frame_text(history) if len(history) else
              "  (none: imported masks)" if run.imported is not None else "  (none recorded)")
        return 0
    parts = run.summary()
    sizes = {}
    for key, value in parts["run"].iloc[0].items():
        if str(key).startswith("bytes per "):
            sizes[str(key).removeprefix("bytes per ")] = value
            continue
        print(f"{key:>20}  {_value_text(str(key), value)}")
    print(f"{'on disk':>20}  {bytes_text(run, sizes)}")
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
    masks = shown_accuracy(parts["masks"], ["test_acc", "best_test_acc", "train_acc"])
    print(frame_text(masks[[c for c in cols if c in masks.columns]]) if len(masks) else "  (none finished yet)")
    print("\nlayers:")
    print(frame_text(parts["layers"][["layer", "shape", "n_bits", "n_keep", "keep", "word_start", "word_stop"]]))
    return 0


def _value_text(key: str, value) -> str:
    """A record or summary value as `show` prints it: accuracies in %, other floats with 4 decimals."""
    from masklab.units import percent

    if isinstance(value, float):
        return percent(value) if "acc" in key else f"{value:.4f}"
    return str(value)


def _differs(value, default) -> bool:
    return not (value == default or (value is None and default is None))


# ---- analyze ----------------------------------------------------------------------------------------------
def add_analyze(sub) -> None:
    p = sub.add_parser("analyze",
                       help="distances, baselines, consensus, clustering, embedding, barriers: tables + figures",
                       description="Run every analysis that fits RUN; write tables under RUN/analysis/ (Parquet and "
                       "CSV) and figures under FIGURES/<run id>/ (PNG; --formats png,svg for more). The last line "
                       "printed is the path of the index page.", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--figures", metavar="DIR", help="figures folder (default: figures/ beside the runs folder)")
    p.add_argument("--pairs", type=int, default=3, metavar="M", help="mask pairs to interpolate (default 3; 0: none)")
    p.add_argument("--points", type=int, default=30, metavar="P", help="points per interpolation path (default 30)")
    p.add_argument("--no-embedding", action="store_true",
                   help="skip the embedding (MDS below 50 masks, UMAP from 50)")
    add_formats_option(p)
    p.set_defaults(func=cmd_analyze)


def add_formats_option(p) -> None:
    p.add_argument("--formats", default="png", metavar="LIST",
                   help="figure formats, comma-separated: png, svg, pdf (default png; each extra format costs "
                   "about as much time again)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from masklab.report import analyze, check_formats, seconds_text
    from masklab.store.run import open_run

    _positive("--points", args.points, 2)
    _positive("--pairs", args.pairs, 0)
    run = open_run(args.run, args.runs_dir)
    report = analyze(run, args.figures, quiet=args.quiet, pairs=args.pairs, points=args.points,
                     embedding=not args.no_embedding, formats=check_formats(args.formats))
    if not args.quiet:
        print(pairs_text(report.summary()))
        print(f"tables: {run.path / 'analysis'}  ({len(report.tables)} tables); figures: {len(report.figures)}")
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


# ---- verify -----------------------------------------------------------------------------------------------
def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check every file of a run in full; --repair fixes what it can",
                       description="Check run.json, config.toml, every record, mask file and extra (size and "
                       "checksum), masks.bits (every row) and that nothing the run writes is a link. With "
                       "--repair: masks with failing files move to RUN/quarantine/ (then `masklab generate "
                       "--resume RUN` retrains them), an edited config.toml is restored from run.json and "
                       "masks.bits is rebuilt. Exit 0 when clean or repaired, 2 when problems remain.",
                       parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--repair", action="store_true", help="quarantine failing masks, restore config.toml, rebuild "
                   "masks.bits")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from masklab.store.files import restore_hint
    from masklab.store.integrity import verify
    from masklab.store.run import resolve_run

    path = resolve_run(args.run, args.runs_dir)
    table = verify(path, repair=args.repair)
    print(f"verified {path}:")
    counts = table.groupby("kind", sort=False)["status"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["ok", "stale", "problem", "repaired"], fill_value=0)
    print(frame_text(counts.reset_index().rename(columns={"kind": "checked"})))
    found = table[table["status"].isin(["problem", "repaired", "stale"])]
    for row in found.itertuples():
        print(f"{row.status:>9}  {row.path}: {row.detail}" + (f" -> {row.action}" if row.action else ""))
    problems = table[table["status"] == "problem"]
    quarantined = sorted({int(i) for i in table.loc[table["action"].str.contains("quarantine"), "mask_id"].dropna()})
    if len(problems):
        first = problems.iloc[0]
        hint = "" if args.repair or "--repair" in first["detail"] else \
            f"; `masklab verify {path} --repair` fixes what it can"
        raise UserError(f"run {path}: {len(problems)} problem(s) remain, the first: {first['path']}: "
                        f"{first['detail']}{hint}")
    if quarantined:
        many = len(quarantined) > 1
        print(f"mask{'s' if many else ''} {', '.join(map(str, quarantined))} moved to {path / 'quarantine'}; "
              f"{restore_hint(path, many)}")
    print("all files verified" if not len(found) else "repaired" if args.repair else "no problems")
    return 0


# ---- interpolate ------------------------------------------------------------------------------------------
def add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="loss and accuracy along a path between two masks; barriers",
                       description="Evaluate loss and accuracy along a path from mask A to mask B of RUN and print "
                       "the curve and its barriers; with --pairs M instead, the barriers of M sampled pairs and "
                       "their correlation with Hamming distance.", parents=[RUNS_DIR(), QUIET()])
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
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from masklab.analysis.interpolation import barrier, barrier_correlation, barrier_matrix, interpolate
    from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
    from masklab.store.run import open_run
    from masklab.units import shown_accuracy

    _positive("--points", args.points, 2)
    _positive("--orders", args.orders, 1)
    run = open_run(args.run, args.runs_dir)
    if args.pairs is not None:
        _positive("--pairs", args.pairs, 1)
        table = barrier_matrix(run, pairs=args.pairs, path=args.path, points=args.points, orders=args.orders,
                               order=args.order, random_state=args.seed, progress=not args.quiet)
        print(f"run {run.id}: barriers of {len(table.groupby(['mask_a', 'mask_b']))} sampled mask pairs (seed "
              f"{args.seed}), {_path_words(args)}; loss barrier in nats, error barrier in percentage points")
        columns = ["mask_a", "mask_b"] + (["order"] if args.path == "hamming" else []) + \
            ["hamming_norm", "loss_barrier", "error_barrier"]
        print(frame_text(shown_accuracy(_order_words(table, args), ["error_barrier"], "points")[columns]))
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
    print(f"run {run.id}: masks {args.a} -> {args.b}, {_path_words(args)}; loss in nats, accuracy in %, "
          "Hamming distances to both ends as fractions of the bits")
    order = ["order"] if args.path == "hamming" else []
    shown = shown_accuracy(_order_words(curve, args), ["acc"])
    print(frame_text(shown[order + ["t", "hamming_to_a", "hamming_to_b", "loss", "acc"]]))
    found = barrier(curve)
    print("barriers (loss in nats, error in percentage points):")
    print(frame_text(shown_accuracy(_order_words(found, args), ["error_barrier"], "points")[
        order + ["loss_barrier", "error_barrier"]]))
    return 0


def _path_words(args: argparse.Namespace) -> str:
    """"soft path, 30 points" / "hamming path in 3 random bit orders, 30 points" / "hamming path in score order"."""
    if args.path != "hamming":
        how = f"{args.path} path"
    elif args.order == "score":
        how = "hamming path in score order"
    else:
        how = f"hamming path in {args.orders} random bit order{'s' if args.orders > 1 else ''}"
    return f"{how}, {args.points} points"


def _order_words(table, args: argparse.Namespace):
    """The `order` column as words ("random order 0", "score order") on the hamming path."""
    if args.path != "hamming" or "order" not in table.columns:
        return table
    words = ["score order" if args.order == "score" else f"random order {int(k)}" for k in table["order"]]
    return table.assign(order=words)


# ---- compare ----------------------------------------------------------------------------------------------
def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="distances between the masks of two runs of the same network; joint embedding",
                       description="Compare the masks of RUN_A and RUN_B, two runs of the same network (e.g. "
                       "Edge-Popup vs Biprop masks of the same weights): per layer, the mean percent matching and "
                       "Jaccard index within A (pairs of A's masks), within B, and across (one mask of each), "
                       "beside chance; and a joint embedding (MDS below 50 masks, UMAP from 50). Tables, figures "
                       "and an index page go to FIGURES/compare-A-vs-B/; the last line printed is the page.",
                       parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run_a", metavar="RUN_A", help="the first run (A): a run directory or a run id under --runs-dir")
    p.add_argument("run_b", metavar="RUN_B", help="the second run (B), of the same network (model, width and "
                   "dataset) as RUN_A, e.g. Biprop masks of A's weights")
    p.add_argument("--figures", metavar="DIR", help="figures folder (default: figures/ beside the runs folder)")
    add_formats_option(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from masklab.report import check_formats, compare, seconds_text
    from masklab.store.run import open_run

    report = compare(open_run(args.run_a, args.runs_dir), open_run(args.run_b, args.runs_dir), args.figures,
                     quiet=args.quiet, formats=check_formats(args.formats))
    if not args.quiet:
        from masklab.report import comparison_text

        print("matching in %, Jaccard as a fraction; within A / within B: pairs of one run's masks, across: one "
              "mask of each run")
        print(frame_text(comparison_text(report.tables["comparison"])))
        print(f"seconds: {seconds_text(report.seconds)}")
    print(report.index, flush=True)
    return 0


# ---- distances --------------------------------------------------------------------------------------------
def add_distances(sub) -> None:
    p = sub.add_parser("distances", help="all-pairs distances of a run's masks into a file, in process or on Dask",
                       description="Compute the distance between every pair of RUN's masks (whole mask, and per "
                       "layer with --per-layer) and write them to --out: .parquet/.csv as the long table "
                       "(mask_a, mask_b, layer, metric, value) or .npy as the square matrix (layers first with "
                       "--per-layer). With --scheduler the pairs are computed as tiles on a Dask cluster: "
                       "'local' starts one on this machine, an address (tcp://host:8786) uses a running "
                       "scheduler (e.g. dask-jobqueue's SLURMCluster); its workers read the run's bit matrix "
                       "from the shared filesystem. Prints a per-layer summary; the last line is the file.",
                       parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--metric", default="hamming_norm", choices=["hamming", "hamming_norm", "matching", "jaccard"],
                   help="default hamming_norm")
    p.add_argument("--per-layer", action="store_true", help="also every layer, beside the whole mask")
    p.add_argument("--scheduler", metavar="S", help="local, or the address of a Dask scheduler (default: no Dask, "
                   "the numba kernel in this process)")
    p.add_argument("--workers", type=int, metavar="N", help="--scheduler local: worker processes (default: one "
                   "per core)")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN/analysis/distances-<metric>.parquet)")
    p.set_defaults(func=cmd_distances)


def cmd_distances(args: argparse.Namespace) -> int:
    from pathlib import Path

    from masklab.scale.tiles import connect, distances_to_file
    from masklab.store.run import open_run

    if args.workers is not None:
        _positive("--workers", args.workers, 1)
    run = open_run(args.run, args.runs_dir)
    if len(run) < 2:
        raise UserError(f"run {run.id} has {len(run)} finished mask(s); distances need at least 2")
    out = Path(args.out) if args.out else run.path / "analysis" / f"distances-{args.metric}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    client = connect(args.scheduler, args.workers) if args.scheduler else None
    try:
        from tqdm import tqdm

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


# ---- sweep ------------------------------------------------------------------------------------------------
SWEEP_VARIES = ("method", "recycle", "sparsity", "masks", "name")  # set per cell by the sweep itself


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of runs over methods and sparsities: accuracy table and figure",
                       description="Train (or reuse: each cell is a run, cached by its config hash) a grid of runs "
                       "over --methods and --sparsities with --seeds masks each, on the model and dataset the "
                       "generate options give; print accuracy per method and sparsity and draw accuracy vs "
                       "sparsity (published CIFAR-10 numbers beside conv-N, the dense network and chance as "
                       "lines). The figure (PNG, SVG) and the table (CSV) are named by the sweep's own id, "
                       "FIGURES/sweep-<dataset>-<model>-<hash of the grid and base config>, so another sweep "
                       "never overwrites them. The last line is the figure's path.",
                       parents=[RUNS_DIR(), QUIET()])
    p.add_argument("--config", metavar="F", help="TOML file of run options shared by every cell")
    add_run_options(p, skip=SWEEP_VARIES)
    p.add_argument("--methods", default="edge-popup,biprop,dense", metavar="LIST",
                   help="comma-separated: edge-popup, biprop, dense, with +iwr or +iterand (default "
                   "edge-popup,biprop,dense: dense is the trained network the figure draws as a reference)")
    p.add_argument("--sparsities", default="0.5,0.9", metavar="LIST", help="comma-separated (default 0.5,0.9)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="masks (score seeds) per cell (default 3)")
    p.add_argument("--weight-seeds", default="0", metavar="LIST", help="comma-separated weight seeds (default 0)")
    p.add_argument("--figures", default="figures", metavar="DIR", help="where the figure goes (default figures/)")
    add_scale_options(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from masklab.config import MAX_MASKS
    from masklab.plots import accuracy_vs_sparsity, save_figure
    from masklab.sweep import sweep, sweep_id

    for dest in SWEEP_VARIES:
        setattr(args, dest, None)
    config = config_from_args(args)
    if args.seeds > MAX_MASKS:
        raise UserError(f"--seeds {args.seeds} is invalid: a cell is one run of at most {MAX_MASKS:,} masks")
    methods = _distinct("--methods", args.methods, [m.strip() for m in args.methods.split(",") if m.strip()])
    sparsities = _distinct("--sparsities", args.sparsities, _sparsities(args.sparsities))
    weight_seeds = _distinct("--weight-seeds", args.weight_seeds, _seeds("--weight-seeds", args.weight_seeds))
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    _check_scale_args(args)
    if args.no_wait:
        raise UserError("sweep --no-wait is not supported: the sweep's table needs every cell; run it again "
                        "later instead (finished cells are reused)")
    table = sweep(config, methods, sparsities, args.seeds, weight_seeds, runs_dir=args.runs_dir, quiet=args.quiet,
                  log=say, jobs=args.jobs, executor=args.executor,
                  slurm=slurm_options(args) if args.jobs else None)
    from masklab.units import shown_accuracy

    name = sweep_id(config, methods, sparsities, args.seeds, weight_seeds)
    say(f"{name}: test accuracy in %, differences to published numbers in percentage points")
    shown = shown_accuracy(table.drop(columns=["runs"]), ["acc_mean", "acc_std", "best_mean", "best_std", "chance"])
    say(frame_text(shown))
    stem = Path(args.figures) / name
    figure = accuracy_vs_sparsity(table, title=f"{config.model} on {config.dataset}: accuracy vs sparsity "
                                  f"({name})")
    paths = save_figure(figure, stem)
    from masklab.store.files import atomic_write

    atomic_write(stem.with_suffix(".csv"), table.to_csv(index=False).encode(), durable=False)
    print(next(p for p in paths if p.suffix == ".png"), flush=True)
    return 0


def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of numbers (e.g. 0.5,0.9)") from None


def _sparsities(text: str) -> list[float]:
    """--sparsities: each a fraction removed in [0, 1), as for --sparsity (-0 is 0)."""
    values = [v + 0.0 for v in _floats("--sparsities", text)]
    for v in values:
        if not 0.0 <= v < 1.0:  # also refuses nan and inf
            raise UserError(f"--sparsities {text!r} holds {v:g}: a sparsity (the fraction of weights removed) must "
                            "lie in [0, 1)")
    return values


def _seeds(flag: str, text: str) -> list[int]:
    """A comma-separated list of seeds: integers in [0, 2^31) written as such (1.5 is refused, not truncated)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    for item in items:
        if not re.fullmatch(r"[+-]?\d+", item):
            raise UserError(f"{flag} {text!r} is not a comma-separated list of integers (e.g. 0,1,2): {item!r}")
        if len(item.lstrip("+-")) > 10 or not 0 <= int(item) < 2**31:
            raise UserError(f"{flag} {text!r} holds {item}: a seed must be an integer in [0, 2^31)")
    return [int(item) for item in items]


def _distinct(flag: str, text: str, values: list) -> list:
    """values, refusing an empty list and any value given twice (it would train or count a cell twice)."""
    if not values:
        raise UserError(f"{flag} {text!r} names nothing; give a comma-separated list")
    twice = sorted({f"{v:g}" if isinstance(v, float) else str(v) for v in values if values.count(v) > 1})
    if twice:
        raise UserError(f"{flag} {text!r} names {', '.join(twice)} more than once; give each value once")
    return values


def _positive(flag: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{flag} {value} is invalid: use at least {low}")


# ---- helpers ----------------------------------------------------------------------------------------------
# ---- import / export (masklab/interop, docs/interop.md) --------------------------------------------------
def add_import(sub) -> None:
    p = sub.add_parser("import", help="make a run from masks trained elsewhere (hidden-networks, Biprop, IWR code, "
                       "torch.nn.utils.prune, npz)",
                       description="One run whose masks are the files' masks, one file = one mask, in the order "
                       "given. hidden-networks (also Biprop and the IWR code): the mask is their rule, zero the "
                       "int((1 - K) * n) smallest |scores| of each layer, with K = --keep (their prune_rate, the "
                       "fraction KEPT; a Biprop checkpoint's own prune_rate is used when it has one). torch-prune and "
                       "npz hold their masks. The weights come with the files and are stored with the run. The last "
                       "line printed is the run directory.", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("files", nargs="+", metavar="FILE", help="checkpoint or mask files, one mask each")
    p.add_argument("--format", required=True, metavar="F", help="hidden-networks, torch-prune or npz")
    p.add_argument("--keep", type=float, metavar="K", help="fraction of each layer KEPT (the reference code's "
                   "prune_rate): hidden-networks keeps n - int((1 - K) * n); for torch-prune/npz: check the masks "
                   "keep that")
    p.add_argument("--sparsity", type=float, metavar="S", help="fraction of each layer removed: hidden-networks "
                   "--keep 1 - S; for torch-prune/npz: check the masks keep n - int(S * n) (masklab's rule)")
    p.add_argument("--method", metavar="M", help="edge-popup or biprop (default: what the files say, else "
                   "edge-popup)")
    p.add_argument("--model", metavar="M", help="the masklab model the files are (their FC is lenet-300-100): "
                   "layers are checked against it and each mask is evaluated")
    p.add_argument("--dataset", metavar="D", help="the dataset to evaluate on (with --model)")
    p.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--width", type=float, default=1.0, metavar="W", help="width multiplier of --model (default 1)")
    p.add_argument("--name", metavar="NAME", help="run name: the run id is NAME-<hash8> (default "
                   "import-<format>[-<model>])")
    p.add_argument("--allow-different-weights", action="store_true", help="import files whose weights differ "
                   "(each mask keeps its own weights; the run says so)")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from masklab.interop.importer import import_masks

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
        from masklab.units import percent

        say(f"test accuracy mean {percent(acc.mean())} (min {percent(acc.min())}, max {percent(acc.max())})")
    print(run.path, flush=True)
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write one mask as a plain PyTorch state dict, torch-prune state, a "
                       "hidden-networks checkpoint or an npz",
                       description="Write mask I of RUN to --out FILE (atomically). state-dict: the effective "
                       "weights of masklab.plain_model(run) (plain nn.Linear/nn.Conv2d, nn.BatchNorm2d); torch-prune: "
                       "<layer>.weight_orig + <layer>.weight_mask; hidden-networks: weights and scores in that code's "
                       "layout with the prune_rate its rule needs; npz: bool masks and weights per layer. The last "
                       "line printed is the file.", parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="run directory or run id")
    p.add_argument("--mask", type=int, required=True, metavar="I", help="mask id")
    p.add_argument("--format", required=True, metavar="F", help="state-dict, torch-prune, hidden-networks or npz")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from masklab.interop.exporter import export_mask
    from masklab.store.run import open_run

    run = open_run(args.run, args.runs_dir)
    print(export_mask(run, args.mask, args.format, args.out), flush=True)
    return 0


def pairs_text(frame) -> str:
    """A two-column (name, value) DataFrame as lines "name  value": names right-aligned, values left-aligned
    (long values stay readable; `to_string` would pad every one to the longest)."""
    names = [str(v) for v in frame.iloc[:, 0]]
    width = max((len(n) for n in names), default=0)
    return "\n".join(f"{n:>{width}}  {v}" for n, v in zip(names, frame.iloc[:, 1]))


def frame_text(frame) -> str:
    """A DataFrame as plain aligned text (floats with 4 decimals, no index)."""
    return frame.to_string(index=False, float_format=lambda x: f"{x:.4f}")


COMMANDS: list[Callable] = [add_generate, add_runs, add_show, add_analyze, add_verify, add_interpolate, add_compare,
                            add_distances, add_sweep, add_import, add_export]


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


# Collect cycles every 50,000 net allocations instead of 700: a command imports torch, scipy, pandas and
# matplotlib, millions of objects that are never garbage, and the default pace spent 0.4 s of a 6 s analyze
# scanning them. Cycles are still collected, only less often. Set in the command's process, never on import.
GC_THRESHOLD = (50_000, 20, 20)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        import gc

        gc.set_threshold(*GC_THRESHOLD)
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
    except OSError as e:  # a fault of the environment met where no write site named it (disk full, read-only)
        if e.errno not in ENVIRONMENT_ERRNOS or os.environ.get("MASKLAB_DEBUG"):
            return _internal(e)
        print(f"masklab: error: {' '.join(environment_message(e).split())}", file=sys.stderr)
        return 2
    except Exception as e:
        return _internal(e)


def _internal(e: Exception) -> int:
    if os.environ.get("MASKLAB_DEBUG"):
        raise e
    print(f"masklab: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
          "(rerun with MASKLAB_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
