"""Stacked training throughput on CPU, idle and beside a busy process: `--stack 8` and `--stack auto` against
`--stack 1`, end to end.

The main table times `masklab.generate` of 8 LeNet-300-100 masks on Fashion-MNIST (1 epoch by default) with
--stack 1, --stack 8 and --stack auto, as a user runs it (the trainer measures its thread count and, with
auto, its sub-stack size while it trains; evaluation and storing included), best of --rounds, twice: on the
machine as it is ("idle": the load average is printed, the figures mean idle only below ~1.5) and with one
busy process (a plain Python loop) pinned to core 0 beside the run ("contended"). It prints per-mask
throughput over --stack 1. Targets (issue 27): idle --stack 8 >= 3x, contended --stack auto >= 1.0x and
--stack 8 >= 1.2x. The bits are the same in every case (tests/test_golden_bits.py,
tests/train/test_same_bits.py), so the ratios are pure speed.

Then the training steps alone (`build_training` + `train_step`, the trainer's one training path, inside
`blas_one_thread` as the trainer runs them): K = 8 as one stack, and on CPU also as one sub-stack per thread
side by side (the trainer's 'side' choice), against 8 masks one after another at a fixed thread count; on a
GPU K = 32 Conv-4 (target 8x).

    python bench/bench_stack.py [--epochs 1] [--rounds 2] [--threads 2] [--quick]
"""

from __future__ import annotations

import masklab  # isort: skip  (first, as in the CLI: it sets OMP_WAIT_POLICY before torch loads OpenMP)

import argparse
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd
import torch

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.nn.exact import blas_one_thread, map_one_thread, set_threads
from masklab.train.trainer import build_training, train_step


def batches(dataset, batch_size, steps, device):
    out = []
    for epoch in range(100):
        for x, y in dataset.train_batches(batch_size, 0, epoch, device=device):
            if len(y) == batch_size:
                out.append((x, y))
            if len(out) == steps:
                return out
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def stack_rate(config, dataset, indices, data, device) -> float:
    """Images per second per mask of one stack of masks `indices` (two warm-up steps)."""
    model, _, optimizer = build_training(config, dataset, list(indices), device)
    K = len(indices)
    for j, (x, y) in enumerate(data):
        if j == 2:
            sync(device)
            t0 = time.perf_counter()
        train_step(model, optimizer, x, y.expand(K, -1))
    sync(device)
    return K * (len(data) - 2) * data[0][1].numel() / (time.perf_counter() - t0)


def sequential_rate(config, dataset, K, data, device) -> float:
    """Images per second per mask when K masks train one after another (stacks of one)."""
    seconds = sum(1.0 / stack_rate(config, dataset, [i], data, device) for i in range(K)) / K
    return 1.0 / seconds


def stacked_rate(config, dataset, K, data, device) -> float:
    return stack_rate(config, dataset, range(K), data, device)


def side_by_side_rate(config, dataset, K, data, device) -> float:
    """Images per second per mask when the K masks train as one sub-stack per thread, side by side, each on
    one thread (the trainer's 'side' choice, `map_one_thread`; CPU)."""
    threads = torch.get_num_threads()
    bounds = [K * i // threads for i in range(threads + 1)]
    parts = [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]
    images = (len(data) - 2) * data[0][1].numel()  # per mask
    rates = map_one_thread(lambda part: stack_rate(config, dataset, part, data, device), parts)
    return K * images / max(len(part) * images / rate for part, rate in zip(parts, rates))


def compare(label, config, dataset, K, steps, device, target, rounds=3):
    """Sequential, stacked and (CPU) side-by-side measured alternately, `rounds` times each, as the trainer
    runs them (inside `blas_one_thread`); the best rate of each (the least disturbed by the rest of the
    machine) gives the ratios."""
    data = batches(dataset, config.batch_size, steps, device)
    seqs, sts, sides = [], [], []
    with blas_one_thread():
        set_threads(torch.get_num_threads())  # (MKL on one thread inside the block, as in training)
        for _ in range(rounds):
            seqs.append(sequential_rate(config, dataset, K, data, device))
            sts.append(stacked_rate(config, dataset, K, data, device))
            if device.type == "cpu" and torch.get_num_threads() > 1:
                sides.append(side_by_side_rate(config, dataset, K, data, device))
    seq, st = max(seqs), max(sts)
    verdict = "" if target is None else f" (target >= {target}x: {'PASS' if st / seq >= target else 'MISS'})"
    side = f" | side by side {max(sides):9.0f} img/s per mask, {max(sides) / seq:.2f}x" if sides else ""
    print(f"{label}: sequential {seq:9.0f} img/s per mask | stacked K={K} {st:9.0f} img/s per mask | "
          f"ratio {st / seq:.2f}x{verdict}{side} [best of {rounds}; stacked ratios per round "
          f"{', '.join(f'{b / a:.2f}' for a, b in zip(seqs, sts))}]")
    return st / seq


def busy_process(cpu: int = 0) -> subprocess.Popen:
    """One process spinning in a plain Python loop, pinned to core `cpu`: a machine shared with one job."""
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def generate_seconds(config, dataset, stack: int, masks: int, epochs: int) -> float:
    """Wall seconds of `masklab.generate` of `masks` masks with --stack `stack` (0: auto), as a user runs it:
    the trainer's own thread and stack measurements, evaluation and storing included."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        masklab.generate(config, runs_dir=tmp, data=dataset, masks=masks, epochs=epochs, stack=stack)
        return time.perf_counter() - start


def end_to_end(config, dataset, K: int, epochs: int, rounds: int, contended: bool) -> dict[str, float]:
    """Per-mask throughput of --stack K and --stack auto over --stack 1, end to end, best of `rounds` (the
    three measured alternately); with `contended`, one busy process pinned to core 0 runs beside them."""
    busy = busy_process() if contended else None
    try:
        best: dict[int, float] = {}
        for _ in range(rounds):
            for stack in (1, K, 0):
                best[stack] = min(best.get(stack, float("inf")), generate_seconds(config, dataset, stack, K, epochs))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return {"stack 1 s": best[1], f"stack {K} s": best[K], "auto s": best[0],
            f"stack {K} / stack 1": best[1] / best[K], "auto / stack 1": best[1] / best[0]}


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs per mask, end to end (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="end-to-end rounds; the best of each is kept")
    ap.add_argument("--steps", type=int, default=40, help="training steps per side of the step comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round, fewer steps, skip conv4 on CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (12, 1) if args.quick else (args.steps, args.rounds)
    cpu = torch.device("cpu")

    fashion = os.path.isdir("/usr/share/datasets/fashion-mnist")
    ds = load_dataset("fashion-mnist") if fashion else load_dataset("synthetic", input_shape=(1, 28, 28))
    lenet = RunConfig(dataset="fashion-mnist" if fashion else "synthetic", model="lenet-300-100")
    load = load_average()
    print(f"load average (1 min) at the start: {load:.2f} on {os.cpu_count()} cores"
          + ("" if load < 1.5 else " -- NOT idle: the 'idle' rows below are not idle figures; rerun on a quiet "
             "machine"))
    rows = {}
    for state in ("idle", "contended"):
        rows[state] = end_to_end(lenet.replace(device="cpu"), ds, 8, args.epochs, rounds, state == "contended")
    table = pd.DataFrame(rows).T
    print(f"end to end, masklab.generate of 8 lenet-300-100 masks x {args.epochs} epoch(s) on {ds.name}; "
          "contended: one busy process pinned to core 0; ratios are per-mask throughput over --stack 1")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    targets = {("idle", "stack 8 / stack 1"): 3.0, ("contended", "stack 8 / stack 1"): 1.2,
               ("contended", "auto / stack 1"): 1.0}
    for (state, column), target in targets.items():
        value = table.loc[state, column]
        print(f"  {state} {column}: {value:.2f}x (target >= {target}x: {'PASS' if value >= target else 'MISS'})")
    print(f"load average (1 min) at the end: {load_average():.2f}")

    compare(f"training steps only, CPU {args.threads} threads, lenet-300-100 on {ds.name}", lenet, ds, 8, steps, cpu,
            None)
    cifar = load_dataset("synthetic", input_shape=(3, 32, 32))
    conv4 = RunConfig(dataset="synthetic", model="conv4")
    if not args.quick:
        compare(f"CPU {args.threads} threads, conv4 on CIFAR-shaped synthetic", conv4, cifar, 8, max(4, steps // 8),
                cpu, None)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        compare(f"GPU {torch.cuda.get_device_name()}, conv4 on CIFAR-shaped synthetic", conv4, cifar, 32, steps,
                gpu, 8.0)
    else:
        print("GPU: no CUDA device here; the K=32 conv4 comparison runs only where one is present")


if __name__ == "__main__":
    main()
