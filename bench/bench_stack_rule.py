"""The rule behind `--stack auto`: per-mask training throughput at K = 1, 2, 4, 8 for each kind of model.

A mask's bits do not depend on K (tests/train/test_same_bits.py), so `--stack auto` may choose K for speed
alone. This measures, for a linear-only model (lenet-300-100 on Fashion-MNIST, or digits mlp) and a model
with convolutions (conv4 on CIFAR-shaped synthetic data), images per second per mask through the trainer's
one path (`build_training` + `train_step`) at each K and at the thread count the trainer would use (for a
small step the faster of one and all threads, as `EpochThreads` finds), K = 1 being the baseline of every
ratio, and prints
the K that `auto_stack` picks beside the measured best. PASS when auto's K is at least as fast as K = 1 and
within 10% of the best K. On a GPU it also measures conv4 up to K = 32.

    python bench/bench_stack_rule.py [--steps 30] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os

import torch
from bench_stack import batches, stack_rate  # bench/ is on sys.path when a bench script runs

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.train.stacked import auto_stack


def measure(label, config, dataset, ks, steps, device, rounds=2) -> None:
    data = batches(dataset, config.batch_size, steps, device)
    rates = {K: 0.0 for K in ks}
    for _ in range(rounds):  # alternate, keep the best of each (least disturbed by the machine)
        most = torch.get_num_threads()
        for K in ks:
            # the thread counts the trainer measures while it trains (masklab.train.plan): 1 and all
            for threads in (1, most) if device.type == "cpu" else (most,):
                torch.set_num_threads(threads)
                rates[K] = max(rates[K], stack_rate(config, dataset, range(K), data, device))
            torch.set_num_threads(most)
    auto = auto_stack(config, dataset, device, max(ks))
    best = max(rates, key=rates.get)
    ratios = ", ".join(f"K={K}: {rates[K] / rates[1]:.2f}x" for K in ks)
    auto_rate = rates.get(auto) or stack_rate(config, dataset, range(auto), data, device)
    ok = auto_rate >= 0.97 * rates[1] and auto_rate >= 0.9 * rates[best]
    print(f"{label}: per-mask throughput vs K=1 ({rates[1]:.0f} img/s): {ratios} | best K={best} | "
          f"auto picks K={auto} -> {'PASS' if ok else 'MISS'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer steps and K values")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 8 if args.quick else args.steps
    cpu = torch.device("cpu")
    fashion = os.path.isdir("/usr/share/datasets/fashion-mnist")
    ds = load_dataset("fashion-mnist") if fashion else load_dataset("synthetic", input_shape=(1, 28, 28))
    lenet = RunConfig(dataset=ds.name, model="lenet-300-100", device="cpu")
    ks = (1, 2, 4, 8) if not args.quick else (1, 8)
    measure(f"CPU, lenet-300-100 on {ds.name}", lenet, ds, ks, steps, cpu)
    measure("CPU, biprop lenet-300-100", lenet.replace(method="biprop"), ds, ks, steps, cpu)
    cifar = load_dataset("synthetic", input_shape=(3, 32, 32))
    conv4 = RunConfig(dataset="synthetic", model="conv4", device="cpu")
    measure("CPU, conv4 on CIFAR-shaped synthetic", conv4, cifar, (1, 2) if args.quick else (1, 2, 4),
            max(3, steps // 6), cpu, rounds=1)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        measure(f"GPU {torch.cuda.get_device_name()}, conv4", conv4.replace(device="cuda"), cifar, (1, 8, 16, 32),
                steps, gpu)


if __name__ == "__main__":
    main()
