"""What opening a run costs: the checks `Run(path)` makes every time (`show`, `analyze`, `generate --resume`).

Builds a run directory of `--masks` random masks of Conv-4 size (2,425,024 bits = 37,891 words, 303 KB per
mask; 1,000 masks = 303 MB) and times, each the minimum over `--rounds` rounds (files in the page cache):

- `structure`: run.json, config.toml, every record and the mask files' sizes (no hashing);
- `contents` (the default open): the above plus masks.bits (header, ids, row checksums, every row hashed
  with BLAKE2b on the usable cores) and every mask file compared with its verified row;
- `contents, no cache`: the same when masks.bits is missing (every mask file hashed instead);
- raw BLAKE2b throughput on one thread, for scale.

    python bench/bench_open_check.py [--masks 1000] [--rounds 3] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from masklab import files as W
from masklab.config import RunConfig
from masklab.keep import layer_keep
from masklab.store import files as F
from masklab.store.bits import make_layout
from masklab.store.paths import stem
from masklab.store.run import Run
from masklab.store.writer import _write_new_run

CONV4 = [("conv1", (64, 3, 3, 3)), ("conv2", (64, 64, 3, 3)), ("conv3", (128, 64, 3, 3)), ("conv4", (128, 128, 3, 3)),
         ("fc1", (256, 8192)), ("fc2", (256, 256)), ("fc3", (10, 256))]


def make_run(root: Path, n_masks: int) -> Path:
    """A run directory of `n_masks` random masks with valid records (written directly, no training)."""
    config = RunConfig(dataset="cifar10", model="conv4", masks=n_masks)
    layers = make_layout([n for n, _ in CONV4], [s for _, s in CONV4],
                         [layer_keep(int(np.prod(s)), config) for _, s in CONV4])
    path = root / config.run_id
    path.mkdir(parents=True)
    _write_new_run(path, config, layers, {"name": "cifar10", "input_shape": [3, 32, 32], "n_classes": 10,
                                          "n_train": 50000, "n_test": 10000})
    n_words = int(layers["word_stop"].iloc[-1])
    rng = np.random.default_rng(0)
    for i in range(n_masks):
        words = rng.integers(0, 2**63, size=n_words, dtype=np.uint64)
        data, checksum = F.mask_bytes(i, words)
        W.atomic_write(path / "masks" / f"{stem(i)}.mask", data, durable=False, root=path, in_run=True)
        record = {"mask_id": i, "weight_seed": 0, "score_seed": i, "data_seed": 0, "test_acc": 0.5,
                  "best_test_acc": 0.5, "test_loss": 1.0, "seconds": 1.0, "epochs": 1, "checksum": checksum,
                  "n_keep": [int(k) for k in layers["n_keep"]], "extras": {}, "files": {}}
        W.atomic_write_json(path / "masks" / f"{stem(i)}.json", record, root=path, in_run=True)
    Run(path, check="structure").masks  # noqa: B018 -- writes masks.bits
    return path


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to build the run (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="100 masks, 2 rounds")
    args, _ = parser.parse_known_args()
    if args.quick:
        args.masks, args.rounds = 100, 2
    root = Path(tempfile.mkdtemp(prefix="masklab-bench-", dir=args.dir))
    try:
        path = make_run(root, args.masks)
        size = (path / "masks.bits").stat().st_size
        print(f"{args.masks} masks of Conv-4 size: masks.bits {size / 1e6:.0f} MB")
        blob = np.random.default_rng(1).integers(0, 255, size=min(size, 256 << 20), dtype=np.uint8).tobytes()
        raw = best(lambda: hashlib.blake2b(blob, digest_size=32).digest(), args.rounds)
        print(f"BLAKE2b, one thread:          {len(blob) / raw / 1e9:.2f} GB/s")
        t_struct = best(lambda: Run(path, check="structure"), args.rounds)
        t_full = best(lambda: Run(path), args.rounds)
        print(f"open, structure only:         {1e3 * t_struct:8.1f} ms")
        print(f"open, contents (the default): {1e3 * t_full:8.1f} ms  ({size / t_full / 1e9:.2f} GB/s of masks.bits)")
        cache = path / "masks.bits"
        keep = root / "masks.bits.keep"
        shutil.move(cache, keep)
        t_nocache = best(lambda: Run(path), args.rounds)
        shutil.move(keep, cache)
        print(f"open, contents, no masks.bits:{1e3 * t_nocache:8.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
