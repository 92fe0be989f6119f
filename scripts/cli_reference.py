"""Write docs/cli.md, the command-line reference, from the `masklab` parser itself (so it cannot drift).

    python scripts/cli_reference.py          # rewrite docs/cli.md
    python scripts/cli_reference.py --check  # exit 1 if docs/cli.md is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"

HEAD = """# Command-line reference

Generated from the `masklab` parser by `scripts/cli_reference.py` (the tests check it is current). Every run
option of `generate` can also come from a TOML file (`--config run.toml`, keys are the option names with `_`;
a `[slurm]` table holds the job array's resources); flags override the file. Exit codes: 0 success; 2 bad
input or a fault of the environment (one line on stderr: what is wrong and how to fix it); 1 an internal
error (the traceback with `MASKLAB_DEBUG=1`); 130 interrupted. The last line a command prints is the path of
what it made (run directory, index page, figure, file).

"""


def reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: fix it for a stable page
    from masklab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [HEAD, "```\n" + parser.format_help().rstrip() + "\n```\n"]
    for name, command in sub.choices.items():
        parts.append(f"\n## masklab {name}\n\n```\n{command.format_help().rstrip()}\n```\n")
    return "".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = reference()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
