"""The `masklab` command: a thin shell over the Python API.

parser.py declares every command and its options; each command runs as `cmd_<command>(args)` in the module
of its family (COMMANDS below: train.py, runs.py, analyze.py, interpolate.py, distances.py, interop.py;
each imports what its commands run and no more), which calls the Python API and prints (text.py: the text;
options.py: what the parsed options mean). To add a command, declare it in parser.py and write its `cmd_`
function in its family's module.

Exit codes: 0 success; 2 bad input (one line `masklab: error: ...` on stderr, no traceback); 1 an
internal error (a short message; the traceback with MASKLAB_DEBUG=1); 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from masklab import __version__
from masklab.cli.parser import (
    Parser,
    add_analyze,
    add_compare,
    add_distances,
    add_export,
    add_export_history,
    add_generate,
    add_import,
    add_interpolate,
    add_jobs,
    add_results,
    add_runs,
    add_show,
    add_sweep,
    add_verify,
)
from masklab.errors import ENVIRONMENT_ERRNOS, UserError, environment_message

# command -> (how parser.py declares it, the module of masklab.cli that runs it). The module is imported when
# its command runs, not here: `masklab --help` and the parser take 0.07 s, importing every family's module
# (torch, pandas, matplotlib, the analyses) 3.0 s (median of 5 runs each on a shared 2-core machine).
COMMANDS = {
    "generate": (add_generate, "train"),
    "runs": (add_runs, "runs"),
    "show": (add_show, "runs"),
    "results": (add_results, "runs"),
    "analyze": (add_analyze, "analyze"),
    "verify": (add_verify, "runs"),
    "interpolate": (add_interpolate, "interpolate"),
    "compare": (add_compare, "analyze"),
    "distances": (add_distances, "distances"),
    "sweep": (add_sweep, "sweep"),
    "jobs": (add_jobs, "train"),
    "import": (add_import, "interop"),
    "export": (add_export, "interop"),
    "export-history": (add_export_history, "interop"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="masklab", description="The mask landscape of randomly initialised neural networks.")
    parser.add_argument("--version", action="version", version=f"masklab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def command(name: str):
    """The function that runs command `name`: `cmd_<name>` of its family's module."""
    module = importlib.import_module(f"masklab.cli.{COMMANDS[name][1]}")
    return getattr(module, f"cmd_{name.replace('-', '_')}")



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
        gc.set_threshold(*GC_THRESHOLD)
    try:
        args = build_parser().parse_args(argv)
        code = int(command(args.command)(args) or 0)
        if argv is None and args.command in FAST_EXIT_COMMANDS:
            _exit_now(code)
        return code
    except UserError as e:
        print(f"masklab: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # (JobsInterrupted says what became of the shard jobs)
        print(f"masklab: interrupted{': ' + ' '.join(str(e).split()) if str(e) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `masklab runs | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a fault of the environment met where no read or write site named it
        if e.errno not in ENVIRONMENT_ERRNOS or os.environ.get("MASKLAB_DEBUG"):
            return _internal(e)
        print(f"masklab: error: {' '.join(environment_message(e, doing=None).split())}", file=sys.stderr)
        return 2
    except Exception as e:
        return _internal(e)


def _internal(e: Exception) -> int:
    if os.environ.get("MASKLAB_DEBUG"):
        raise e
    print(f"masklab: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
          "(rerun with MASKLAB_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1

