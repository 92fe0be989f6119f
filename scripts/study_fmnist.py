"""The Fashion-MNIST study: accuracy vs sparsity and the mask landscape of lenet-300-100, as three sweeps.

    python scripts/study_fmnist.py                     # train what is missing (2 shard jobs), then every table
    python scripts/study_fmnist.py --jobs 64 --executor slurm   # ... training as a SLURM job array

Each call is one `masklab sweep` (docs/landscape.md); everything it writes goes to --out (default
figures/fashion-mnist), named by the sweep's id:

1. `fmnist-landscape`: Edge-Popup and Biprop, with and without IWR, at 50% and 90% sparsity, 16 masks a cell:
   the landscape table and its figures (barriers over all 120 pairs of a cell) and every cell's analyze page.
2. `fmnist-10-epochs`: every method (IteRand and the dense network too) at 50-95% sparsity, 3 masks a cell (the
   16-mask cells of sweep 1 count with all their masks): accuracy.
3. `fmnist-30-epochs`: with and without IWR at 80-95% sparsity for 30 epochs (9 recyclings for Edge-Popup, 14
   for Biprop): accuracy.

Biprop+IWR recycles every 2 epochs (`biprop+iwr:recycle_every=2`): its published `every 10` would never fire in
10 epochs (the last epoch never recycles). Every run is cached by its config hash under --runs-dir, so a second
call trains nothing and a killed call resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from masklab.cli import main as masklab

ROOT = Path(__file__).resolve().parents[1]
METHODS = "edge-popup,edge-popup+iwr,biprop,biprop+iwr:recycle_every=2"


def study(args: argparse.Namespace) -> int:
    common = ["--dataset", "fashion-mnist", "--model", "lenet-300-100", "--data-root", args.data_root,
              "--runs-dir", args.runs_dir, "--figures", args.out, "--jobs", str(args.jobs), "--executor",
              args.executor, *(["--quiet"] if args.quiet else [])]
    sweeps = {
        "fmnist-landscape": ["--epochs", "10", "--methods", METHODS, "--sparsities", "0.5,0.9", "--seeds", "16",
                             "--pairs", "all", "--pages"],
        "fmnist-10-epochs": ["--epochs", "10", "--methods", f"{METHODS},edge-popup+iterand,dense", "--sparsities",
                             "0.5,0.8,0.9,0.95", "--seeds", "3", "--no-landscape"],
        "fmnist-30-epochs": ["--epochs", "30", "--methods", METHODS, "--sparsities", "0.8,0.9,0.95", "--seeds", "3",
                             "--no-landscape"],
    }
    for name, grid in sweeps.items():  # (three commands, written out)
        start = time.perf_counter()
        code = masklab(["sweep", *common, "--name", name, *grid])
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="shard jobs training at once (default 2: one per core)")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"], help="submitit executor")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs"))
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default=str(ROOT / "figures" / "fashion-mnist"))
    parser.add_argument("--quiet", action="store_true")
    sys.exit(study(parser.parse_args()))
