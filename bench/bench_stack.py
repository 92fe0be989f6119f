"""Stacked training throughput: K masks in one pass vs K sequential single-mask runs, same process.

Both sides are the trainer's one training path (`build_training` + `train_step`): the sequential side
trains K stacks of one mask each, the stacked side one stack of K; a mask's bits are the same either way
(tests/train/test_same_bits.py), so the ratio is pure speed. Per-mask throughput = images each mask trains
on per second, training steps only, both sides at the same thread count (2 by default). For lenet it also
times `masklab.generate` end to end with --stack 1 and --stack 8 (evaluation and storing included, each
with the thread count the trainer picks).
Targets: CPU (2 threads) K=8 lenet-300-100 on Fashion-MNIST >= 2x; GPU K=32 conv4 on CIFAR-shaped data >= 8x.

    python bench/bench_stack.py [--steps 40] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from masklab.config import RunConfig
from masklab.data import load_dataset
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


def compare(label, config, dataset, K, steps, device, target, rounds=3):
    """Sequential and stacked measured alternately, `rounds` times each; the best rate of each (the
    least disturbed by the rest of the machine) gives the ratio."""
    data = batches(dataset, config.batch_size, steps, device)
    seqs, sts = [], []
    for _ in range(rounds):
        seqs.append(sequential_rate(config, dataset, K, data, device))
        sts.append(stacked_rate(config, dataset, K, data, device))
    seq, st = max(seqs), max(sts)
    verdict = "" if target is None else f" (target >= {target}x: {'PASS' if st / seq >= target else 'MISS'})"
    print(f"{label}: sequential {seq:9.0f} img/s per mask | stacked K={K} {st:9.0f} img/s per mask | "
          f"ratio {st / seq:.2f}x{verdict} [best of {rounds}; ratios per round "
          f"{', '.join(f'{b / a:.2f}' for a, b in zip(seqs, sts))}]")
    return st / seq


def end_to_end(config, dataset, K, epochs, rounds=2) -> float:
    """`masklab.generate` of K masks with --stack 1 against --stack K (each as the trainer runs it: thread
    count, evaluation, storing), best wall time of `rounds`; prints and returns the ratio."""
    import tempfile

    import masklab

    best = {}
    for _ in range(rounds):
        for stack in (1, K):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                masklab.generate(config, runs_dir=tmp, data=dataset, masks=K, epochs=epochs, stack=stack)
                best[stack] = min(best.get(stack, float("inf")), time.perf_counter() - start)
    ratio = best[1] / best[K]
    print(f"  end to end, masklab.generate of {K} masks x {epochs} epoch(s): --stack 1 {best[1]:.1f} s | "
          f"--stack {K} {best[K]:.1f} s | ratio {ratio:.2f}x")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer steps, skip conv4 on CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 12 if args.quick else args.steps
    cpu = torch.device("cpu")

    fashion = os.path.isdir("/usr/share/datasets/fashion-mnist")
    ds = load_dataset("fashion-mnist") if fashion else load_dataset("synthetic", input_shape=(1, 28, 28))
    lenet = RunConfig(dataset="fashion-mnist" if fashion else "synthetic", model="lenet-300-100")
    compare(f"CPU {args.threads} threads, lenet-300-100 on {ds.name}", lenet, ds, 8, steps, cpu, 2.0)
    end_to_end(lenet.replace(device="cpu"), ds, 8, 1 if args.quick else 2)
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
