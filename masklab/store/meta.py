"""Run metadata: the contents of run.json (format, layout records, software versions, git commit) and of
config.toml, and the helpers that read them. Shared by the reader (store/run.py) and the writer (store/writer.py)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import masklab
from masklab.config import RESOLVED, RunConfig, method_label
from masklab.config_file import to_toml
from masklab.errors import StoreError
from masklab.store.bits import make_layout

RUN_FORMAT = 2  # 2: run.json and every record carry their checksum (store/files.py: JSON_CHECKSUM)
READ_FORMATS = (1, 2)  # 1: made before masklab checksummed run.json and the records (read without that check)
# Fields of config.toml that are not hashed but are the run's own, recorded in run.json's `settings` and checked
# on open (an edit is named; `verify --repair` restores them): `name` is also in the run id. Left out: `masks`
# (raised to extend a run) and `data_root` (where the data lives may move).
RECORDED = ("name", "stack", "device")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
    import torch  # here: reading a run never imports torch; only a writer (which trained with it) asks

    return {"masklab": masklab.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform()}


def git_commit() -> dict[str, Any]:
    """The git commit of the masklab source tree (null outside a git checkout) and whether it is dirty."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "."],
                                capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def layout_records(layers: pd.DataFrame) -> list[dict]:
    return [{"layer": r.layer, "shape": list(r.shape), "n_bits": int(r.n_bits), "n_keep": int(r.n_keep),
             "word_start": int(r.word_start), "word_stop": int(r.word_stop)} for r in layers.itertuples()]


def layout_frame(records: list[dict], where: str | os.PathLike = "run.json") -> pd.DataFrame:
    layers = make_layout([r["layer"] for r in records], [tuple(r["shape"]) for r in records],
                         [r["n_keep"] for r in records])
    for r, row in zip(records, layers.itertuples()):
        if (r["word_start"], r["word_stop"], r["n_bits"]) != (row.word_start, row.word_stop, row.n_bits):
            raise StoreError(f"layer {r['layer']!r} in {where} has an inconsistent word range or size; the "
                             "run's metadata is damaged: restore run.json from a copy of the run")
    return layers


def config_toml(config: RunConfig) -> str:
    """The text of a run's config.toml: every field of `config` that has a value, defaults included; then,
    as comments, the method-dependent fields left unset (`lr`, `weight_init`, ...) with the value the method
    gives them (`RunConfig.resolved_config`). Comments, so that the file still says what the user set: the
    hash is over that, and run.json's `resolved` records the values used.

    Examples
    --------
    >>> print(config_toml(RunConfig(masks=2)).splitlines()[-1])
    # lr = 0.1
    """
    head = ("# masklab run config: what was set, every other field at its default. Usable as "
            "`masklab generate --config`.\n")
    text = head + to_toml(config.to_dict())
    unset = {key: value for key, value in resolved_values(config).items() if getattr(config, key) is None}
    if any(value is not None for value in unset.values()):
        text += f"\n# Set by the method ({method_label(config.method, config.recycle)}), not by this file:\n"
        text += "".join(f"# {line}\n" for line in to_toml(unset).splitlines())
    return text


def recorded_values(config: RunConfig) -> dict[str, Any]:
    """run.json's `settings`: the RECORDED fields of the config a run was made with."""
    return {key: getattr(config, key) for key in RECORDED}


def resolved_values(config: RunConfig) -> dict[str, Any]:
    """run.json's `resolved`: the value of each method-dependent field (RESOLVED) the run uses."""
    values = config.resolved_config()
    return {key: values[key] for key in RESOLVED}
