"""`masklab analyze` of the embedded default run: wall time and seconds per stage, cold and warm.

Targets (DESIGN.md, issue 16): a warm `masklab analyze` of the default run (16 digits masks) at most 5 s;
the first run after set-up at most 15 s. Scenarios, each printed with its stages and its ratio to the target:

- ``after set-up``: numba's cache emptied (a fresh ``$NUMBA_CACHE_DIR``), the set-up's warm-up step run
  (``python -m masklab.warm``, timed apart), then ``masklab analyze`` in a fresh process (cold:
  Python, imports, cache loads). Target 15 s.
- ``warm CLI``: ``masklab analyze`` again in a fresh process, caches warm: best of ``--repeat``. Target 5 s.
- ``in-process``: a second `masklab.analyze(run)` in the same Python process (a notebook re-running it).
- ``no set-up`` (with ``--no-setup``): a fresh numba cache and no warm-up: what a first run pays without it.
- ``imports``: a fresh process that only imports what analyze of a small run needs (torch, scipy's
  hierarchy, matplotlib, pandas, numba, pyarrow, scikit-learn's MDS and HDBSCAN): the floor no change to
  masklab removes.

Stage seconds come from `Report.seconds` (each stage's own computation; "figures" is drawing and writing
all figures; "tables" and "index" the writing); "start" is the rest of the process's wall time: starting
Python and importing. Timings on a shared machine are noisy: compare the lines of one run, not runs.

    python bench/bench_analyze.py [--run RUN_DIR] [--repeat 3] [--no-setup] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"after set-up": 15.0, "warm CLI": 5.0}
# what analyze of a small run imports (tests/test_report.py checks which of the costly ones)
IMPORTS = ("import gc; from masklab.cli import GC_THRESHOLD; gc.set_threshold(*GC_THRESHOLD); "
           "import torch, scipy.cluster.hierarchy, matplotlib.figure, matplotlib.backends.backend_agg, pandas, "
           "numba, pyarrow.parquet, tqdm, sklearn.manifold, sklearn.cluster")
CHILD = """
import json, sys, time
start = time.perf_counter()
import gc
from masklab.cli import GC_THRESHOLD
gc.set_threshold(*GC_THRESHOLD)  # as the masklab command sets it
from masklab.report import analyze
report = analyze(sys.argv[1], sys.argv[2], quiet=True)
first = dict(report.seconds)
out = {"stages": first, "analyze": time.perf_counter() - start}
if len(sys.argv) > 3:
    again = time.perf_counter()
    out["again"] = dict(analyze(sys.argv[1], sys.argv[2], quiet=True).seconds)
    out["again_wall"] = time.perf_counter() - again
print("BENCH " + json.dumps(out))
"""


def env_with(cache_dir: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    return env


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return wall, done.stdout


def analyze_child(run: str, figures: str, env: dict, again: bool = False) -> tuple[float, dict]:
    cmd = [sys.executable, "-c", CHILD, run, figures] + (["again"] if again else [])
    wall, out = timed(cmd, env)
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    return wall, json.loads(line[len("BENCH "):])


def default_run(runs_dir: str) -> str:
    print(f"making the default run under {runs_dir} (masklab generate --quiet) ...", flush=True)
    wall, out = timed([sys.executable, "-m", "masklab", "generate", "--runs-dir", runs_dir, "--quiet"], env_with(None))
    print(f"  {wall:.1f} s", flush=True)
    return out.strip().splitlines()[-1]


def stage_line(name: str, wall: float, stages: dict) -> str:
    start = wall - sum(stages.values())
    parts = "  ".join(f"{k} {v:.2f}" for k, v in stages.items())
    target = TARGETS.get(name)
    verdict = f"  target {target:.0f} s: {wall / target:.2f}x of it ({'ok' if wall <= target else 'OVER'})" \
        if target else ""
    return f"{name:>13}: {wall:6.2f} s wall = start {start:.2f}  {parts}{verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run directory to analyse (default: make the default run in a temp folder)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process warm runs, best of (default 3)")
    parser.add_argument("--no-setup", action="store_true", help="also time a first run without the warm-up")
    parser.add_argument("--quick", action="store_true", help="one warm repeat")
    args, _ = parser.parse_known_args(argv)
    repeat = 1 if args.quick else max(1, args.repeat)
    with tempfile.TemporaryDirectory(prefix="masklab-bench-analyze-") as tmp:
        run = args.run or default_run(os.path.join(tmp, "runs"))
        figures = os.path.join(tmp, "figures")
        lines = []
        wall, _ = timed([sys.executable, "-c", IMPORTS], env_with(None))
        imports = wall
        if args.no_setup:
            cache = tempfile.mkdtemp(dir=tmp, prefix="numba-none-")
            wall, out = analyze_child(run, figures, env_with(cache))
            lines.append(stage_line("no set-up", wall, out["stages"]))
        cache = tempfile.mkdtemp(dir=tmp, prefix="numba-")
        if (ROOT / "masklab" / "analysis" / "warm.py").exists():
            setup, _ = timed([sys.executable, "-m", "masklab.warm", "--quiet"], env_with(cache))
            setup_what = "python -m masklab.warm"
        else:  # an older masklab without the warm-up step: its first analyze fills the caches
            setup, _ = analyze_child(run, figures, env_with(cache))
            setup_what = "no warm-up step in this version: a first analyze instead"
        wall, out = analyze_child(run, figures, env_with(cache))
        lines.append(stage_line("after set-up", wall, out["stages"]))
        best = None
        for _ in range(repeat):
            wall, out = analyze_child(run, figures, env_with(cache), again=best is None)
            if best is None:
                again = (out["again_wall"], out["again"])
            if best is None or wall < best[0]:
                best = (wall, out["stages"])
        lines.append(stage_line("warm CLI", *best))
        lines.append(stage_line("in-process", *again))
        clis = [timed([sys.executable, "-m", "masklab", "analyze", run, "--figures", figures, "--quiet"],
                      env_with(cache))[0] for _ in range(repeat)]
        cli = min(clis)
    print(f"\nanalyze of {run}")
    print(f"   set-up warm-up ({setup_what}, from an empty numba cache): {setup:.1f} s")
    print(f"      imports alone (a fresh process importing what analyze needs): {imports:.2f} s")
    for line in lines:
        print(line)
    print(f"  `masklab analyze RUN --quiet` itself, warm, best of {repeat}: {cli:.2f} s "
          f"(target 5 s: {cli / 5.0:.2f}x), median {statistics.median(clis):.2f} s")
    print("  (stage seconds: own computation; figures = drawing + writing all PNGs; start = Python + imports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
