"""Writing a run: the one process that writes it holds its lock, writes every mask whole (extras, then the
mask file, then its record, the commit point) and never through a symbolic link. The directory layout is
in store/run.py; the file formats in store/files.py and store/cache.py."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.config import RunConfig, read_config
from masklab.errors import StoreError, UserError, write_error
from masklab.store import files as F
from masklab.store import schema as S
from masklab.store.bits import BIT_ORDER, pack_layers
from masklab.store.lock import RunLock
from masklab.store.meta import (
    RUN_FORMAT,
    config_toml,
    git_commit,
    layout_frame,
    layout_records,
    now,
    recorded_values,
    resolved_values,
    software_versions,
)
from masklab.store.paths import RECORD_RE, check_run_id, stem
from masklab.store.run import Run
from masklab.store.shards import shard_masks


class RunWriter:
    """A process writing a run (all of it, or one shard): holds its locks, writes masks whole, registers them
    last."""

    def __init__(self, path: Path, config: RunConfig, lock: RunLock, done: set[int], created: bool,
                 shard: tuple[int, int] | None = None, shard_lock: RunLock | None = None):
        self.path, self.config, self.lock, self.done, self.created = path, config, lock, done, created
        self.shard, self.shard_lock = shard, shard_lock
        self.meta = F.read_json(path / "run.json")
        self.layers = layout_frame(self.meta["layers"])
        self.n_words = int(self.meta["n_words"])

    @classmethod
    def open(cls, runs_dir: str | os.PathLike, config: RunConfig, layers: pd.DataFrame, dataset_info: dict,
             resume: bool = False, shard: tuple[int, int] | None = None, *,
             run_files: dict[str, bytes] | None = None, meta_extra: dict | None = None) -> RunWriter:
        """Create the run directory (atomically: a temporary directory renamed into place) or open an
        existing one with the same config hash; take the writer lock. Without `resume`, an existing
        incomplete run is refused (a complete one is opened with nothing left to do). With `resume`, a
        named run that does not exist yet is refused when runs of that name with other configs do (see
        `refuse_other_configs`). Links where the run is written are refused before anything is written.

        `shard=(I, N)`: write only shard I of N (the masks i with i % N == I; see masklab.store.shards):
        the run lock is taken shared and the shard's own lock exclusively, so that the N shards can write
        at once; "incomplete" and "missing" then mean this shard's masks.

        `run_files` (name -> bytes; names from schema.RUN_FILES) are written into a new run's directory
        before it is renamed into place, and listed with their sizes and checksums in run.json's `files`;
        `meta_extra` adds fields to a new run's run.json (an import's `imported` section). Both are for
        `masklab import`; an existing run is opened as it is (its config hash covers them)."""
        runs = Path(runs_dir)
        path = runs / check_run_id(config.run_id)
        created, lock = False, None
        if not os.path.lexists(path):
            if resume:
                refuse_other_configs(runs, config)
            _make_runs_dir(runs)
            _remove_stale_tmp_dirs(runs, config.run_id)
            tmp = runs / f".tmp-{config.run_id}-{os.getpid()}-{secrets.token_hex(4)}"
            W.make_dirs(tmp, root=runs)  # (not mkdtemp: the run directory gets the usual permissions)
            try:
                _write_new_run(tmp, config, layers, dataset_info, run_files, meta_extra)
                lock = RunLock(tmp / "lock", shared=shard is not None).acquire()  # moves with the directory
                os.rename(tmp, path)
                W.fsync_dir(runs)
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
            lock = RunLock(path / "lock", shared=shard is not None).acquire()
        shard_lock = None
        try:
            if shard is not None:
                W.make_dirs(path / "locks", root=path, in_run=True)
                shard_lock = RunLock(path / "locks" / f"shard-{shard[0]}-of-{shard[1]}",
                                     what=f"shard {shard[0]}/{shard[1]} of run {path}").acquire()
            done = _check_existing(path, config, layers) if not created else set()
            mine = list(range(config.masks)) if shard is None else shard_masks(config.masks, *shard)
            missing = [i for i in mine if i not in done]
            held = [i for i in mine if i in done]
            if missing and held and not created and not resume and \
                    config.masks > read_config(path / "config.toml").masks:
                # the same command again continues its run; more masks than the run plans extend it: asked for
                what = "" if shard is None else f" (shard {shard[0]}/{shard[1]}: {len(held)} of its {len(mine)})"
                raise StoreError(f"run {path} already holds {len(done)} of {config.masks} masks{what}; pass "
                                 "--resume to train the missing ones")
            if not created:
                W.remove_tmp_files(path)
                stored = read_config(path / "config.toml")
                if config.masks > stored.masks:  # extending a run: the only config change allowed
                    W.atomic_write_text(path / "config.toml", config_toml(stored.replace(masks=config.masks)),
                                        root=path, in_run=True)
            assert lock is not None
            return cls(path, config, lock, done, created, shard, shard_lock)
        except BaseException:
            if shard_lock is not None:
                shard_lock.release()
            if lock is not None:
                lock.release()
            raise

    @property
    def missing(self) -> list[int]:
        """This writer's masks (every mask, or those of its shard) not stored yet."""
        mine = range(self.config.masks) if self.shard is None else shard_masks(self.config.masks, *self.shard)
        return [i for i in mine if i not in self.done]

    def stored_elsewhere(self) -> set[int]:
        """Masks whose records other writers (other shards) have written since this one opened the run."""
        names = os.listdir(self.path / "masks")
        found = {int(m.group(1)) for m in map(RECORD_RE.fullmatch, names) if m}
        return found - self.done

    def stored_records(self, ids) -> list[dict]:
        """The records of the stored masks `ids`, as written."""
        return [F.read_json(self.path / "masks" / f"{stem(i)}.json") for i in sorted(ids)]

    def close(self) -> None:
        if self.shard_lock is not None:
            self.shard_lock.release()
        self.lock.release()

    def discard(self, *, with_masks: bool = False) -> None:
        """Remove the run directory this writer created, while it holds no mask (bad input that only
        training finds: the run must not be left behind half made). Moved aside first, so that a reader
        never sees a run without its files. `with_masks=True` also removes a run holding masks that this
        writer wrote (an import that failed half-way: it writes all of its masks or leaves no run)."""
        if not self.created or (self.done and not with_masks):
            raise StoreError(f"refusing to discard run {self.path}: it was not created empty by this writer")
        gone = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}-discarded")
        os.rename(self.path, gone)
        self.close()
        shutil.rmtree(gone, ignore_errors=True)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- checkpoints of masks in training --------------------------------------------------------------
    def write_checkpoint(self, i: int, arrays: dict[str, np.ndarray]) -> None:
        """Mask i's training state (arrays, see masklab.train.trainer.Checkpoint) as checkpoints/<id>.npz,
        replacing the previous one atomically (a crash leaves the old one or the new one, whole)."""
        W.make_dirs(self.path / "checkpoints", root=self.path, in_run=True)
        W.atomic_write(self.path / "checkpoints" / f"{stem(int(i))}.npz", W.npz_bytes(arrays), root=self.path,
                       in_run=True)

    def read_checkpoints(self) -> dict[int, dict[str, np.ndarray]]:
        """The checkpoints of this writer's missing masks, by mask id; an unreadable one (a file damaged
        outside masklab) is removed: that mask trains from its start."""
        folder = self.path / "checkpoints"
        out: dict[int, dict[str, np.ndarray]] = {}
        for i in self.missing:
            path = folder / f"{stem(i)}.npz"
            if not path.is_file():
                continue
            try:
                out[i] = F.load_npz(path, F.read_regular(path, "checkpoint", "it is removed"))
            except (StoreError, FileNotFoundError):
                path.unlink(missing_ok=True)
        return out

    def drop_checkpoint(self, i: int) -> None:
        """Remove mask i's checkpoint (once the mask is stored)."""
        folder = self.path / "checkpoints"
        (folder / f"{stem(int(i))}.npz").unlink(missing_ok=True)
        if self.shard is None:  # (shards write beside each other: one would remove the folder another writes into)
            try:
                folder.rmdir()  # the last one: no empty folder left in a finished run
            except OSError:
                pass

    def write_mask(self, trained, device: str = "cpu") -> dict:
        """Store one `TrainedMask`: extras first, then the mask file, then its record (the commit point).
        Each file is written atomically; returns the record."""
        i = int(trained.index)
        if i in self.done:
            raise StoreError(f"mask {i} of run {self.path} is already stored; a finished mask is never rewritten")
        record_path = self.path / "masks" / f"{stem(i)}.json"
        if record_path.exists():  # another process (an overlapping shard) stored it meanwhile: same bits
            self.done.add(i)
            return F.read_json(record_path)
        names, shapes = list(self.layers["layer"]), [tuple(s) for s in self.layers["shape"]]
        if list(trained.layer_names) != names or [tuple(s) for s in trained.layer_shapes] != shapes:
            raise StoreError(f"mask {i} has layers {trained.layer_names} but run {self.path} has {names}")
        s = stem(i)
        files: dict[str, dict] = {}
        extras: dict[str, str] = {}

        def put(rel: str, data: bytes, kind: str | None = None) -> None:
            W.make_dirs((self.path / rel).parent, root=self.path, in_run=True)
            W.atomic_write(self.path / rel, data, sync_dir=False, root=self.path, in_run=True)
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
                  "finished": now(), "trained_with": dict(getattr(trained, "trained_with", {}) or {}),
                  "extras": extras, "files": files}
        record = F.sealed(record)
        W.atomic_write_json(self.path / "masks" / f"{s}.json", record, root=self.path, in_run=True)
        self.done.add(i)
        self.drop_checkpoint(i)
        return record

    def _write_files(self, i: int, trained, put, files: dict) -> tuple[str, list[int]]:
        """write_mask's files before the record: extras, then the mask file. Returns the words' checksum and
        the kept count per layer."""
        s = stem(i)
        put(f"extras/{s}.history.csv", trained.history.to_csv(index=False).encode(), "history")
        if self.config.keep_scores and trained.scores is not None:
            flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in trained.scores])
            put(f"extras/{s}.scores.npy", W.npy_bytes(flat.astype(np.float16)), "scores")
        if trained.src is not None:
            put(f"extras/{s}.src.npz", W.npz_bytes(_sparse_map(trained.src, identity=True)), "src")
        if trained.draw is not None:
            put(f"extras/{s}.draw.npz", W.npz_bytes(_sparse_map(trained.draw, identity=False)), "draw")
        if trained.weights is not None:
            flat = np.concatenate([np.asarray(w, dtype=np.float32).reshape(-1) for w in trained.weights])
            put(f"extras/{s}.weights.npy", W.npy_bytes(flat), "weights")
        predictions = getattr(trained, "predictions", None)
        if predictions is not None:
            classes = int(self.meta.get("dataset", {}).get("n_classes") or 0)
            put(f"extras/{s}.predictions.npy", W.npy_bytes(prediction_array(predictions, classes)), "predictions")
        buffers = getattr(trained, "buffers", None)
        if buffers:
            put(f"extras/{s}.buffers.npz", W.npz_bytes({k: np.asarray(v) for k, v in buffers.items()}), "buffers")
        if trained.snapshots:
            epochs = np.asarray([e for e, _ in trained.snapshots], dtype=np.int64)
            bits = np.stack([pack_layers(m) for _, m in trained.snapshots]).astype("<u8")
            put(f"snapshots/{s}.npz", W.npz_bytes({"epochs": epochs, "bits": bits}), "snapshots")

        words = pack_layers(trained.masks)
        counts = [int(np.count_nonzero(m)) for m in trained.masks]
        if counts != [int(k) for k in self.layers["n_keep"]]:
            raise StoreError(f"mask {i} keeps {counts} weights per layer, the run's layout says "
                             f"{list(self.layers['n_keep'])}")
        data, words_checksum = F.mask_bytes(i, words)
        put(f"masks/{s}.mask", data)
        for sub in {Path(rel).parent for rel in files}:
            W.fsync_dir(self.path / sub)
        return words_checksum, counts


def prediction_array(predictions, n_classes: int) -> np.ndarray:
    """A mask's predicted classes as stored: int8 when every class index of the dataset fits (up to 128
    classes), else int16 (a run holds one dtype whatever a mask predicts)."""
    values = np.asarray(predictions).reshape(-1)
    top = max(int(n_classes), int(values.max(initial=0)) + 1)
    if values.size and (values.min() < 0 or top > np.iinfo(np.int16).max + 1):
        raise StoreError(f"predicted classes must lie in [0, {np.iinfo(np.int16).max}], got "
                         f"[{values.min()}, {values.max()}]")
    return values.astype(np.int8 if top <= 128 else np.int16)


def _make_runs_dir(runs: Path) -> None:
    W.make_dirs(runs, root=runs)  # (never inside another run)


# What a writer writes into, below the run directory: none of these may be a link.
WRITTEN = ("lock", "locks", "config.toml", "masks", "extras", "snapshots", "checkpoints")


def refuse_links(path: Path) -> None:
    """Refuse to write run `path` when something it writes into is a symbolic link (named)."""
    for name in WRITTEN:
        W.check_no_links(path / name, path)


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
        diff = S.field_diff(stored, config.hashed_fields(), "there", "here")
        others.append(f"{path.name} ({'; '.join(diff) or 'another hash'})")
    if others:
        raise StoreError(f"--resume: there is no run {config.run_id} under {runs}, but {len(others)} run(s) named "
                         f"{name} with other configs: {', '.join(others[:5])}; continue one with `masklab generate "
                         "--resume RUN_DIR`, or drop --resume to start a new run with this config")


def _remove_stale_tmp_dirs(runs: Path, run_id: str) -> None:
    """Remove `.tmp-<run_id>-<pid>-*` directories left by creators that were killed (pid gone)."""
    for tmp in runs.glob(f".tmp-{run_id}-*"):
        pid = tmp.name[len(f".tmp-{run_id}-"):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not W.pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


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


def _write_new_run(path: Path, config: RunConfig, layers: pd.DataFrame, dataset_info: dict,
                   run_files: dict[str, bytes] | None = None, meta_extra: dict | None = None) -> None:
    files = {}
    for rel, data in (run_files or {}).items():
        if rel not in S.RUN_FILES:
            raise StoreError(f"refusing run file {rel!r}: a run holds only {', '.join(S.RUN_FILES)} at its top level")
        W.atomic_write(path / rel, data, root=path, in_run=True)
        files[rel] = {"bytes": len(data), "blake2b": F.checksum(data)}
    meta = {"format": RUN_FORMAT, "run_id": config.run_id, "hash": config.hash,
            "hashed_fields": config.hashed_fields(), "resolved": resolved_values(config),
            "settings": recorded_values(config), "created": now(),
            "bit_order": BIT_ORDER,
            "n_bits": int(layers["n_bits"].sum()), "n_words": int(layers["word_stop"].iloc[-1]),
            "layers": layout_records(layers), "dataset": dataset_info,
            "mask_file": {"magic": F.MASK_MAGIC.decode(), "version": F.MASK_VERSION, "header_bytes": F.HEADER_SIZE,
                          "checksum": "blake2b-256 of the words"},
            "software": software_versions(), "git": git_commit(), "argv": sys.argv}
    if files:
        meta["files"] = files
    for key, value in (meta_extra or {}).items():
        if key in meta:
            raise StoreError(f"refusing to replace run.json's field {key!r}")
        meta[key] = value
    for sub in ("masks", "extras", "snapshots"):
        W.make_dirs(path / sub, root=path, in_run=True)
    W.atomic_write_text(path / "config.toml", config_toml(config), root=path, in_run=True)
    W.atomic_write_json(path / "run.json", F.sealed(meta), root=path, in_run=True)


def _check_existing(path: Path, config: RunConfig, layers: pd.DataFrame) -> set[int]:
    """Refuse a run directory made by another config or another layout; return its finished mask ids."""
    meta = F.read_json(path / "run.json")
    if not isinstance(meta, dict) or meta.get("hash") != config.hash:
        stored = meta.get("hashed_fields", {}) if isinstance(meta, dict) else {}
        diff = S.field_diff(stored if isinstance(stored, dict) else {}, config.hashed_fields(), "there", "here")
        raise StoreError(f"run directory {path} was made by a different config ({'; '.join(diff) or 'hash differs'}); "
                         "use another --name or --runs-dir, or continue that run with its own config: "
                         f"`masklab generate --resume {path}`")
    if meta.get("layers") != layout_records(layers):
        raise StoreError(f"run directory {path} has a different layer layout than this config builds; "
                         "it was made by another masklab version")
    return set(Run(path).records)
