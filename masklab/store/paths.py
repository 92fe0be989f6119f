"""Names and paths of a run directory, the one place every other store module reads them from: run ids,
the file names of mask i (`masks/000003.mask`, `masks/000003.json`) and which files are its own, relative paths
kept inside the run,
and `resolve_run` (a run directory from a path, a run id or a unique id prefix)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from masklab.errors import StoreError, UserError
from masklab.files import TMP_MARK

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
RECORD_RE = re.compile(r"(\d{6,})\.json")  # masks/<stem>.json: a mask's registry record


def check_run_id(text: str) -> str:
    if not RUN_ID_RE.fullmatch(text) or ".." in text:
        raise StoreError(f"{text!r} is not a run id (letters, digits, '.', '_', '+', '-'; no slashes); "
                         "pass a run id from `masklab runs` or the path of a run directory")
    return text


def check_mask_id(value: object) -> int:
    """`value` as a mask id: an integer >= 0 (Python or numpy), never a bool (True is not mask 1) nor a float
    (0.5 is not mask 0, and 1.0 is not taken for 1 either); anything else is a UserError. Every function that
    takes a mask id from a caller checks it here."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UserError(f"mask id {value!r} is invalid: mask ids are integers >= 0 (e.g. 0, 1, 2)")
    return int(value)


def stem(mask_id: int) -> str:
    """File stem of mask `mask_id`: six digits (more when needed)."""
    if not isinstance(mask_id, (int, np.integer)) or isinstance(mask_id, bool) or mask_id < 0:
        raise StoreError(f"mask id {mask_id!r} is invalid: mask ids are integers >= 0")
    return f"{int(mask_id):06d}"


def mask_path(root: Path, mask_id: int) -> Path:
    """`masks/<stem>.mask` of run `root`: mask `mask_id`'s packed bits."""
    return root / "masks" / f"{stem(mask_id)}.mask"


def record_path(root: Path, mask_id: int) -> Path:
    """`masks/<stem>.json` of run `root`: mask `mask_id`'s registry record."""
    return root / "masks" / f"{stem(mask_id)}.json"


def own_file(rel: str, mask_id: int) -> bool:
    """Whether `rel` (a path relative to the run) is one of mask `mask_id`'s own files by the store's naming:
    `masks/<stem>.mask`, `masks/<stem>.json` (its record), `extras/<stem>.<kind>.<ext>`, `snapshots/<stem>.npz`.
    A record may name no other file, and `verify --repair` moves no other file (never run.json, config.toml,
    weights.npy or another mask's files, whatever a damaged record says)."""
    parts = Path(rel).parts
    if len(parts) != 2 or Path(rel).is_absolute():
        return False
    folder, name = parts
    s = stem(mask_id)
    if folder == "masks":
        return name in (f"{s}.mask", f"{s}.json")
    if folder == "extras":
        return name.startswith(f"{s}.") and len(name) > len(s) + 1 and TMP_MARK not in name
    return folder == "snapshots" and name == f"{s}.npz"


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and anything that leaves `root`."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise StoreError(f"refusing path {relative!r} in run {root}: paths in a run must stay inside it")
    path = root / rel
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise StoreError(f"refusing path {relative!r} in run {root}: it leaves the run directory") from None
    return path


def resolve_run(path_or_id: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Path:
    """A run directory from a path, a run id under `runs_dir` (default `runs`) or a unique id prefix."""
    text = os.fspath(path_or_id)
    path = Path(text)
    if (path / "run.json").is_file():
        return path
    runs = Path(runs_dir if runs_dir is not None else "runs")
    if os.sep in text or text.startswith("."):
        if path.exists():
            raise StoreError(f"{text} is not a masklab run directory (no run.json)")
        raise StoreError(f"no run directory {text}; `masklab runs` lists the runs under {runs}")
    check_run_id(text)
    if (runs / text / "run.json").is_file():
        return runs / text
    matches = sorted(p.name for p in runs.iterdir() if p.name.startswith(text) and (p / "run.json").is_file()) \
        if runs.is_dir() else []
    if len(matches) == 1:
        return runs / matches[0]
    if len(matches) > 1:
        raise StoreError(f"{text!r} matches {len(matches)} runs under {runs} ({', '.join(matches[:5])}); "
                         "give more of the id")
    raise StoreError(f"no run {text!r} under {runs}; `masklab runs --runs-dir DIR` lists the runs")

