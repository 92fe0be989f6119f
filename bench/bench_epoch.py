"""What to expect on real data: minutes per epoch of one mask on Fashion-MNIST on this machine's CPU.

For LeNet-300-100, Conv-2 and Conv-4 (Edge-Popup, batch 128): the trainer's own step (`build_training` +
`train_step`) timed over --steps steps after two warm-up steps, on 1 and on all threads (the trainer measures
both and keeps the faster, masklab.train.plan), times the epoch's 469 steps, plus one evaluation of the 10,000
test images. An estimate from measured steps, so that the table takes a minute, not the hour the epochs would;
the load average is printed beside it (the figures hold for a quiet machine only when it is low).

    python bench/bench_epoch.py [--steps 10] [--models lenet-300-100 conv2 conv4]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import pandas as pd
import torch

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.nn.exact import blas_one_thread
from masklab.train.evaluate import evaluate
from masklab.train.stacked import make_model
from masklab.train.trainer import build_training, train_step


def step_seconds(config, dataset, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model, _, optimizer = build_training(config, dataset, [0], torch.device("cpu"))
    data = [b for _, b in zip(range(steps + 2), dataset.train_batches(config.batch_size, 0, 0))]
    for j, (x, y) in enumerate(data):
        if j == 2:
            start = time.perf_counter()
        train_step(model, optimizer, x, y.expand(1, -1))
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["lenet-300-100", "conv2", "conv4"])
    ap.add_argument("--quick", action="store_true", help="4 steps per measurement")
    args = ap.parse_args()
    if args.quick:
        args.steps = 4
    most = torch.get_num_threads()
    dataset = load_dataset("fashion-mnist")
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rows = []
    with blas_one_thread():
        for name in args.models:
            config = RunConfig(dataset="fashion-mnist", model=name, device="cpu")
            per_step = {t: step_seconds(config, dataset, args.steps, t) for t in sorted({1, most})}
            threads = min(per_step, key=per_step.get)
            torch.set_num_threads(threads)
            start = time.perf_counter()
            evaluate(make_model(config, dataset), dataset, torch.device("cpu"))
            evaluation = time.perf_counter() - start
            steps = math.ceil(dataset.n_train / config.batch_size)
            rows.append({"model": name, "ms per step": 1e3 * per_step[threads], "threads": threads,
                         "evaluation s": evaluation,
                         "minutes per epoch": (steps * per_step[threads] + evaluation) / 60})
    torch.set_num_threads(most)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
