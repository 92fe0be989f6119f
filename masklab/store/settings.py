"""The settings of a run as a person reads them (`masklab show`, the index page, `Run.settings()`): one row per
setting with the value used (method defaults resolved) and where it comes from (set, the method, the default)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from masklab.config import RESOLVED, RunConfig, method_label

# The config fields that `settings_table` shows (the others: `show` lists those set away from their default).
SETTING_FIELDS = ("dataset", "input_shape", "model", "width", "method", "recycle", "sparsity", "keep_rule", "imported",
                  "epochs", "lr", "batch_size", "momentum", "weight_decay", "weight_init", "scale_fan", "recycle_rate",
                  "recycle_every", "recycle_warmup", "recycle_donors", "weight_seed", "score_seed", "data_seed",
                  "vary_data_seed", "masks")


def _source(key: str, hashed: dict, value: Any, default: Any) -> str:
    if key in hashed or (key not in RESOLVED and value != default):
        return "set"
    return "method" if key in RESOLVED and value is not None else "default"


def settings_table(config: RunConfig, hashed: dict | None = None, *, imported: dict | None = None
                   ) -> pd.DataFrame:
    """The settings of a run with config `config` as a person reads them: columns `setting`, `value` (the value
    used, method defaults resolved; sparsity and rates as fractions, seeds as integers or an inclusive range
    "first..last"), `source` ("set", "method" or "default": whether `hashed`, the run's hashed fields, holds it,
    or the method or the dataclass gives it). Imported runs (`imported`: run.json's import section) list what
    was imported instead of the training settings masklab did not choose.

    Examples
    --------
    >>> settings_table(RunConfig(masks=4, lr=0.05)).set_index("setting").loc[["lr", "score seeds"], "value"].tolist()
    [0.05, '0..3']
    """
    cfg = config.resolve()
    hashed = config.hashed_fields() if hashed is None else hashed
    rows: list[tuple[str, Any, str]] = []

    def add(setting: str, key: str, value: Any = None) -> None:
        actual = getattr(cfg, key) if value is None else value
        default = next(f.default for f in dataclasses.fields(RunConfig) if f.name == key)
        rows.append((setting, actual, _source(key, hashed, getattr(cfg, key), default)))

    def seeds(key: str, varies: bool) -> str | int:
        first = getattr(cfg, key)
        return f"{first}..{first + cfg.masks - 1}" if varies and cfg.masks > 1 else first

    add("dataset", "dataset")
    if cfg.input_shape is not None:
        add("input shape", "input_shape")
    add("model", "model")
    if cfg.width != 1:
        add("width", "width")
    add("method", "method", method_label(cfg.method, cfg.recycle))
    add("sparsity", "sparsity")
    if imported is not None:
        rows.append(("imported from", f"{imported.get('format')} ({len(imported.get('sources', []))} files)",
                     "set"))
        add("keep rule", "keep_rule")
        return pd.DataFrame(rows, columns=["setting", "value", "source"])
    add("epochs", "epochs")
    add("lr", "lr")
    add("batch size", "batch_size")
    add("momentum", "momentum")
    add("weight decay", "weight_decay")
    add("weight init", "weight_init")
    add("fan scaled by keep", "scale_fan")
    if cfg.recycle != "none":
        add("recycle rate", "recycle_rate")
        add("recycle every (epochs)", "recycle_every")
        add("recycle warm-up (epochs)", "recycle_warmup")
        add("recycle donors", "recycle_donors")
    add("weight seed", "weight_seed")
    add("score seeds", "score_seed", seeds("score_seed", True))
    add("data seed" + ("s" if cfg.vary_data_seed else ""), "data_seed", seeds("data_seed", cfg.vary_data_seed))
    return pd.DataFrame(rows, columns=["setting", "value", "source"])
