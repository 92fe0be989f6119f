"""What the parsed arguments mean: the run config of `generate` and `sweep`, the job array's resources, and
the checks of numbers and lists given on the command line."""

from __future__ import annotations

import argparse
import re

from masklab.cli.parser import run_options
from masklab.config import RunConfig, read_config
from masklab.config_file import load_tables
from masklab.errors import UserError
from masklab.scale.executors import SlurmOptions


def config_from_args(args: argparse.Namespace):
    """The RunConfig of `generate`: the --config file, then the flags given on the command line."""
    base = read_config(args.config) if args.config else RunConfig()
    return RunConfig.from_dict({**base.to_dict(), **given_run_options(args)}, source="command line")


def given_run_options(args: argparse.Namespace) -> dict:
    return {dest: getattr(args, dest) for _, dest, *_ in run_options() if getattr(args, dest, None) is not None}


def slurm_options(args: argparse.Namespace):
    """The job array's resources: the --config file's [slurm] table, then the --slurm-* flags."""
    values = dict(load_tables(args.config).get("slurm", {})) if getattr(args, "config", None) else {}
    for key in ("partition", "time", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism", "setup", "account",
                "qos", "constraint", "gres", "extra"):
        flag = getattr(args, f"slurm_{key}", None)
        if flag is not None:
            values[key] = flag
    return SlurmOptions.from_dict(values, source="[slurm] / --slurm-*")


def check_scale_args(args: argparse.Namespace) -> None:
    if args.jobs is not None:
        at_least("--jobs", args.jobs, 1)
    if getattr(args, "shard", None) and args.jobs is not None:
        raise UserError("--shard and --jobs exclude each other: --jobs N submits the N shards itself")
    if args.jobs is None and (args.no_wait or args.executor != "local"):
        raise UserError("--executor and --no-wait go with --jobs N")


def at_least(flag: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{flag} {value} is invalid: use at least {low}")


def parse_floats(flag: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of numbers (e.g. 0.5,0.9)") from None


def parse_sparsities(text: str) -> list[float]:
    """--sparsities: each a fraction removed in [0, 1), as for --sparsity (-0 is 0)."""
    values = [v + 0.0 for v in parse_floats("--sparsities", text)]
    for v in values:
        if not 0.0 <= v < 1.0:  # also refuses nan and inf
            raise UserError(f"--sparsities {text!r} holds {v:g}: a sparsity (the fraction of weights removed) must "
                            "lie in [0, 1)")
    return values


def parse_seeds(flag: str, text: str) -> list[int]:
    """A comma-separated list of seeds: integers in [0, 2^31) written as such (1.5 is refused, not truncated)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    for item in items:
        if not re.fullmatch(r"[+-]?\d+", item):
            raise UserError(f"{flag} {text!r} is not a comma-separated list of integers (e.g. 0,1,2): {item!r}")
        if len(item.lstrip("+-")) > 10 or not 0 <= int(item) < 2**31:
            raise UserError(f"{flag} {text!r} holds {item}: a seed must be an integer in [0, 2^31)")
    return [int(item) for item in items]


def distinct(flag: str, text: str, values: list) -> list:
    """values, refusing an empty list and any value given twice (it would train or count a cell twice)."""
    if not values:
        raise UserError(f"{flag} {text!r} names nothing; give a comma-separated list")
    twice = sorted({f"{v:g}" if isinstance(v, float) else str(v) for v in values if values.count(v) > 1})
    if twice:
        raise UserError(f"{flag} {text!r} names {', '.join(twice)} more than once; give each value once")
    return values
