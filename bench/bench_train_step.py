"""One training step (forward, backward, SGD) on Conv-4 with a CIFAR-shaped batch of 128, 2 threads.

Prints the Edge-Popup (and Biprop) step time as a ratio to the dense step of the same network, measured
side by side in this process (interleaved rounds, median), plus the ratio of a reference-style step whose
mask comes from a full sort of |scores| (what the reference code does). Target: edge-popup / dense <= 1.2.

    python bench/bench_train_step.py [--rounds 7] [--threads 2] [--model conv4] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from masklab.nn import build_model, init_model
from masklab.nn import layers as layers_module


def sort_topk_mask(values: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """The reference implementation's selection: a full sort of the layer's |scores|."""
    flat = values.detach().reshape(-1)
    flat = flat.abs() if absolute else flat
    out = torch.zeros_like(flat, dtype=torch.bool)
    _, idx = flat.sort()
    out[idx[flat.numel() - k:]] = True
    return out.view_as(values)


def make_step(method: str, model_name: str, batch: int):
    model = build_model(model_name, (3, 32, 32), 10, 1.0, method, 0.5)
    init_model(model, 0, 0, "signed-constant" if method != "biprop" else "kaiming-normal")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def time_once(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    fast_select = layers_module.topk_mask
    variants = {"dense": make_step("dense", args.model, args.batch),
                "edge-popup": make_step("edge-popup", args.model, args.batch),
                "biprop": make_step("biprop", args.model, args.batch),
                "edge-popup (sort, reference-style)": make_step("edge-popup", args.model, args.batch)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, step in variants.items():
            layers_module.topk_mask = sort_topk_mask if "sort" in name else fast_select
            t = time_once(step)
            if round_:
                times[name].append(t)
    layers_module.topk_mask = fast_select

    dense = statistics.median(times["dense"])
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:36s} {med * 1e3:8.1f} ms/step   ratio to dense {med / dense:5.2f}x")
    ratio = statistics.median(times["edge-popup"]) / dense
    print(f"edge-popup / dense step ratio: {ratio:.2f} (target <= 1.20) -> {'PASS' if ratio <= 1.2 else 'MISS'}")


if __name__ == "__main__":
    main()
