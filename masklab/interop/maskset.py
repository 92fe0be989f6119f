"""A run from masks held in memory: `import_maskset(masks, model=..., dataset=...)`.

For masks made elsewhere in a notebook (a MaskSet from `MaskSet.from_bool`, masks of another run, random masks
for a benchmark): the run is an import (`masklab import`'s format, section ``imported`` with format
``maskset``) whose weights are masklab's own random weights of `model` from `weight_seed` (what `generate`
would train the scores over), stored once (``weights.npy``), so that every analysis runs on it, interpolation
included. Each mask keeps its given bits exactly (keep rule ``stored``: the per-layer counts of the masks,
which must be the same for every mask); with `evaluate` its test loss and accuracy are measured on the subnetwork
`Run.model(i)` rebuilds, and the predicted classes of that pass stored as a trained mask's are (the functional
analysis reads them instead of evaluating every mask again). The run id follows from the masks' checksums:
importing the same masks again finds the run (and completes it if a write was killed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from masklab import files as W
from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.errors import UserError
from masklab.interop.import_checks import Target
from masklab.interop.importer import Plan, _evaluate, write_import
from masklab.nn.layers import masked_layers
from masklab.store.bits import MaskSet, make_layout
from masklab.store.catalog import update_run
from masklab.store.run import Run
from masklab.store.schema import import_digest
from masklab.train.stacked import make_model

FORMAT = "maskset"


class _Unpacked:
    """The masks of a MaskSet as per-layer bool arrays of the model's shapes, unpacked one at a time."""

    def __init__(self, masks: MaskSet, shapes: list[tuple[int, ...]]):
        self.masks, self.shapes = masks, shapes

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> list[np.ndarray]:
        row = int(self.masks.ids[i])
        return [m.reshape(s) for m, s in zip(self.masks.unpack_layers(row), self.shapes)]


def import_maskset(masks: MaskSet, *, model: str, dataset: str = "digits", width: float = 1.0,
                   method: str = "edge-popup", weight_seed: int = 0, data_root: str | os.PathLike | None = None,
                   name: str | None = None, runs_dir: str | os.PathLike = "runs", evaluate: bool = True,
                   log: Callable[[str], None] | None = None) -> Run:
    """Make a run of `masks` (mask i of the run = row i of the set) over masklab's `model` on `dataset` with the
    weights of `weight_seed`, and return it (see the module docstring). The set's layers must have the model's
    sizes, in order; every mask must keep the same number of weights per layer."""
    if not isinstance(masks, MaskSet) or len(masks) == 0:
        raise UserError("import_maskset takes a non-empty MaskSet (see MaskSet.from_bool)")
    say = log or (lambda message: None)
    config = RunConfig(dataset=dataset, model=model, width=float(width), method=method, weight_seed=int(weight_seed),
                       data_root=None if data_root is None else str(data_root))
    config.validate()
    data = load_dataset(dataset, data_root)
    net = make_model(config.replace(sparsity=0.5), data)
    ours = [(n, tuple(int(d) for d in m.weight.shape)) for n, m in masked_layers(net)]
    sizes = masks.layers["n_bits"].to_numpy(np.int64).tolist()
    if sizes != [int(np.prod(s)) for _, s in ours]:
        raise UserError(f"the masks' layers hold {sizes} bits, model {model} (width {width:g}) on {dataset} has "
                        f"{[int(np.prod(s)) for _, s in ours]}: check model, dataset and width")
    counts = masks.popcounts(per_layer=True)
    if len(np.unique(counts, axis=0)) != 1:
        raise UserError("the masks keep different numbers of weights per layer; a run's masks keep the same "
                        "number in each layer: import them as separate runs")
    kept = [int(c) for c in counts[0]]
    names, shapes = [n for n, _ in ours], [s for _, s in ours]
    weights = [[m.weight.detach().numpy().astype(np.float32) for _, m in masked_layers(net)]]
    bits = np.asarray(masks.bits)
    sources = [{"mask_id": i, "file": f"MaskSet row {i} (mask id {int(masks.ids[i])})", "bytes": int(bits[i].nbytes),
                "sha256": hashlib.sha256(np.ascontiguousarray(bits[i], dtype="<u8").tobytes()).hexdigest(),
                "prefix": "", "reported": {}, "ignored_keys": 0} for i in range(len(masks))]
    mapping = {str(a): b for a, b in zip(masks.layers["layer"], names)}
    section = {"format": FORMAT, "method": method, "method_from": "import_maskset", "keep_rule": "stored",
               "keep_fraction": None, "tie_break": "none (the masks are given)", "weights": "shared",
               "sources": sources, "mapping": mapping,
               "n_keep": kept, "gain_counts": None, "weights_dtype": ["float32"], "different_weights": None}
    section["digest"] = import_digest(section)
    shown = min(max(round(1 - sum(kept) / sum(sizes), 6), 0.0), 0.999999)
    config = config.replace(sparsity=shown, keep_rule="stored", imported=section["digest"], masks=len(masks),
                            name=name or f"import-{FORMAT}-{model}")
    config.validate()
    info = {"name": dataset, "input_shape": list(data.input_shape), "n_classes": int(data.n_classes),
            "n_train": int(data.n_train), "n_test": int(data.n_test)}
    target = Target(names, shapes, dict(mapping), [], data, info)
    unpacked = _Unpacked(masks, shapes)
    metrics: list[dict] = [{"test_acc": None, "best_test_acc": None, "test_loss": None, "seconds": None,
                            "source_file": s["file"]} for s in sources]
    alphas: list[list[float] | None] = [None] * len(masks)
    exists = (Path(runs_dir) / config.run_id / "run.json").is_file()
    predictions = None
    if evaluate and not exists:
        predictions = _evaluate(config, target, unpacked, weights, [{}] * len(masks), kept, None, metrics, alphas,
                                say)
    files = {"weights.npy": W.npy_bytes(np.concatenate([w.reshape(-1) for w in weights[0]]))}
    layout = make_layout(names, shapes, kept)
    plan = Plan(config, layout, info, section, unpacked, weights, [{}] * len(masks),  # type: ignore[arg-type]
                [None] * len(masks), metrics, alphas, files, predictions)
    path = write_import(plan, runs_dir)
    run = Run(path, check="structure")
    run.masks  # noqa: B018 -- builds the consolidated bit matrix for the analyses
    update_run(run.path, runs_dir)
    return run


__all__ = ["import_maskset"]
