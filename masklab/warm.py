"""Fill the on-disk caches that a first `masklab generate` / `masklab analyze` would otherwise fill.

Run once after set-up (the set-up script can call it)::

    python -m masklab.warm            # a progress line and one line per step
    python -m masklab.warm --quiet    # silent; exit code 0

or from Python, ``masklab.warm.warm_caches()``, which returns the seconds each step took.

What it warms (each step is independent; a step that fails is reported and the others still run):

- ``distances``: the numba intersection kernel (`masklab.analysis._numba_kernels`) and the random masks'
  count kernel (`masklab.analysis._numba_random`), both ``cache=True``: loaded from, or compiled into,
  numba's cache beside the sources (or ``$NUMBA_CACHE_DIR``);
- ``analysis``: the structure test, an MDS embedding and the figure code on a few random masks, which
  imports (and so byte-compiles and reads from disk) scipy, scikit-learn and matplotlib and builds
  matplotlib's font cache;
- ``training``: the numba selection and fused-SGD kernels of training (`masklab.nn.select`,
  `masklab.train.score_sgd`, all ``cache=True``), by training one mask alone and two stacked for one epoch
  on the embedded digits data (nothing is written);
- ``umap``: pynndescent's kernels (compiled with ``cache=True`` when umap is first imported: about half a
  minute on 2 cores), and umap's own kernels on masklab's path, which umap does not cache itself and
  `masklab.analysis.embedding.cache_umap_kernels` switches numba's cache on for, by one small UMAP
  embedding. Without this step the first UMAP embedding in a fresh environment costs 30-40 s and every
  later process 6-12 s; after it, a fraction of a second.

numba keys its cache on the source files and the CPU, so the caches stay valid until the package (or
numba, or umap) changes; running this again is cheap (each step then just loads what is there).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from masklab.analysis._numba_random import flip_to_counts
from masklab.analysis.cluster_structure import structure_vs_random
from masklab.analysis.clustering import cluster_masks
from masklab.analysis.distances import distances, intersections
from masklab.analysis.embedding import embed
from masklab.analysis.random_sets import random_masks
from masklab.data import load_dataset
from masklab.errors import UserError
from masklab.generation import as_config
from masklab.plots import embedding_scatter
from masklab.store.bits import MaskSet
from masklab.train.trainer import train_mask, train_masks

STEPS = ("distances", "analysis", "training", "umap")


def _random_masks(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    return MaskSet.from_bool(rng.random((n, 700)) < 0.5, layer_sizes=[200, 500])


def warm_distances() -> None:
    masks = _random_masks(8)
    intersections(masks, per_layer=True, backend="numba")
    intersections(masks, _random_masks(8, 1), per_layer=True, backend="numba")
    random_masks(masks, 4, random_state=0)
    # the count fix-up kernel: called directly, since random_masks takes numpy for inputs this small
    flip_to_counts(np.zeros((2, 2), np.uint64), np.zeros(1, np.int64), np.ones(1, np.int64),
                   np.array([[3, 5]], np.int64))


def warm_analysis() -> None:
    masks = _random_masks(12)
    square = distances(masks, metric="hamming_norm", form="square")
    cluster_masks(square)
    structure_vs_random(masks, n_random=2)
    points = embed(square, "mds").assign(test_acc=0.5)
    embedding_scatter(points, ["test_acc"]).savefig(io.BytesIO(), format="png")


def warm_training() -> None:
    dataset = load_dataset("digits")
    config = as_config(None, masks=2, epochs=1)
    train_mask(config, 0, dataset=dataset, device="cpu")
    train_masks(config, [0, 1], dataset=dataset, device="cpu")


def warm_umap() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((60, 5))
    matrix = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))
    embed(matrix, "umap", random_state=0)


WARMERS: dict[str, Callable[[], None]] = {"distances": warm_distances, "analysis": warm_analysis,
                                          "training": warm_training, "umap": warm_umap}


def warm_caches(steps=STEPS, *, quiet: bool = True, log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Run the warm-up `steps` (default all: distances, analysis, training, umap); returns the seconds of
    each step that succeeded. With ``quiet=False`` a progress line (tqdm, stderr) follows the steps; `log`
    receives one line per step (its time, or why it failed)."""

    unknown = [s for s in steps if s not in WARMERS]
    if unknown:

        raise UserError(f"unknown warm-up steps {unknown}; choose from {', '.join(STEPS)}")
    say = log or (lambda line: None)
    seconds: dict[str, float] = {}
    bar = tqdm(list(steps), disable=quiet, unit="step", desc="warm caches", leave=False, dynamic_ncols=True)
    for step in bar:
        bar.set_description(f"warm caches: {step}")
        start = time.perf_counter()
        try:
            WARMERS[step]()
        except Exception as e:  # noqa: BLE001 - a cache that cannot be warmed is filled on first use instead
            say(f"{step}: not warmed ({type(e).__name__}: {' '.join(str(e).split())})")
            continue
        seconds[step] = time.perf_counter() - start
        say(f"{step}: {seconds[step]:.1f} s")
    bar.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m masklab.warm",
                                     description="Fill numba's on-disk caches (masklab's kernels, umap's and "
                                     "pynndescent's) and the other first-use caches, so that the first "
                                     "`masklab generate` / `masklab analyze` runs at full speed.")
    parser.add_argument("--steps", default=",".join(STEPS), metavar="LIST",
                        help=f"comma-separated steps (default {','.join(STEPS)})")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    say = (lambda line: None) if args.quiet else (lambda line: print(f"masklab warm: {line}", flush=True))
    try:
        seconds = warm_caches(steps, quiet=args.quiet, log=say)
    except Exception as e:  # noqa: BLE001
        print(f"masklab warm: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"masklab warm: done in {sum(seconds.values()):.1f} s", flush=True)
    return 0 if len(seconds) == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
