"""The first GPU session's checks (issue 26, part 5), in one run that fits a short device lease.

Sections, in order, each under the time left (`--budget` seconds in all; a section whose estimate no longer
fits is skipped and says so), results written to `--out` (JSON) after every section, so that a run cut short
keeps what it finished:

  cuda_tests   the `cuda` tests (tests/test_cuda.py) in a subprocess
  throughput   Conv-4 on CIFAR-shaped synthetic data, Edge-Popup, Biprop, IWR: per-mask images/s at K = 1/8/32
               against K sequential single-mask runs (target >= 8x at K = 32), peak memory, images/s in all,
               and the fraction of the GPU's dense peak the step reaches (6 x multiply-accumulates per image)
  stack_auto   `--stack auto`'s K against the best K measured above
  resnet18     ResNet-18 at K = 8/32 against K = 1 (out of memory is a result)
  agreement    masks from the same seeds trained on the CPU and on the device: the fraction of bits that agree
               (and K = 4 stacked against alone on the device)
  distances    all-pairs intersections of 1,000 Conv-4-sized masks: the torch backend on the device against
               the numba kernel on the CPU (equal counts, Gbit-pairs/s each)

Every step runs under the settings training uses (`--precision`, deterministic algorithms). On a machine
without a GPU, `--device cpu` runs the same sections on CPU tensors through the device path
(`masklab.nn.device_path.emulate_device`) at tiny sizes (`--quick`): a check of this script's logic, and of
the device path against the CPU path, not a measurement (tests/test_gpu_check.py does it).

    python bench/gpu_check.py --out gpu_check.json [--budget 480] [--quick] [--sections a,b] [--device cpu]
    python bench/gpu_check.py --dry-run      # the plan and the time each section is given
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import masklab
from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.nn.device_path import emulate_device
from masklab.store.bits import MaskSet
from masklab.train.device import macs_per_sample
from masklab.train.precision import step_settings
from masklab.train.stacked import auto_stack
from masklab.train.trainer import build_training, train_masks, train_step

ROOT = Path(__file__).resolve().parent.parent
# Dense peak TFLOP/s per precision (NVIDIA's data sheets; tensor cores for tf32 and bf16, without sparsity).
PEAK_TFLOPS = [("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
               ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
               ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
               ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0})]
# Seconds each section is given (full size on an H100; --quick on a CPU takes a fraction).
ESTIMATES = {"cuda_tests": 150, "throughput": 120, "stack_auto": 5, "resnet18": 60, "agreement": 60, "distances": 30}


def peak_tflops(gpu: str, precision: str) -> float | None:
    """The GPU's dense peak for `precision`, or None for a GPU not in the table."""
    for name, peaks in PEAK_TFLOPS:
        if all(part in gpu for part in name.split()):
            return peaks[precision]
    return None


class Check:
    """The device, the sizes, the results so far and where they go."""

    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.quick = args.quick
        self.precision = args.precision
        self.out = Path(args.out)
        self.deadline = time.monotonic() + args.budget
        self.gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.results: dict = {"device": self.gpu, "precision": self.precision, "quick": self.quick,
                              "torch": torch.__version__, "cuda": torch.version.cuda, "sections": {}}
        shape = (3, 16, 16) if self.quick else (3, 32, 32)
        self.cifar = load_dataset("synthetic", input_shape=shape)
        self.conv4 = RunConfig(dataset="synthetic", input_shape="x".join(map(str, shape)), model="conv4",
                               width=0.125 if self.quick else 1.0, batch_size=32 if self.quick else 128,
                               device=args.device, precision=self.precision)
        self.ks = (1, 2, 4) if self.quick else (1, 8, 32)
        self.methods = args.methods.split(",")
        self.steps = 3 if self.quick else 20

    def path(self):
        """The device path: CUDA itself, or on a CPU the device path's code on CPU tensors."""
        return emulate_device() if self.device.type == "cpu" else contextlib.nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, self.out)

    def run(self, sections: list[str]) -> None:
        for name in sections:
            left = self.deadline - time.monotonic()
            estimate = ESTIMATES[name] * (0.2 if self.quick else 1)
            if left < estimate:
                self.results["sections"][name] = {"skipped": f"{left:.0f} s left, {estimate:.0f} s needed"}
            else:
                start = time.monotonic()
                try:
                    result = getattr(self, name)()
                except Exception as exc:  # a failed section is a result; the others still run
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                result["seconds"] = round(time.monotonic() - start, 1)
                self.results["sections"][name] = result
            print(f"{name}: {json.dumps(self.results['sections'][name], default=str)}", flush=True)
            self.save()

    # ---- sections -------------------------------------------------------------------------------------
    def cuda_tests(self) -> dict:
        timeout = max(10, int(min(ESTIMATES["cuda_tests"], self.deadline - time.monotonic() - 5)))
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return {"timeout_s": timeout, "tail": (exc.stdout or b"")[-2000:].decode(errors="replace")
                    if isinstance(exc.stdout, bytes) else str(exc.stdout)[-2000:]}
        lines = (done.stdout + done.stderr).strip().splitlines()
        return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "tail": "\n".join(lines[-30:])}

    def rate(self, config, dataset, K: int) -> dict:
        """Per-mask images/s of one stack of K (first two steps not timed) and the peak memory."""
        data = []
        for x, y in dataset.train_batches(config.batch_size, 0, 0, device=self.device):
            if len(y) == config.batch_size:
                data.append((x, y.expand(K, -1)))
            if len(data) == self.steps + 2:
                break
        while len(data) < self.steps + 2:
            data += data[: self.steps + 2 - len(data)]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.path(), step_settings(config.precision, self.device):
            model, _, optimizer = build_training(config, dataset, list(range(K)), self.device)
            for j, (x, y) in enumerate(data):
                if j == 2:
                    self.sync()
                    start = time.perf_counter()
                train_step(model, optimizer, x, y)
            self.sync()
        seconds = time.perf_counter() - start
        images = self.steps * config.batch_size
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        del model, optimizer
        return {"per_mask_img_s": images / seconds, "img_s": K * images / seconds, "peak_bytes": peak}

    def stacks(self, config, dataset, ks) -> dict:
        out = {}
        single = self.rate(config, dataset, 1)  # a stack of one trains at one rate whichever mask it holds
        macs = macs_per_sample(config, dataset)
        peak = peak_tflops(self.gpu, config.precision)
        for K in ks:
            try:
                r = single if K == 1 else self.rate(config, dataset, K)
            except torch.cuda.OutOfMemoryError as exc:
                out[K] = {"out_of_memory": str(exc).splitlines()[0]}
                continue
            tflops = 6 * macs * r["img_s"] / 1e12
            out[K] = {**{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()},
                      "vs_sequential": round(r["per_mask_img_s"] / single["per_mask_img_s"], 2),
                      "tflops": float(f"{tflops:.4g}"),
                      "fraction_of_peak": None if peak is None else float(f"{tflops / peak:.4g}")}
        return out

    def throughput(self) -> dict:
        out = {}
        for label in self.methods:
            method, _, recycle = label.partition("+")
            out[label] = self.stacks(self.conv4.replace(method=method, recycle=recycle or "none"), self.cifar, self.ks)
        out["target"] = "K = 32 Conv-4 per-mask throughput >= 8x sequential"
        self._throughput = out
        return out

    def stack_auto(self) -> dict:
        measured = getattr(self, "_throughput", {}).get(self.methods[0], {})
        rates = {K: r["per_mask_img_s"] for K, r in measured.items() if "per_mask_img_s" in r}
        method, _, recycle = self.methods[0].partition("+")
        chosen = auto_stack(self.conv4.replace(method=method, recycle=recycle or "none"), self.cifar, self.device, 64)
        best = max(rates, key=rates.get) if rates else None
        return {"auto": chosen, "best_measured": best, "per_mask_img_s": rates,
                "free_bytes": torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None}

    def resnet18(self) -> dict:
        config = self.conv4.replace(model="resnet18", width=0.0625 if self.quick else 1.0)
        return self.stacks(config, self.cifar, (1, 2) if self.quick else (1, 8, 32))

    def agreement(self) -> dict:
        """Bits that agree between the same masks trained on the CPU and on the device, and between a stack
        of 4 and the masks trained alone on the device."""
        config = self.conv4.replace(model="conv2", width=0.125 if self.quick else 0.25, epochs=1 if self.quick else 2,
                                    batch_size=128 if self.quick else 64)
        stack, alone_ids = ([0, 1], [1]) if self.quick else ([0, 1, 2, 3], [2, 3])
        cpu = train_masks(config.replace(device="cpu", precision="fp32"), [0, 1], dataset=self.cifar)
        with self.path():
            device = train_masks(config, [0, 1], dataset=self.cifar, device=self.device)
            stacked = train_masks(config, stack, dataset=self.cifar, device=self.device)
            alone = [train_masks(config, [i], dataset=self.cifar, device=self.device)[0] for i in alone_ids]

        def agree(a, b) -> float:
            return float(np.mean(np.concatenate([(x == y).reshape(-1) for x, y in zip(a.masks, b.masks)])))

        return {"cpu_vs_device": [agree(a, b) for a, b in zip(cpu, device)],
                "stacked_vs_alone_on_device": [agree(a, b) for a, b in zip(stacked[-len(alone):], alone)],
                "test_acc_cpu": [m.metrics["test_acc"] for m in cpu],
                "test_acc_device": [m.metrics["test_acc"] for m in device], "config": config.to_dict(non_default=True)}

    def distances(self) -> dict:
        n, words = (60, 312) if self.quick else (1000, 37_891)  # Conv-4: 2,425,024 bits = 37,891 words
        bits = 64 * words
        rng = np.random.default_rng(0)
        matrix = rng.integers(0, 2**63, size=(n, words), dtype=np.int64).view(np.uint64)
        layers = MaskSet.from_bool(np.zeros((1, bits), bool), [bits]).layers
        masks = MaskSet(matrix, layers)
        timings, counts = {}, {}
        for backend in ("numba", "torch"):
            masklab.intersections(MaskSet(matrix[:8], layers), backend=backend)  # loads and compiles
            self.sync()
            start = time.perf_counter()
            counts[backend] = np.asarray(masklab.intersections(masks, backend=backend).counts)
            timings[backend] = time.perf_counter() - start
        pairs = n * (n - 1) / 2
        return {"masks": n, "bits": bits, "equal": bool(np.array_equal(counts["numba"], counts["torch"])),
                **{f"{b}_s": round(t, 3) for b, t in timings.items()},
                **{f"{b}_gbit_pairs_s": round(pairs * bits / t / 1e9, 1) for b, t in timings.items()}}


SECTIONS = list(ESTIMATES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="JSON file of results (rewritten after each section)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all sections (default 480)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a check of the logic, not a measurement)")
    ap.add_argument("--methods", default="edge-popup,biprop,edge-popup+iwr", help="of the throughput section")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.device == "cpu" and args.precision != "fp32":
        ap.error("the CPU computes in fp32 only")
    if args.dry_run:
        for s in sections:
            print(f"{s}: up to {ESTIMATES[s]} s")
        print(f"total {sum(ESTIMATES[s] for s in sections)} s of a {args.budget:.0f} s budget; device {args.device}")
        return 0
    Check(args).run(sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
