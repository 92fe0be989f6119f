"""One training step (forward, backward, SGD) on Conv-4 with a CIFAR-shaped batch of 128, 2 threads.

Prints the Edge-Popup (and Biprop) step time as a ratio to the dense step of the same network, measured
side by side in this process (interleaved rounds, median). Every variant is the trainer's own step
(`masklab.train.trainer.build_training` + `train_step`): masks train as a stack of one through
`FusedScoreSGD`, dense weights through torch.optim.SGD, and every convolution's weight gradient runs
single-threaded so that results do not depend on the thread count (see masklab/nn/exact.py). Also
printed: a reference-style step whose mask comes from a full sort of |scores| (what the reference code
does, through autograd), and the dense step with torch's own multi-threaded convolution backward, which
shows what exactness costs. Target: edge-popup / dense <= 1.05.

    python bench/bench_train_step.py [--rounds 7] [--threads 2] [--model conv4] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.nn import build_model, init_model
from masklab.nn import layers as layers_module
from masklab.train.trainer import build_training, train_step


def sort_topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """The reference implementation's selection: a full sort of the layer's |scores|."""
    flat = values.detach().abs().reshape(-1)
    out = torch.zeros_like(flat)
    _, idx = flat.sort()
    out[idx[flat.numel() - k:]] = 1
    return out.view_as(values)


class _SortStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, k):
        return sort_topk_mask(scores, k)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def reference_step(model_name: str, batch: int, x, y):
    """hidden-networks' step: sort-based top-k in every forward, autograd, torch.optim.SGD."""
    from masklab.nn.layers import masked_layers

    model = build_model(model_name, (3, 32, 32), 10, 1.0, "edge-popup", 0.5)
    init_model(model, 0, 0, "signed-constant")
    for _, layer in masked_layers(model):
        layer.effective_weight = (lambda l: lambda: l.weight * _SortStraightThrough.apply(l.scores.abs(), l.n_keep))(
            layer)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def trainer_step(method: str, model_name: str, x, y):
    data = load_dataset("synthetic", input_shape=(3, 32, 32))
    config = RunConfig(dataset="synthetic", model=model_name, method=method, sparsity=0.5)
    model, _, optimizer = build_training(config, data, [0], torch.device("cpu"))
    return lambda: train_step(model, optimizer, x, y.expand(1, -1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)

    variants = {"dense": trainer_step("dense", args.model, x, y),
                "edge-popup": trainer_step("edge-popup", args.model, x, y),
                "biprop": trainer_step("biprop", args.model, x, y),
                "edge-popup (sort, reference-style)": reference_step(args.model, args.batch, x, y),
                "dense, torch's threaded conv backward": trainer_step("dense", args.model, x, y)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    exact_conv = layers_module.conv2d
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, step in variants.items():
            if "threaded" in name:  # what the exact weight gradient costs
                layers_module.conv2d = lambda x, w, s=1, p=0, g=1: F.conv2d(x, w, None, s, p, 1, g)
            start = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - start)
            layers_module.conv2d = exact_conv

    dense = statistics.median(times["dense"])
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:40s} {med * 1e3:8.1f} ms/step   ratio to dense {med / dense:5.2f}x")
    ratio = statistics.median(times["edge-popup"]) / dense
    print(f"edge-popup / dense step ratio: {ratio:.2f} (target <= 1.05) -> {'PASS' if ratio <= 1.05 else 'MISS'}")


if __name__ == "__main__":
    main()
