"""`analyze` at scale: seconds, peak memory and bytes written for N = 16, 256, 1,024, 4,096 masks (10,000 with
``--big``), each beside the all-pairs distance kernel's time for the same N, as a ratio.

Targets (issue 24; a benchmark, not a test): N = 1,024 digits-MLP masks analyse in at most 15 s warm, 1 GB peak
memory and 60 MB written; N = 10,000 in at most 10 minutes and 8 GB with all 50 million pair distances computed
and stored.

The masks come from a fast source, so that the benchmark times the analysis and not training: for each N,
uniform random masks of the digits MLP (fc1 256 x 64, fc2 256 x 256, fc3 10 x 256; half of each layer kept,
`masklab.analysis.random_sets.random_mask_bits`, seed 0) made a run with `masklab.import_maskset` (masklab's
random weights of seed 0, each mask evaluated once as `generate` evaluates a trained mask: its test accuracy and
the predicted classes the functional stage reads, stored in the run as `generate` stores them, so that the
analysis finds what it finds in a trained run): every stage of `analyze` runs on it, the interpolation included
(default settings: 3 barrier pairs stratified by distance, 30 points; the stated samples of 2,000 masks for
clustering and the embedding and 200 for the structure test).

For each N, in a fresh process each (so that each peak is its own):

- ``make run``: making the run (not part of the analysis; shown for scale);
- ``analyze``: `masklab.analyze(run)` in a process whose imports and numba caches are warm (one untimed
  analysis of another run of N = 16 first, as in a notebook that has analysed a run before), its own wall
  time (the process start, imports and that analysis are apart: ``warm-up``); the first line gives an
  analysis of N = 16 in a fresh process, imports included (torch alone is about 3 s of them);
- ``peak RSS``: the analysing process's peak resident memory (``ru_maxrss``, imports included);
- ``written``: the bytes of every file the analysis wrote (its folder ``analysis/<settings id>/``, with the
  pair matrices, and its figures and page);
- ``kernel``: the all-pairs intersection kernel alone over the same masks (upper triangle, whole mask and
  every layer, the row blocks `store_intersections` uses, nothing stored), in the same process after the
  analysis; ``ratio`` = analyze / kernel.

On a shared machine timings are noisy (other processes only ever make a run slower): report the machine's state
beside the figures.

Beside the first N >= 256: ``--dask-pairs P`` barrier pairs (a uniform sample, seed 0) evaluated in this process
and on a Dask LocalCluster of 2 worker processes (127.0.0.1), both warm (4 other pairs first), as a throughput
ratio (target >= 0.8x), with whether the numbers are identical.

    python bench/bench_analyze_scale.py [--sizes 16,256,1024,4096] [--big] [--keep DIR] [--dask-pairs P]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (16, 256, 1024, 4096)
BIG = 10_000
TARGETS = {1024: (15.0, 1024.0, 60.0), BIG: (600.0, 8192.0, None)}  # seconds, peak MiB, MB written

MAKE = """
import json, sys, time
import numpy as np
from masklab.analysis.random_sets import random_mask_bits
from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.interop.maskset import import_maskset
from masklab.nn.layers import masked_layers
from masklab.store.bits import MaskSet, make_layout
from masklab.train.stacked import make_model

n, runs = int(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
config = RunConfig(dataset="digits", model="mlp")
net = make_model(config.replace(sparsity=0.5), load_dataset("digits", None))
layers = [(name, tuple(m.weight.shape)) for name, m in masked_layers(net)]
keep = [int(np.prod(shape)) // 2 for _, shape in layers]
layout = make_layout([name for name, _ in layers], [shape for _, shape in layers], keep)
bits = random_mask_bits(layout, np.array([keep]), n, np.random.default_rng(0))
run = import_maskset(MaskSet(bits, layout), model="mlp", dataset="digits", runs_dir=runs)
print("BENCH " + json.dumps({"path": str(run.path), "seconds": time.perf_counter() - start}))
"""

ANALYZE = """
import json, resource, sys, time
start = time.perf_counter()
import gc
from masklab.cli import GC_THRESHOLD
gc.set_threshold(*GC_THRESHOLD)  # as the masklab command sets it
import numpy as np
from masklab.analysis.kernels import intersection_counts, layer_bounds
from masklab.analysis.pairs import upper_blocks
from masklab.analysis.distances import STORE_BLOCK_BYTES
from masklab.report import analyze
from masklab.store.run import open_run

if len(sys.argv) > 3:  # warm: what a first analysis imports and loads (torch, umap, numba kernels), untimed
    analyze(open_run(sys.argv[3]), sys.argv[4], quiet=True)
run = open_run(sys.argv[1])
masks = run.masks
imported = time.perf_counter()
report = analyze(run, sys.argv[2], quiet=True)
analyzed = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
figures = report.index.parent
written = sum(p.stat().st_size for folder in (report.folder, figures) for p in folder.rglob("*") if p.is_file())
bounds = layer_bounds(masks.layers["word_start"], masks.layers["word_stop"])
n = len(masks)
rows = max(1, STORE_BLOCK_BYTES // max(1, 8 * (len(bounds) + 1) * n))
kernel = time.perf_counter()
for a, b in upper_blocks(n, rows):
    intersection_counts(masks.bits[a:b], masks.bits[a:], bounds, with_total=True)
kernel = time.perf_counter() - kernel
print("BENCH " + json.dumps({"start": imported - start, "analyze": analyzed - imported, "peak_mib": peak,
                             "written": written, "kernel": kernel, "stages": report.seconds,
                             "samples": report.tables["samples"].to_dict("records")}))
"""

DASK = """
import json, sys, time
from pathlib import Path
import numpy as np
from masklab.analysis.paths.jobs import BarrierTask, DaskEngine, run_pairs
from masklab.analysis.sampling import condensed_pairs, pair_sample
from masklab.store.run import open_run

run, n_pairs, out = open_run(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
ids = np.asarray(run.ids)
a, b = condensed_pairs(pair_sample(len(ids), n_pairs + 4, 0).positions, len(ids))
pairs = list(zip(ids[a].tolist(), ids[b].tolist()))
warm, pairs = pairs[:4], pairs[4:]

def task(name):
    return BarrierTask(run_path=str(run.path), folder=str(out / name), points=30)

run_pairs(task("warm-here"), warm)  # imports, the model and the evaluation set: warm in this process
start = time.perf_counter()
here, _, _ = run_pairs(task("here"), pairs)
here_s = time.perf_counter() - start
from masklab.analysis.tiles import local_client

client = local_client(2)  # analyze --scheduler local --workers 2: a LocalCluster on 127.0.0.1
try:
    run_pairs(task("warm-dask"), warm, DaskEngine(client, chunk=1))  # each worker: imports, the run, the model
    start = time.perf_counter()
    there, _, _ = run_pairs(task("dask"), pairs, DaskEngine(client))
    dask_s = time.perf_counter() - start
finally:
    client.close()
    client.cluster.close()
print("BENCH " + json.dumps({"pairs": len(pairs), "here": here_s, "dask": dask_s,
                             "identical": bool(here.equals(there))}))
"""


def child(code: str, *args: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[len("BENCH "):])


def verdict(n: int, seconds: float, peak: float, megabytes: float) -> str:
    if n not in TARGETS:
        return ""
    limits = TARGETS[n]
    parts = []
    for value, limit, unit in zip((seconds, peak, megabytes), limits, ("s", "MiB", "MB")):
        if limit is not None:
            parts.append(f"{value / limit:.2f}x of {limit:g} {unit}")
    over = any(limit is not None and value > limit for value, limit in zip((seconds, peak, megabytes), limits))
    return f"target: {', '.join(parts)} ({'OVER' if over else 'ok'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of masks (default "
                        f"{','.join(map(str, SIZES))})")
    parser.add_argument("--big", action="store_true", help=f"also N = {BIG:,} (minutes, several GB)")
    parser.add_argument("--keep", metavar="DIR", help="make the runs and figures in DIR and keep them")
    parser.add_argument("--quick", action="store_true", help="N = 16 and 256 only")
    parser.add_argument("--dask-pairs", type=int, default=16, metavar="P",
                        help="barrier pairs evaluated in this process and on a Dask LocalCluster of 2 workers "
                        "(127.0.0.1), on the masks of the first N >= 256 (default 16; 0: skip)")
    args = parser.parse_args(argv)
    sizes = [16, 256] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.big and BIG not in sizes:
        sizes.append(BIG)
    with tempfile.TemporaryDirectory(prefix="masklab-bench-scale-") as tmp:
        where = Path(args.keep) if args.keep else Path(tmp)
        runs, figures = where / "runs", where / "figures"
        # a run of its own for the warm-up analyses (a timed analysis must not find the warm-up's barrier pairs
        # stored in its run); its first analysis, in a fresh process, is the cold figure
        warm = child(MAKE, "16", str(where / "warm-up" / "runs"))
        warm_args = (warm["path"], str(where / "warm-up" / "figures"))
        cold = child(ANALYZE, *warm_args)
        print(f"N = 16 in a fresh process, the first analysis of its run: {cold['start'] + cold['analyze']:.1f} s "
              f"(imports {cold['start']:.1f} s, analyze {cold['analyze']:.1f} s: stages "
              + ", ".join(f"{k} {v:.2f}" for k, v in cold["stages"].items()) + ")", flush=True)
        print(f"{'N':>7} {'pairs':>12} {'make run s':>10} {'warm-up s':>9} {'analyze s':>10} {'kernel s':>9} "
              f"{'ratio':>7} {'peak RSS MiB':>12} {'written MB':>10}", flush=True)
        dask_done = False
        for n in sizes:
            made = child(MAKE, str(n), str(runs))
            out = child(ANALYZE, made["path"], str(figures), *warm_args)
            mb = out["written"] / 1e6
            ratio = out["analyze"] / out["kernel"] if out["kernel"] > 0 else float("inf")
            print(f"{n:>7,} {n * (n - 1) // 2:>12,} {made['seconds']:>10.1f} {out['start']:>9.1f} "
                  f"{out['analyze']:>10.2f} {out['kernel']:>9.3f} {ratio:>6.0f}x {out['peak_mib']:>12.0f} "
                  f"{mb:>10.1f}  {verdict(n, out['analyze'], out['peak_mib'], mb)}", flush=True)
            stages = "  ".join(f"{k} {v:.2f}" for k, v in out["stages"].items())
            samples = "; ".join(f"{s['stage']} {s['n_used']:,} of {s['n_total']:,} {s['unit']}"
                                for s in out["samples"])
            print(f"{'':>7} seconds per stage (Report.seconds): {stages}\n{'':>7} samples: {samples}", flush=True)
            if args.dask_pairs > 0 and n >= 256 and not dask_done:
                dask_done = True
                d = child(DASK, made["path"], str(args.dask_pairs), str(where / "dask"))
                print(f"{'':>7} barriers, {d['pairs']} pairs x 30 points: in process {d['here']:.2f} s, Dask "
                      f"LocalCluster (2 workers) {d['dask']:.2f} s: throughput {d['here'] / d['dask']:.2f}x of in "
                      f"process (target >= 0.8x); identical numbers: {d['identical']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
