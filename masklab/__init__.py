"""masklab: the mask landscape of randomly initialised neural networks.

The public names are imported lazily (on first use), so `import masklab` stays fast:

    run = masklab.generate(masks=4, epochs=2)      # train a run of masks (-> Run)
    run = masklab.open_run("runs/<run_id>")        # open one (path or run id)
    run.table, run.masks                           # registry DataFrame, MaskSet (N x W uint64)
    run = masklab.import_masks(["a.pth", "b.pth"], format="hidden-networks", keep=0.5)   # masks from elsewhere
    masklab.export_mask(run, 0, "state-dict", "mask0.pt"); masklab.plain_model(run, 0)  # ... and back
    masklab.landscape(runs)                        # one tidy table of every run's landscape metrics vs chance
    run = masklab.import_maskset(masks, model="mlp", dataset="digits")   # a MaskSet held in memory
    masklab.results("runs")                        # one row per run and analysis: the results catalog
"""

from __future__ import annotations

import importlib
import os

# Thread-independent matrix products (MKL's strict CNR mode): MKL reads this when it first runs, so it is set
# before anything can use torch through masklab. A mask's bits must not depend on the thread count; see
# masklab/nn/exact.py. A value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# OpenMP threads that sleep when idle instead of spinning: a spinning worker of torch's pool held the second
# core while `per_mask_bmm` gave it half of a stack's matrix products (lenet-300-100, K = 8, 2 cores: a step
# 30.9 -> 22.6 ms), and a machine shared with other jobs loses its cores to the spin (issue 27). libgomp reads
# this when torch first starts its threads; speed only, never bits. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Deterministic cuBLAS (torch.use_deterministic_algorithms, which CUDA training sets: masklab/train/precision.py)
# needs a fixed workspace; cuBLAS reads this when its first handle is made. A value the user set is kept (and
# checked before training).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "RunConfig": "masklab.config",
    "MaskSet": "masklab.store.bits",
    "Run": "masklab.store.run",
    "open_run": "masklab.store.run",
    "list_runs": "masklab.store.run",
    "results": "masklab.store.catalog",
    "generate": "masklab.generation",
    "UserError": "masklab.errors",
    "distances": "masklab.analysis.distances",
    "intersections": "masklab.analysis.distances",
    "distance_matrices": "masklab.analysis.distances",
    "random_baseline": "masklab.analysis.baselines",
    "analyze": "masklab.report",
    "compare": "masklab.report",
    "Report": "masklab.report",
    "interpolate": "masklab.analysis.interpolation",
    "landscape": "masklab.analysis.landscape",
    "functional_similarity": "masklab.analysis.functional",
    "import_masks": "masklab.interop.importer",
    "import_maskset": "masklab.interop.maskset",
    "plain_model": "masklab.interop.exporter",
    "export_mask": "masklab.interop.exporter",
    "history_table": "masklab.tracking",
    "export_history": "masklab.tracking",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'masklab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API only (not the module's machinery: importlib, os, _LAZY, ...)."""
    return sorted(__all__)
