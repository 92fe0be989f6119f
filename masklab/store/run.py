"""A run directory: many masks over the same random weights, their registry, extras and packed bits.

Layout of `runs/<run_id>/` (all names are fixed; nothing in it is ever unpickled):

    config.toml             the full RunConfig (every field, defaults included); a valid `--config` file.
                            Its canonical hash must be run.json's (checked on every open: an edited
                            hashed field is refused; `masks` is not hashed and is raised to extend a run)
    run.json                run id, config hash and hashed fields, layer layout, bit order, dataset
                            shape, software versions, git commit, mask-file format
    lock                    flock'ed by the one process writing the run (holds its pid); a plain file,
                            never a link
    masks/000003.mask       mask 3: 64-byte header + packed words (see store/files.py)
    masks/000003.json       mask 3's registry record: seeds, metrics, seconds, checksums of its files
                            (fields and types: integrity.RECORD_FIELDS). Written last: a mask exists
                            once its record does.
    extras/000003.history.csv         per-epoch metrics
    extras/000003.scores.npy          final scores, float16, all layers concatenated (--keep-scores)
    extras/000003.src.npz             IWR: per layer k, `pos_k` / `val_k` where src[pos] = val != pos
    extras/000003.draw.npz            IteRand: per layer k, `pos_k` / `val_k` where draw[pos] = val != 0
    extras/000003.weights.npy         dense runs: final weights, float32, all layers concatenated
    extras/000003.buffers.npz         models with BatchNorm: the buffers (running statistics)
    snapshots/000003.npz              `epochs` (S,) and packed `bits` (S x W) every E epochs
    masks.bits              cache: all masks as one N x W matrix, memory-mapped (format: store/cache.py:
                            a 64-byte header with a key = digest of every mask's id and checksum, the
                            ids, one BLAKE2b-256 per row, then the words); rebuilt atomically whenever
                            the registry changed. Safe to delete.
    analysis/               `masklab analyze`'s tables (Parquet and CSV)
    quarantine/000003-1/    mask 3's files moved aside by `masklab verify --repair` (their relative paths
                            kept: masks/000003.json, masks/000003.mask, extras/...); `generate --resume`
                            trains mask 3 again. Never read by masklab.

Every open (`Run(path)`) checks the metadata, the records and the words of every mask file and of
masks.bits (store/integrity.py); `Run.verify()` / `masklab verify RUN [--repair]` checks everything in
full. Every write goes through store/files.py: whole or not at all, and never through a symbolic link
(a link where masklab writes is refused, naming it, before anything is written).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import operator
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

import masklab
from masklab.config import RunConfig, read_config, to_toml
from masklab.errors import StoreError, UserError, WriteError, write_error
from masklab.store import cache as C
from masklab.store import files as F
from masklab.store import integrity as I
from masklab.store.bits import BIT_ORDER, MaskSet, make_layout, pack_layers, unpack_words
from masklab.store.lock import RunLock

RUN_FORMAT = 1
RECORD_RE = re.compile(r"(\d{6,})\.json")

# Registry columns shown first, in this order; other scalar fields of a record follow.
TABLE_COLUMNS = ["mask_id", "weight_seed", "score_seed", "data_seed", "test_acc", "best_test_acc", "best_epoch",
                 "test_loss", "train_acc", "train_loss", "epochs", "recycled", "seconds", "device", "checksum"]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is missing: is this a masklab run directory?") from None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise StoreError(f"{path} is unreadable or corrupt ({e})") from None


# ---- metadata ---------------------------------------------------------------------------------------------
def software_versions() -> dict[str, str]:
    import torch

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


# ---- the run, for reading -----------------------------------------------------------------------------------
class Run:
    """A run directory opened for reading. See the module docstring for what it holds.

    `table` is the registry (one row per finished mask), `masks` the MaskSet of all of them (memory-mapped),
    `model(i)` rebuilds mask i's subnetwork exactly and `evaluate(i)` measures it.
    """

    def __init__(self, path: str | os.PathLike, *, check: str = "contents"):
        """Open the run directory `path`, checking it (see store/integrity.py): its metadata, config and
        records always; with `check="contents"` (the default) also the words of every mask file and of
        masks.bits against the records' checksums. `check="structure"` leaves the words until `masks` is
        first read (they are checked then). Any problem is a StoreError naming the file."""
        if check not in ("contents", "structure"):
            raise ValueError(f"check must be 'contents' or 'structure', not {check!r}")
        self.path = Path(path)
        if not (self.path / "run.json").is_file():
            raise StoreError(f"{self.path} is not a masklab run directory (no run.json); "
                             "`masklab runs` lists the runs")
        self.meta: dict = _read_json(self.path / "run.json")
        if isinstance(self.meta, dict) and self.meta.get("format") != RUN_FORMAT:
            raise StoreError(f"{self.path}/run.json has format {self.meta.get('format')!r}; this masklab "
                             f"reads format {RUN_FORMAT}")
        I.check_meta(self.path, self.meta)
        try:
            self.config: RunConfig = read_config(self.path / "config.toml")
        except UserError as e:
            raise StoreError(f"run {self.path}: {e}; `masklab verify {self.path} --repair` restores it from "
                             "run.json") from None
        I.check_config(self.path, self.config, self.meta)
        self.id: str = self.meta["run_id"]
        self.hash: str = self.meta["hash"]
        self.layers: pd.DataFrame = layout_frame(self.meta["layers"], self.path / "run.json")
        I.check_layout(self.path, self.layers, self.config)
        self.n_words: int = int(self.meta["n_words"])
        self._check = check
        self._masks: MaskSet | None = None
        self._dataset = None
        self.refresh()

    # ---- registry -------------------------------------------------------------------------------------
    def refresh(self) -> Run:
        """Re-read (and check) the registry: masks finished since the run was opened appear."""
        records = {}
        mask_dir = self.path / "masks"
        names = sorted(os.listdir(mask_dir)) if mask_dir.is_dir() else []
        for name in names:
            m = RECORD_RE.fullmatch(name)
            if not m:
                continue
            record = I.check_record(mask_dir / name, _read_json(mask_dir / name), int(m.group(1)), self.layers)
            mask_file = mask_dir / f"{m.group(1)}.mask"
            size = mask_file.stat().st_size if mask_file.is_file() else None
            if size != F.mask_file_size(self.n_words):
                what = "missing" if size is None else f"truncated or corrupt ({size} bytes, expected " \
                    f"{F.mask_file_size(self.n_words)})"
                raise StoreError(f"mask file {mask_file} is {what}; {F.repair_hint(mask_file)}")
            records[record["mask_id"]] = record
        self.records: dict[int, dict] = dict(sorted(records.items()))
        self._table = None
        self._masks = None
        self._contents_checked = False  # the words of the mask files and masks.bits, since the last refresh
        if self._check == "contents":
            I.check_contents(self.path, self.records, self.n_words)
            self._contents_checked = True
        return self

    @property
    def ids(self) -> list[int]:
        return list(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {len(self)} of {self.config.masks} masks, path={str(self.path)!r})"

    @property
    def complete(self) -> bool:
        return all(i in self.records for i in range(self.config.masks))

    def record(self, i: int) -> dict:
        """The registry record of mask `i` (a dict)."""
        try:
            key = operator.index(i)
        except TypeError:
            raise StoreError(f"mask id {i!r} is invalid: mask ids are integers") from None
        if key not in self.records:
            have = f"its mask ids are {_ranges(self.ids)}" if self.records else "it has no finished masks"
            raise StoreError(f"run {self.id} has no mask {i}; {have}")
        return self.records[key]

    @property
    def table(self) -> pd.DataFrame:
        """One row per finished mask: mask_id, seeds, test_acc (final), best_test_acc, losses, seconds,
        checksum, ... ."""
        if self._table is None:
            rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in self.records.values()]
            table = pd.DataFrame(rows)
            first = [c for c in TABLE_COLUMNS if c in table.columns or not rows]
            rest = [c for c in table.columns if c not in first]
            self._table = table.reindex(columns=first + rest)
        return self._table

    def history(self, i: int | None = None) -> pd.DataFrame:
        """Per-epoch metrics of mask `i`, or of every mask (with a mask_id column) when `i` is None."""
        if i is None:
            frames = [self.history(j).assign(mask_id=j) for j in self.ids]
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        path = self._extra_path(i, "history")
        try:
            return pd.read_csv(io.BytesIO(self._extra_bytes(i, "history")))
        except ValueError as e:
            raise StoreError(f"{path} is unreadable ({e})") from None

    # ---- masks -----------------------------------------------------------------------------------------
    def mask_path(self, i: int) -> Path:
        self.record(i)
        return self.path / "masks" / f"{F.stem(i)}.mask"

    def mask_words(self, i: int) -> np.ndarray:
        """Mask `i`'s packed words, read from its own file and checked against its checksum."""
        return F.read_mask(self.mask_path(i), self.n_words, self.record(i)["checksum"], mask_id=i)

    def mask_layers(self, i: int) -> list[np.ndarray]:
        """Mask `i` as one bool array per layer, in the layer's shape."""
        words = self.mask_words(i)
        return [unpack_words(words[r.word_start:r.word_stop], r.n_bits).reshape(r.shape)
                for r in self.layers.itertuples()]

    @property
    def masks(self) -> MaskSet:
        """All finished masks as one MaskSet (ids = mask ids), memory-mapped from `masks.bits`."""
        if self._masks is None:
            self._masks = MaskSet(self._bits(), self.layers.copy(), self.ids)
        return self._masks

    def _bits(self) -> np.ndarray:
        """The N x W words from masks.bits when it is current (checked against the mask files once, see
        integrity.check_contents), else rebuilt from the checked mask files and written atomically (kept in
        memory where the run cannot be written)."""
        n, w = len(self.records), self.n_words
        if n == 0:
            return np.zeros((0, w), dtype=np.uint64)
        path = self.path / "masks.bits"
        sums = [r["checksum"] for r in self.records.values()]
        if not self._contents_checked:  # opened with check="structure": every reader of the bits comes here
            I.check_contents(self.path, self.records, w)
            self._contents_checked = True
        bits = C.open_cache(path, self.ids, sums, w)
        if bits is not None:
            return bits
        words = np.empty((n, w), dtype=np.uint64)
        for row, (_, mask) in enumerate(I.checked_masks(self.path, self.records, w)):
            words[row] = mask
        try:
            C.write_cache(path, self.path, self.ids, sums, words)
        except WriteError:  # a read-only run or a full disk: keep the matrix in memory
            return words
        return np.memmap(path, dtype="<u8", mode="r", offset=C.words_offset(n), shape=(n, w))

    # ---- extras ---------------------------------------------------------------------------------------
    def _extra_path(self, i: int, kind: str) -> Path:
        record = self.record(i)
        rel = record.get("extras", {}).get(kind)
        if rel is None:
            hint = {"scores": "generate the run with --keep-scores",
                    "snapshots": "generate the run with --snapshot-every E"}.get(kind, "")
            raise StoreError(f"run {self.id} keeps no {kind} for mask {i}" + (f"; {hint}" if hint else ""))
        return F.inside(self.path, rel)

    def _extra_bytes(self, i: int, kind: str) -> bytes:
        """The bytes of mask `i`'s extra `kind`, checked against the size and checksum of its record."""
        path = self._extra_path(i, kind)
        rel = self.record(i)["extras"][kind]
        info = self.record(i).get("files", {}).get(rel)
        if info is None:  # check_record makes sure every extra has its checksum
            raise StoreError(f"record of mask {i} in run {self.id} has no checksum for {rel}")
        return F.read_checked(path, info["bytes"], info["blake2b"], f"an extra of mask {i}")

    def has_extra(self, i: int, kind: str) -> bool:
        return kind in self.record(i).get("extras", {})

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        out, start = [], 0
        for r in self.layers.itertuples():
            out.append(flat[start:start + r.n_bits].reshape(r.shape))
            start += r.n_bits
        return out

    def scores(self, i: int) -> list[np.ndarray]:
        """Mask `i`'s final scores per layer (float16; needs --keep-scores)."""
        return self._split(F.load_npy(self._extra_path(i, "scores"), self._extra_bytes(i, "scores")))

    def index_map(self, i: int, kind: str) -> list[np.ndarray] | None:
        """IWR's `src` map (kind "src") or IteRand's `draw` map ("draw") of mask `i`, one flat int64 array
        per layer; None when the run has no such map."""
        if not self.has_extra(i, kind):
            return None
        stored = F.load_npz(self._extra_path(i, kind), self._extra_bytes(i, kind))
        out = []
        for k, r in enumerate(self.layers.itertuples()):
            full = np.arange(r.n_bits, dtype=np.int64) if kind == "src" else np.zeros(r.n_bits, np.int64)
            pos, val = stored.get(f"pos_{k}"), stored.get(f"val_{k}")
            if pos is not None and len(pos):
                if pos.max() >= r.n_bits or (kind == "src" and val.max() >= r.n_bits):
                    raise StoreError(f"{self._extra_path(i, kind)} indexes past layer {r.layer}; it is corrupt")
                full[pos.astype(np.int64)] = val
            out.append(full)
        return out

    def dense_weights(self, i: int) -> list[np.ndarray]:
        """A dense run's trained weights per layer (float32)."""
        return self._split(F.load_npy(self._extra_path(i, "weights"), self._extra_bytes(i, "weights")))

    def snapshots(self, i: int) -> MaskSet:
        """Mask `i` every E epochs (--snapshot-every) as a MaskSet whose ids are the epochs (from 0)."""
        z = F.load_npz(self._extra_path(i, "snapshots"), self._extra_bytes(i, "snapshots"))
        return MaskSet(z["bits"].astype(np.uint64), self.layers.copy(), z["epochs"])

    # ---- subnetworks ------------------------------------------------------------------------------------
    def model(self, i: int, device: str = "cpu"):
        """Mask `i`'s subnetwork, rebuilt exactly: weights from the weight seed with the IWR / IteRand map
        applied (dense runs: the stored weights), and every masked layer's scores set to its stored mask,
        so that the layer's top-k selects exactly that mask. In eval mode."""
        from masklab.nn.layers import masked_layers
        from masklab.train.rebuild import rebuild_subnet

        record, cfg = self.record(i), self.config
        shape = SimpleNamespace(input_shape=tuple(self.meta["dataset"]["input_shape"]),
                                n_classes=int(self.meta["dataset"]["n_classes"]))
        masks = self.mask_layers(i)
        buffers = F.load_npz(self._extra_path(i, "buffers"), self._extra_bytes(i, "buffers")) \
            if self.has_extra(i, "buffers") else None
        model = rebuild_subnet(cfg, shape, int(record["weight_seed"]), int(record["score_seed"]), masks,
                               self.index_map(i, "src"), self.index_map(i, "draw"),
                               self.dense_weights(i) if cfg.method == "dense" else None, buffers)
        layers = masked_layers(model)
        if [name for name, _ in layers] != list(self.layers["layer"]):
            raise StoreError(f"run {self.id}: the model this masklab builds has layers "
                             f"{[n for n, _ in layers]}, the run has {list(self.layers['layer'])}; "
                             f"open it with the masklab version that made it ({self.meta['software']['masklab']})")
        for k, (name, layer) in enumerate(layers):
            if not np.array_equal(layer.mask().numpy(), masks[k]):
                raise StoreError(f"run {self.id}: mask {i} cannot be pinned in layer {name} (its kept count "
                                 f"differs from the layer's n_keep); the mask file is inconsistent")
        return model.to(device).eval()

    def dataset(self):
        """The run's dataset (loaded once)."""
        if self._dataset is None:
            from masklab.data import load_config_dataset

            self._dataset = load_config_dataset(self.config)
        return self._dataset

    def evaluate(self, i: int, data=None, device: str = "cpu") -> tuple[float, float]:
        """(test loss, test accuracy) of mask `i`'s rebuilt subnetwork on the test split of `data` (default:
        the run's dataset); equals the recorded final figures."""
        from masklab.train.evaluate import evaluate

        return evaluate(self.model(i, device), data if data is not None else self.dataset(), device)

    # ---- integrity and summaries --------------------------------------------------------------------------
    def verify(self, repair: bool = False) -> pd.DataFrame:
        """Check every file of the run in full (see `masklab.store.integrity.verify`): one row per file with
        its `status` (ok, stale, problem, repaired). `repair=True` moves masks with failing files into
        `quarantine/` (so `generate --resume` retrains them), restores an edited config.toml and rebuilds
        masks.bits; the registry is then re-read."""
        table = I.verify(self, repair=repair)
        if repair and not (table["status"] == "problem").any():
            self.__init__(self.path, check=self._check)
        return table

    def disk_bytes(self) -> pd.DataFrame:
        """Bytes on disk per mask: the mask file, its record, its extras and snapshots."""
        rows = []
        for i, record in self.records.items():
            sizes = {"mask": F.mask_file_size(self.n_words),
                     "record": (self.path / "masks" / f"{F.stem(i)}.json").stat().st_size}
            for kind, rel in record.get("extras", {}).items():
                sizes[kind] = F.inside(self.path, rel).stat().st_size
            rows.append({"mask_id": i, **sizes, "total": sum(sizes.values())})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, pd.DataFrame]:
        """What `masklab show` prints: `run` (id, path, hash, counts, accuracy, versions), `config` (every
        field with its default), `masks` (the registry) and `layers` (the layout)."""
        cfg, software = self.config, self.meta.get("software", {})
        acc = self.table["test_acc"] if len(self.table) else pd.Series(dtype=float)
        run = {"run_id": self.id, "path": str(self.path), "hash": self.hash[:16], "created": self.meta.get("created"),
               "masks": f"{len(self)} of {cfg.masks}", "bits_per_mask": int(self.layers["n_bits"].sum()),
               "bytes_per_mask_file": F.mask_file_size(self.n_words),
               "test_acc_mean": float(acc.mean()) if len(acc) else None,
               "test_acc_std": float(acc.std(ddof=0)) if len(acc) else None,
               "masklab": software.get("masklab"), "torch": software.get("torch"),
               "git_commit": self.meta.get("git", {}).get("commit")}
        defaults = RunConfig()
        config = pd.DataFrame([{"field": k, "value": v, "default": getattr(defaults, k),
                                "hashed": k in self.meta["hashed_fields"]} for k, v in cfg.to_dict().items()])
        layers = self.layers.assign(keep=self.layers["n_keep"] / self.layers["n_bits"],
                                    words=self.layers["word_stop"] - self.layers["word_start"])
        return {"run": pd.DataFrame([run]), "config": config, "masks": self.table, "layers": layers}


def _ranges(ids: list[int]) -> str:
    parts, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}..{i}")
            start = None
    return ", ".join(parts)


# ---- finding runs -------------------------------------------------------------------------------------------
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
    F.check_run_id(text)
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


def open_run(path_or_id: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Run:
    """Open a run directory by path or by run id (under `runs_dir`, default `runs`)."""
    return Run(resolve_run(path_or_id, runs_dir))


def list_runs(runs_dir: str | os.PathLike = "runs") -> pd.DataFrame:
    """Every run under `runs_dir`: run_id, dataset, model, method, sparsity, epochs, masks (finished),
    planned, test_acc (mean of the final accuracies), created, path. A damaged run shows its error."""
    columns = ["run_id", "dataset", "model", "width", "method", "sparsity", "epochs", "masks", "planned",
               "test_acc", "created", "path", "error"]
    runs = Path(runs_dir)
    rows = []
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        if path.name.startswith(".") or not (path / "run.json").is_file():
            continue
        try:
            run = Run(path, check="structure")  # listing: no hashing of every run
        except UserError as e:
            rows.append({"run_id": path.name, "path": str(path), "error": str(e)})
            continue
        cfg = run.config
        method = cfg.method if cfg.recycle == "none" else f"{cfg.method}+{cfg.recycle}"
        acc = [r.get("test_acc") for r in run.records.values()]
        rows.append({"run_id": run.id, "dataset": cfg.dataset, "model": cfg.model, "width": cfg.width,
                     "method": method, "sparsity": cfg.sparsity, "epochs": cfg.epochs, "masks": len(run),
                     "planned": cfg.masks, "test_acc": float(np.mean(acc)) if acc else None,
                     "created": run.meta.get("created"), "path": str(path), "error": None})
    return pd.DataFrame(rows, columns=columns)


# ---- the run, for writing -------------------------------------------------------------------------------
class RunWriter:
    """The one process writing a run: holds its lock, writes masks whole, registers them last."""

    def __init__(self, path: Path, config: RunConfig, lock: RunLock, done: set[int], created: bool):
        self.path, self.config, self.lock, self.done, self.created = path, config, lock, done, created
        self.meta = _read_json(path / "run.json")
        self.layers = layout_frame(self.meta["layers"])
        self.n_words = int(self.meta["n_words"])

    @classmethod
    def open(cls, runs_dir: str | os.PathLike, config: RunConfig, layers: pd.DataFrame, dataset_info: dict,
             resume: bool = False) -> RunWriter:
        """Create the run directory (atomically: a temporary directory renamed into place) or open an
        existing one with the same config hash; take the writer lock. Without `resume`, an existing
        incomplete run is refused (a complete one is opened with nothing left to do). With `resume`, a
        named run that does not exist yet is refused when runs of that name with other configs do (see
        `refuse_other_configs`). Links where the run is written are refused before anything is written."""
        runs = Path(runs_dir)
        path = runs / F.check_run_id(config.run_id)
        created, lock = False, None
        if not os.path.lexists(path):
            if resume:
                refuse_other_configs(runs, config)
            _make_runs_dir(runs)
            _remove_stale_tmp_dirs(runs, config.run_id)
            tmp = runs / f".tmp-{config.run_id}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                tmp.mkdir()  # (not mkdtemp: the run directory gets the usual permissions)
            except OSError as e:
                raise write_error(runs, e) from None
            try:
                _write_new_run(tmp, config, layers, dataset_info)
                lock = RunLock(tmp / "lock").acquire()  # the lock moves with the directory (same inode)
                os.rename(tmp, path)
                F.fsync_dir(runs)
                created = True
            except OSError as e:  # the rename: another process made the run first, or the system refused
                if lock is not None:
                    lock.release()
                if not path.exists():
                    raise write_error(path, e) from None
            except BaseException:
                if lock is not None:
                    lock.release()
                raise
            finally:
                if not created:
                    shutil.rmtree(tmp, ignore_errors=True)
        if not created:
            if not (path / "run.json").is_file():
                raise StoreError(f"{path} exists but is not a masklab run (no run.json); remove it or choose "
                                 "another --name or --runs-dir")
            refuse_links(path)
            lock = RunLock(path / "lock").acquire()
        try:
            done = _check_existing(path, config, layers) if not created else set()
            missing = [i for i in range(config.masks) if i not in done]
            if missing and done and not created and not resume:
                raise StoreError(f"run {path} already holds {len(done)} of {config.masks} masks; pass --resume "
                                 "to train the missing ones")
            if not created:
                F.remove_tmp_files(path)
                stored = read_config(path / "config.toml")
                if config.masks > stored.masks:  # extending a run: the only config change allowed
                    F.atomic_write_text(path / "config.toml", _config_toml(stored.replace(masks=config.masks)),
                                        root=path)
            return cls(path, config, lock, done, created)
        except BaseException:
            lock.release()
            raise

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.config.masks) if i not in self.done]

    def close(self) -> None:
        self.lock.release()

    def discard(self) -> None:
        """Remove the run directory this writer created, while it holds no mask (bad input that only
        training finds: the run must not be left behind half made). Moved aside first, so that a reader
        never sees a run without its files."""
        if not self.created or self.done:
            raise StoreError(f"refusing to discard run {self.path}: it was not created empty by this writer")
        gone = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}-discarded")
        os.rename(self.path, gone)
        self.close()
        shutil.rmtree(gone, ignore_errors=True)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_mask(self, trained, device: str = "cpu") -> dict:
        """Store one `TrainedMask`: extras first, then the mask file, then its record (the commit point).
        Each file is written atomically; returns the record."""
        i = int(trained.index)
        if i in self.done:
            raise StoreError(f"mask {i} of run {self.path} is already stored; a finished mask is never rewritten")
        names, shapes = list(self.layers["layer"]), [tuple(s) for s in self.layers["shape"]]
        if list(trained.layer_names) != names or [tuple(s) for s in trained.layer_shapes] != shapes:
            raise StoreError(f"mask {i} has layers {trained.layer_names} but run {self.path} has {names}")
        s = F.stem(i)
        files: dict[str, dict] = {}
        extras: dict[str, str] = {}

        def put(rel: str, data: bytes, kind: str | None = None) -> None:
            F.make_dirs((self.path / rel).parent, root=self.path)
            F.atomic_write(self.path / rel, data, sync_dir=False, root=self.path)
            files[rel] = {"bytes": len(data), "blake2b": F.checksum(data)}  # (only what was written)
            if kind is not None:
                extras[kind] = rel

        try:
            words_checksum, counts = self._write_files(i, trained, put, files)
        except BaseException:
            # mask i is not registered: remove what was written of it (a retry writes it again)
            for rel in files:
                (self.path / rel).unlink(missing_ok=True)
            raise
        metrics = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in trained.metrics.items()}
        record = {"mask_id": i, "weight_seed": int(trained.weight_seed), "score_seed": int(trained.score_seed),
                  "data_seed": int(trained.data_seed), **metrics, "device": str(device),
                  "checksum": words_checksum, "n_keep": counts,
                  "alphas": None if trained.alphas is None else [float(a) for a in trained.alphas],
                  "finished": _now(), "trained_with": dict(getattr(trained, "trained_with", {}) or {}),
                  "extras": extras, "files": files}
        F.atomic_write_json(self.path / "masks" / f"{s}.json", record, root=self.path)
        self.done.add(i)
        return record

    def _write_files(self, i: int, trained, put, files: dict) -> tuple[str, list[int]]:
        """write_mask's files before the record: extras, then the mask file. Returns the words' checksum and
        the kept count per layer."""
        s = F.stem(i)
        put(f"extras/{s}.history.csv", trained.history.to_csv(index=False).encode(), "history")
        if self.config.keep_scores and trained.scores is not None:
            flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in trained.scores])
            put(f"extras/{s}.scores.npy", F.npy_bytes(flat.astype(np.float16)), "scores")
        if trained.src is not None:
            put(f"extras/{s}.src.npz", F.npz_bytes(_sparse_map(trained.src, identity=True)), "src")
        if trained.draw is not None:
            put(f"extras/{s}.draw.npz", F.npz_bytes(_sparse_map(trained.draw, identity=False)), "draw")
        if trained.weights is not None:
            flat = np.concatenate([np.asarray(w, dtype=np.float32).reshape(-1) for w in trained.weights])
            put(f"extras/{s}.weights.npy", F.npy_bytes(flat), "weights")
        buffers = getattr(trained, "buffers", None)
        if buffers:
            put(f"extras/{s}.buffers.npz", F.npz_bytes({k: np.asarray(v) for k, v in buffers.items()}), "buffers")
        if trained.snapshots:
            epochs = np.asarray([e for e, _ in trained.snapshots], dtype=np.int64)
            bits = np.stack([pack_layers(m) for _, m in trained.snapshots]).astype("<u8")
            put(f"snapshots/{s}.npz", F.npz_bytes({"epochs": epochs, "bits": bits}), "snapshots")

        words = pack_layers(trained.masks)
        counts = [int(np.count_nonzero(m)) for m in trained.masks]
        if counts != [int(k) for k in self.layers["n_keep"]]:
            raise StoreError(f"mask {i} keeps {counts} weights per layer, the run's layout says "
                             f"{list(self.layers['n_keep'])}")
        data, words_checksum = F.mask_bytes(i, words)
        put(f"masks/{s}.mask", data)
        for sub in {Path(rel).parent for rel in files}:
            F.fsync_dir(self.path / sub)
        return words_checksum, counts


def _make_runs_dir(runs: Path) -> None:
    try:
        os.makedirs(runs, exist_ok=True)
    except OSError as e:
        raise write_error(runs, e) from None


# What a writer writes into, below the run directory: none of these may be a link.
WRITTEN = ("lock", "config.toml", "masks", "extras", "snapshots")


def refuse_links(path: Path) -> None:
    """Refuse to write run `path` when something it writes into is a symbolic link (named)."""
    for name in WRITTEN:
        F.check_no_links(path / name, path)


def refuse_other_configs(runs: Path, config: RunConfig) -> None:
    """`--resume` of a named run (`--name NAME`) that does not exist: refused when runs of that name with
    other configs (`NAME-<other hash>`) exist under `runs`, naming them and the fields in which their
    configs differ: the user meant to continue one of them, not to start a new run silently. Default
    names (dataset-model-method-sparsity) are shared by every run of that kind and `--resume` on them
    stays create-or-continue (what `make demo` and sweeps rely on)."""
    if config.name is None:
        return
    name = config.name
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{8}")
    others = []
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not pattern.fullmatch(path.name) or not (path / "run.json").is_file():
            continue
        try:
            stored = read_config(path / "config.toml").hashed_fields()
        except UserError:
            stored = {}
        diff = I.field_diff(stored, config.hashed_fields(), "there", "here")
        others.append(f"{path.name} ({'; '.join(diff) or 'another hash'})")
    if others:
        raise StoreError(f"--resume: there is no run {config.run_id} under {runs}, but {len(others)} run(s) named "
                         f"{name} with other configs: {', '.join(others[:5])}; continue one with `masklab generate "
                         "--resume RUN_DIR`, or drop --resume to start a new run with this config")


def _remove_stale_tmp_dirs(runs: Path, run_id: str) -> None:
    """Remove `.tmp-<run_id>-<pid>-*` directories left by creators that were killed (pid gone)."""
    for tmp in runs.glob(f".tmp-{run_id}-*"):
        pid = tmp.name[len(f".tmp-{run_id}-"):].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _sparse_map(maps: list[np.ndarray], identity: bool) -> dict[str, np.ndarray]:
    """Per layer k, the positions where the map differs from identity (src) or from 0 (draw) and the values."""
    out = {}
    for k, m in enumerate(maps):
        m = np.asarray(m).reshape(-1).astype(np.int64)
        base = np.arange(m.size, dtype=np.int64) if identity else np.zeros(m.size, np.int64)
        pos = np.flatnonzero(m != base)
        small = np.uint32 if m.size < 2**32 else np.int64
        out[f"pos_{k}"] = pos.astype(small)
        out[f"val_{k}"] = m[pos].astype(small if identity else np.int32)
    return out


def _config_toml(config: RunConfig) -> str:
    head = "# masklab run config: every field, defaults included. Usable as `masklab generate --config`.\n"
    return head + to_toml(config.to_dict())


def _write_new_run(path: Path, config: RunConfig, layers: pd.DataFrame, dataset_info: dict) -> None:
    meta = {"format": RUN_FORMAT, "run_id": config.run_id, "hash": config.hash,
            "hashed_fields": config.hashed_fields(), "created": _now(), "bit_order": BIT_ORDER,
            "n_bits": int(layers["n_bits"].sum()), "n_words": int(layers["word_stop"].iloc[-1]),
            "layers": layout_records(layers), "dataset": dataset_info,
            "mask_file": {"magic": F.MASK_MAGIC.decode(), "version": F.MASK_VERSION, "header_bytes": F.HEADER_SIZE,
                          "checksum": "blake2b-256 of the words"},
            "software": software_versions(), "git": git_commit(), "argv": sys.argv}
    for sub in ("masks", "extras", "snapshots"):
        F.make_dirs(path / sub, root=path)
    F.atomic_write_text(path / "config.toml", _config_toml(config), root=path)
    F.atomic_write_json(path / "run.json", meta, root=path)


def _check_existing(path: Path, config: RunConfig, layers: pd.DataFrame) -> set[int]:
    """Refuse a run directory made by another config or another layout; return its finished mask ids."""
    meta = _read_json(path / "run.json")
    if not isinstance(meta, dict) or meta.get("hash") != config.hash:
        stored = meta.get("hashed_fields", {}) if isinstance(meta, dict) else {}
        diff = I.field_diff(stored if isinstance(stored, dict) else {}, config.hashed_fields(), "there", "here")
        raise StoreError(f"run directory {path} was made by a different config ({'; '.join(diff) or 'hash differs'}); "
                         "use another --name or --runs-dir, or continue that run with its own config: "
                         f"`masklab generate --resume {path}`")
    if meta.get("layers") != layout_records(layers):
        raise StoreError(f"run directory {path} has a different layer layout than this config builds; "
                         "it was made by another masklab version")
    return set(Run(path).records)
