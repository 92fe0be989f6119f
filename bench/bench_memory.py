"""What training really allocates: the peak resident memory of `generate` beyond what the process held when
`check_fits` ran, per model, method, recycling and stack size, beside `masklab.limits.training_bytes`'s
estimate of it.

Each case runs in a fresh process (`measure`): the config is checked and its data loaded as `generate` does
(`prepare`), the resident-set high-water mark is reset (`/proc/self/clear_refs`, Linux) and the resident set
read, then one epoch is trained and stored; the increment is VmHWM after minus VmRSS before. Prints one row
per case (weights, measured MiB, estimated MiB, estimate / measured) and whether every estimate covers its
measurement (PASS) without exceeding it by more than 2x + 64 MiB.

    python bench/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile
from masklab.config import RunConfig
from masklab.generation import generate, prepare
from masklab.limits import training_bytes

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

params = json.loads(sys.argv[1])
config = RunConfig.from_dict(params)
dataset, layout, info = prepare(config)
estimate = training_bytes(config, dataset.input_shape, dataset.n_classes)
import gc; gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
with tempfile.TemporaryDirectory() as runs:
    generate(config, runs_dir=runs, data=dataset)
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model
import torch
with torch.device("meta"):
    m = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, config.method, config.sparsity)
weights = sum(l.weight.numel() for _, l in masked_layers(m))
print(json.dumps({"before": before, "peak": status("VmHWM"), "estimate": estimate, "weights": weights}))
"""


def measure(params: dict, timeout: float = 600) -> dict:
    """{"before", "peak", "estimate"} in bytes for one `generate` of `params` (a RunConfig's fields) in a fresh
    process; `peak - before` is what training added."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(params)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"{params}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


BASE = {"epochs": 1, "masks": 1}
CASES = [
    # (label, fields): linear models on digits, convolutions on CIFAR-shaped synthetic data
    ("mlp ep w8", {"model": "mlp", "width": 8}),
    ("mlp ep w16", {"model": "mlp", "width": 16}),
    ("mlp ep w24", {"model": "mlp", "width": 24}),
    ("mlp biprop w16", {"model": "mlp", "width": 16, "method": "biprop"}),
    ("mlp dense w16", {"model": "mlp", "width": 16, "method": "dense"}),
    ("mlp ep+iwr w16", {"model": "mlp", "width": 16, "recycle": "iwr"}),
    ("mlp ep+iterand w16", {"model": "mlp", "width": 16, "recycle": "iterand"}),
    ("mlp ep w8 K4", {"model": "mlp", "width": 8, "masks": 4, "stack": 4}),
    ("mlp biprop w8 K4", {"model": "mlp", "width": 8, "masks": 4, "stack": 4, "method": "biprop"}),
    ("mlp ep+iwr w8 K4", {"model": "mlp", "width": 8, "masks": 4, "stack": 4, "recycle": "iwr"}),
    ("lenet ep w16", {"model": "lenet-300-100", "width": 16}),
    ("conv2 ep w1", {"model": "conv2", "width": 1, "dataset": "synthetic"}),
    ("conv4 ep w2", {"model": "conv4", "width": 2, "dataset": "synthetic"}),
    ("conv4 biprop w2", {"model": "conv4", "width": 2, "dataset": "synthetic", "method": "biprop"}),
    ("conv4 dense w2", {"model": "conv4", "width": 2, "dataset": "synthetic", "method": "dense"}),
    ("conv6 ep w1", {"model": "conv6", "width": 1, "dataset": "synthetic"}),
    ("resnet18 ep w0.5", {"model": "resnet18", "width": 0.5, "dataset": "synthetic"}),
]
QUICK = {"mlp ep w8", "mlp biprop w16", "conv2 ep w1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three cases only")
    args = parser.parse_args()
    ok = True
    print(f"{'case':<22}{'added MiB':>11}{'estimate MiB':>14}{'ratio':>8}")
    for label, fields in CASES:
        if args.quick and label not in QUICK:
            continue
        found = measure({**BASE, **fields})
        added, estimate = found["peak"] - found["before"], found["estimate"]
        fits = added <= estimate <= 2 * added + (64 << 20)
        ok &= fits
        print(f"{label:<22}{added / 2**20:>11.0f}{estimate / 2**20:>14.0f}{estimate / max(added, 1):>8.2f}"
              f"{'' if fits else '  <- outside [measured, 2 x measured + 64 MiB]'}", flush=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
