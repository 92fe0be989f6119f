"""Reading a run directory: many masks over the same random weights, their registry, extras and packed bits.
(Writing: store/writer.py; run.json's contents: store/meta.py; file formats: store/files.py, store/cache.py.)

Layout of `runs/<run_id>/` (all names are fixed; nothing in it is ever unpickled):

    config.toml             the RunConfig as set (every other field at its default; the method-decided
                            fields as comments); a valid `--config` file. Its canonical hash must be
                            run.json's (checked on every open: an edited hashed field is refused; `masks`
                            is not hashed and is raised to extend a run)
    run.json                run id, config hash and hashed fields, `resolved` (the values the method gave
                            lr, weight_init, scale_fan, recycle_rate, recycle_every), layer layout, bit order,
                            dataset shape, software versions, git commit, mask-file format
    lock                    flock'ed by the one process writing the run (holds its pid); a plain file,
                            never a link
    masks/000003.mask       mask 3: 64-byte header + packed words (see store/files.py)
    masks/000003.json       mask 3's registry record: seeds, metrics, seconds, checksums of its files
                            (fields and types: schema.RECORD_FIELDS). Written last: a mask exists
                            once its record does.
    extras/000003.history.csv         per-epoch metrics
    extras/000003.scores.npy          final scores, float16, all layers concatenated (--keep-scores)
    extras/000003.src.npz             IWR: per layer k, `pos_k` / `val_k` where src[pos] = val != pos
    extras/000003.draw.npz            IteRand: per layer k, `pos_k` / `val_k` where draw[pos] = val != 0
    extras/000003.weights.npy         dense runs, and imports whose files hold different weights
                                      (--allow-different-weights): the weights, float32, all layers concatenated
    extras/000003.buffers.npz         models with BatchNorm: the buffers (running statistics)
    extras/000003.predictions.npy     the mask's predicted class for every test sample, in test-split order
                                      (int8; int16 past 128 classes), from the pass that measured its final
                                      test accuracy
    snapshots/000003.npz              `epochs` (S,) and packed `bits` (S x W) every E epochs
    checkpoints/000003.npz  mask 3 while it trains: its whole training state at the end of its last
                            finished epoch (masklab.train.trainer.Checkpoint), replaced atomically each
                            epoch and removed once the mask is stored; `generate` continues from it with
                            the bits of an uninterrupted run. Never read by the analyses.
    weights.npy             imported runs whose masks share their weights: those weights, float32, all layers
                            concatenated (run.json's `files` gives its size and checksum; `imported` says what
                            was imported: formats, sources' sha256s, keep rule, layer mapping; see
                            masklab/interop and docs/interop.md)
    masks.bits              cache: all masks as one N x W matrix, memory-mapped (format: store/cache.py:
                            a 64-byte header with a key = digest of every mask's id and checksum, the
                            ids, one BLAKE2b-256 per row, then the words); rebuilt atomically whenever
                            the registry changed. Safe to delete.
    analysis/               `masklab analyze`'s tables (Parquet and CSV)
    quarantine/000003-1/    mask 3's files moved aside by `masklab verify --repair` (their relative paths
                            kept: masks/000003.json, masks/000003.mask, extras/...); `generate --resume`
                            trains mask 3 again. Never read by masklab.

Every open (`Run(path)`) checks the metadata, the records and the words of every mask file and of
masks.bits (store/schema.py, store/contents.py); `Run.verify()` / `masklab verify RUN [--repair]` checks everything in
full. Every write goes through masklab/files.py: whole or not at all, and never through a symbolic link
(a link where masklab writes is refused, naming it, before anything is written).
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from masklab.config import RunConfig, method_label, read_config
from masklab.errors import StoreError, UserError
from masklab.store import cache as C
from masklab.store import contents as CT
from masklab.store import files as F
from masklab.store import integrity as I
from masklab.store import schema as S
from masklab.store.bits import MaskSet, unpack_words
from masklab.store.meta import layout_frame
from masklab.store.paths import RECORD_RE, check_mask_id, inside, resolve_run, stem
from masklab.store.settings import _source, settings_table
from masklab.units import percent, ranges, setting_text

if TYPE_CHECKING:
    from masklab.train.evaluate import Evaluation

# Registry columns shown first, in this order; other scalar fields of a record follow.
TABLE_COLUMNS = ["mask_id", "weight_seed", "score_seed", "data_seed", "test_acc", "best_test_acc", "best_epoch",
                 "test_loss", "train_acc", "train_loss", "epochs", "recycled", "seconds", "device", "checksum"]


# ---- the run, for reading -----------------------------------------------------------------------------------
class Run:
    """A run directory opened for reading. See the module docstring for what it holds.

    `table` is the registry (one row per finished mask), `masks` the MaskSet of all of them (memory-mapped),
    `model(i)` rebuilds mask i's subnetwork exactly and `evaluate(i)` measures it.
    """

    def __init__(self, path: str | os.PathLike, *, check: str = "contents"):
        """Open the run directory `path`, checking it (see store/schema.py and store/contents.py): its metadata,
        config and records always; with `check="contents"` (the default) also the words of every mask file and of
        masks.bits against the records' checksums. `check="structure"` leaves the words until `masks` is
        first read (they are checked then). Any problem is a StoreError naming the file."""
        if check not in ("contents", "structure"):
            raise ValueError(f"check must be 'contents' or 'structure', not {check!r}")
        self.path = Path(path)
        if not (self.path / "run.json").is_file():
            raise StoreError(f"{self.path} is not a masklab run directory (no run.json); "
                             "`masklab runs` lists the runs")
        # what was read, as it was before reading it (`unchanged`)
        self._stamps = {name: F.stamp(self.path / name) for name in ("run.json", "config.toml")}
        self.meta: dict = F.read_json(self.path / "run.json")
        S.check_meta(self.path, self.meta)
        try:
            self.config: RunConfig = read_config(self.path / "config.toml")
        except UserError as e:
            raise StoreError(f"run {self.path}: {e}; `masklab verify {self.path} --repair` restores it from "
                             "run.json") from None
        S.check_config(self.path, self.config, self.meta)
        # what the run used: the method's defaults resolved (config.toml holds what the user set, the hash too)
        self.config = S.resolved_config(self.path, self.config, self.meta)
        self.id: str = self.meta["run_id"]
        self.hash: str = self.meta["hash"]
        self.layers: pd.DataFrame = layout_frame(self.meta["layers"], self.path / "run.json")
        S.check_layout(self.path, self.layers, self.config, self.meta)
        S.check_run_files(self.path, self.meta)
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
        self._stamps["masks"] = F.stamp(mask_dir)  # a record written, renamed or removed changes it
        names = sorted(os.listdir(mask_dir)) if mask_dir.is_dir() else []
        for name in names:
            m = RECORD_RE.fullmatch(name)
            if not m:
                continue
            record = S.check_record(mask_dir / name, F.read_json(mask_dir / name), int(m.group(1)), self.layers,
                                    sealed=S.is_sealed(self.meta))
            mask_file = mask_dir / f"{m.group(1)}.mask"
            try:
                st = os.stat(mask_file)
                F.check_regular(mask_file, st.st_mode, "mask file", F.lazy_repair_hint(mask_file))
                size: int | None = st.st_size
            except FileNotFoundError:
                size = None
            if size != F.mask_file_size(self.n_words):
                what = "missing" if size is None else f"truncated or corrupt ({size} bytes, expected " \
                    f"{F.mask_file_size(self.n_words)})"
                raise StoreError(f"mask file {mask_file} is {what}; {F.repair_hint(mask_file)}")
            if self.imported is not None and self.imported["weights"] == "per-mask" and \
                    "weights" not in record.get("extras", {}):
                raise StoreError(f"record {mask_dir / name} of an import with per-mask weights names no weights "
                                 "extra; the run is damaged: import the masks again")
            records[record["mask_id"]] = record
        self.records: dict[int, dict] = dict(sorted(records.items()))
        self._table = None
        self._masks = None
        self._contents_checked = False  # the words of the mask files and masks.bits, since the last refresh
        if self._check == "contents":
            CT.check_contents(self.path, self.records, self.n_words)
            self._contents_checked = True
        return self

    def unchanged(self) -> bool:
        """Whether run.json, config.toml and the masks folder are as they were when this object read them
        (modification time and size): no record was added, replaced or removed since."""
        return all(F.stamp(self.path / name) == printed for name, printed in self._stamps.items())

    @property
    def ids(self) -> list[int]:
        return list(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {len(self)} of {self.config.masks} masks, path={str(self.path)!r})"

    def _repr_html_(self) -> str:
        """A notebook's view: the id, masks finished, the mean final test accuracy and the settings table
        (`settings`), not the registry (`table`) nor the masks."""
        acc = self.table["test_acc"].dropna() if len(self.table) else pd.Series(dtype=float)
        accuracy = f", mean final test accuracy {percent(float(acc.mean()))}" if len(acc) else ""
        settings = self.settings()
        rows = "".join(f"<tr><th style=\"text-align:left\">{html.escape(str(s))}</th>"
                       f"<td>{html.escape(setting_text(s, v))}</td></tr>"
                       for s, v in zip(settings["setting"], settings["value"]))
        return (f"<div><b>Run</b> {html.escape(self.id)}: {len(self):,} of {self.config.masks:,} masks"
                f"{'' if self.complete else ' (unfinished)'}{accuracy}<br><code>{html.escape(str(self.path))}</code>"
                f"<table>{rows}</table></div>")

    @property
    def complete(self) -> bool:
        return all(i in self.records for i in range(self.config.masks))

    def record(self, i: int) -> dict:
        """The registry record of mask `i` (a dict)."""
        key = check_mask_id(i)
        if key not in self.records:
            have = f"its mask ids are {ranges(self.ids, dash='..')}" if self.records else "it has no finished masks"
            raise StoreError(f"run {self.id} has no mask {i}; {have}")
        return self.records[key]

    @property
    def table(self) -> pd.DataFrame:
        """One row per finished mask: mask_id, seeds, test_acc (final), best_test_acc, losses, seconds,
        checksum, ... ."""
        if self._table is None:
            rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict)) and k != F.JSON_CHECKSUM}
                    for r in self.records.values()]
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
        return self.path / "masks" / f"{stem(i)}.mask"

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
        contents.check_contents), else rebuilt from the checked mask files and written atomically (kept in
        memory where the run cannot be written)."""
        n, w = len(self.records), self.n_words
        if n == 0:
            return np.zeros((0, w), dtype=np.uint64)
        path = self.path / "masks.bits"
        sums = [r["checksum"] for r in self.records.values()]
        bits = C.open_cache(path, self.ids, sums, w)
        if bits is not None:
            if not self._contents_checked:  # opened with check="structure": every reader of the bits comes here
                CT.check_contents(self.path, self.records, w)
                self._contents_checked = True
            return bits
        words = CT.build_cache(self.path, self.records, w)  # each mask file checked once
        self._contents_checked = True
        return words

    # ---- extras ---------------------------------------------------------------------------------------
    def _extra_path(self, i: int, kind: str) -> Path:
        record = self.record(i)
        rel = record.get("extras", {}).get(kind)
        if rel is None:
            hint = {"scores": "generate the run with --keep-scores",
                    "snapshots": "generate the run with --snapshot-every E"}.get(kind, "")
            raise StoreError(f"run {self.id} keeps no {kind} for mask {i}" + (f"; {hint}" if hint else ""))
        return inside(self.path, rel)

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
            if pos is not None and val is not None and len(pos):
                if pos.max() >= r.n_bits or (kind == "src" and val.max() >= r.n_bits):
                    raise StoreError(f"{self._extra_path(i, kind)} indexes past layer {r.layer}; it is corrupt")
                full[pos.astype(np.int64)] = val
            out.append(full)
        return out

    def dense_weights(self, i: int) -> list[np.ndarray]:
        """A dense run's trained weights per layer (float32)."""
        return self._split(F.load_npy(self._extra_path(i, "weights"), self._extra_bytes(i, "weights")))

    # ---- imported runs (masklab import; see masklab/interop) ------------------------------------------------
    @property
    def imported(self) -> dict | None:
        """run.json's import section (formats, sources and their sha256s, keep rule, layer mapping) for a run
        made by `masklab import`; None for a trained run."""
        section = self.meta.get("imported")
        return section if isinstance(section, dict) else None

    @property
    def has_architecture(self) -> bool:
        """False only for a run imported without --model and --dataset: masks and weights, no network to
        rebuild and no dataset."""
        return self.imported is None or self.meta["dataset"].get("name") is not None

    def run_file_bytes(self, rel: str) -> bytes:
        """The bytes of a run-level file (run.json's `files`: an import's shared weights), checked."""
        info = self.meta.get("files", {}).get(rel)
        if info is None:
            raise StoreError(f"run {self.id} has no file {rel}")
        return CT.read_run_file(self.path, rel, info)

    def weights(self, i: int) -> list[np.ndarray] | None:
        """The stored weights mask `i` computes with, per layer (float32): its own (dense runs, imports of
        files with different weights) or the run's shared ones (imports); None where the weights come from
        the weight seed (trained runs)."""
        if self.has_extra(i, "weights"):
            return self.dense_weights(i)
        if "weights.npy" in self.meta.get("files", {}):
            flat = F.load_npy(self.path / "weights.npy", self.run_file_bytes("weights.npy"))
            if flat.shape != (int(self.layers["n_bits"].sum()),):
                raise StoreError(f"{self.path / 'weights.npy'} holds {flat.shape} values, the run's layers "
                                 f"{int(self.layers['n_bits'].sum())}; it is corrupt")
            return self._split(flat)
        return None

    @property
    def per_mask_weights(self) -> bool:
        """Whether each mask has weights of its own (recycling, dense, imports of files with different weights)."""
        return self.config.recycle != "none" or self.config.method == "dense" or \
            (self.imported is not None and self.imported["weights"] == "per-mask")

    def buffers(self, i: int) -> dict[str, np.ndarray] | None:
        """Mask `i`'s BatchNorm buffers (running statistics) by name; None for models without BatchNorm."""
        if not self.has_extra(i, "buffers"):
            return None
        return F.load_npz(self._extra_path(i, "buffers"), self._extra_bytes(i, "buffers"))

    def predictions(self, i: int) -> np.ndarray:
        """Mask `i`'s predicted class for every test sample, in test-split order (int8, or int16 past 128
        classes), stored when it was trained. Runs made before masklab stored them, and imports, have none:
        `masklab.analysis.functional.test_predictions` computes (and caches) them for any run."""
        values = F.load_npy(self._extra_path(i, "predictions"), self._extra_bytes(i, "predictions"))
        n_test = self.meta.get("dataset", {}).get("n_test")
        if values.ndim != 1 or values.dtype.kind != "i" or (n_test is not None and len(values) != int(n_test)):
            raise StoreError(f"{self._extra_path(i, 'predictions')} holds {values.dtype} {values.shape}, not one "
                             f"class index per test sample ({n_test}); it is corrupt")
        return values

    def snapshots(self, i: int) -> MaskSet:
        """Mask `i` every E epochs (--snapshot-every) as a MaskSet whose ids are the epochs (from 0)."""
        z = F.load_npz(self._extra_path(i, "snapshots"), self._extra_bytes(i, "snapshots"))
        return MaskSet(z["bits"].astype(np.uint64), self.layers.copy(), z["epochs"])

    # ---- subnetworks (built by masklab.train.rebuild: the store only reads) ---------------------------------
    # The training code and the datasets are imported by the methods that need them: they bring torch (1.7 s
    # of import, median of 5), which reading a run (`masklab runs`, `show`, `verify`, the analyses) never needs.
    def model(self, i: int, device: str = "cpu"):
        """Mask `i`'s subnetwork, rebuilt exactly (`masklab.train.rebuild.run_model`). In eval mode."""
        from masklab.train.rebuild import run_model

        S.check_architecture(self.path, self.layers, self.config, self.meta)
        return run_model(self, i, device)

    def dataset(self):
        """The run's dataset (loaded once)."""
        if self._dataset is None:
            from masklab.data import load_config_dataset

            if not self.has_architecture:
                raise StoreError(f"run {self.id} was imported without --model and --dataset: it holds masks and "
                                 "weights but no dataset; import the files again with --model M --dataset D")

            self._dataset = load_config_dataset(self.config)
        return self._dataset

    def evaluate(self, i: int, data=None, device: str = "cpu") -> Evaluation:
        """`Evaluation(loss, acc)`, a named tuple: the test loss (nats) and accuracy (fraction) of mask `i`'s
        rebuilt subnetwork on the test split of `data` (default: the run's dataset); equals the recorded final
        figures (`masklab.train.rebuild.evaluate_mask`)."""
        from masklab.train.rebuild import evaluate_mask

        S.check_architecture(self.path, self.layers, self.config, self.meta)
        return evaluate_mask(self, i, data, device)

    # ---- integrity and summaries --------------------------------------------------------------------------
    def verify(self, repair: bool = False) -> pd.DataFrame:
        """Check every file of the run in full (see `masklab.store.integrity.verify`): one row per file with
        its `status` (ok, stale, problem, repaired). `repair=True` moves masks with failing files into
        `quarantine/` (so `generate --resume` retrains them), restores an edited config.toml and rebuilds
        masks.bits; the registry is then re-read."""
        table = I.verify(self, repair=repair)
        if repair and not (table["status"] == "problem").any():
            fresh = Run(self.path, check=self._check)
            self.__dict__.update(fresh.__dict__)
        return table

    def disk_bytes(self) -> pd.DataFrame:
        """Bytes on disk per mask: the mask file, its record, its extras and snapshots."""
        rows = []
        for i, record in self.records.items():
            record_file = self.path / "masks" / f"{stem(i)}.json"
            sizes = {"mask": F.mask_file_size(self.n_words),
                     "record": F.file_size(record_file, "record", F.lazy_repair_hint(record_file))}
            for kind, rel in record.get("extras", {}).items():
                path = inside(self.path, rel)
                sizes[kind] = F.file_size(path, f"extra ({kind}) of mask {i}", F.lazy_repair_hint(path))
            rows.append({"mask_id": i, **sizes, "total": sum(sizes.values())})
        return pd.DataFrame(rows)

    def bytes_per_mask(self) -> dict[str, float]:
        """Bytes on disk per mask, the one definition that `generate`, `show` and the README use:

        - ``"mask file"``: the mask's packed bits with their 64-byte header (the same for every mask of a run);
        - ``"mask with its extras"``: the mask file, its record (JSON) and its extras (history, scores, weight
          maps, snapshots), the mean over the finished masks (NaN while there are none).

        The run's shared files (config, run.json, masks.bits) are not counted."""
        sizes = self.disk_bytes()
        return {"mask file": float(F.mask_file_size(self.n_words)),
                "mask with its extras": float(sizes["total"].mean()) if len(sizes) else float("nan")}

    def settings(self) -> pd.DataFrame:
        """The settings the run's masks were made with, as a person reads them (`show`, the index page, the
        notebook): one row per `setting` (dataset, model, method, sparsity, epochs, lr, batch size, ..., the
        seeds) with its `value` (the value used: method defaults resolved; sparsity a fraction) and `source`:
        "set" (the config sets it away from its default: part of the hash), "method" (the method's default)
        or "default". See `settings_table`."""
        return settings_table(self.config, self.meta["hashed_fields"], imported=self.imported)

    def summary(self) -> dict[str, pd.DataFrame]:
        """What `masklab show` prints: `run` (id, path, hash, counts, accuracy, versions), `settings` (see
        `settings`), `config` (every field: `value` the value used, its `default`, `source` as in `settings`,
        `hashed`), `masks` (the registry) and `layers` (the layout)."""
        cfg, software = self.config, self.meta.get("software", {})
        acc = self.table["test_acc"] if len(self.table) else pd.Series(dtype=float)
        run = {"run_id": self.id, "path": str(self.path), "hash": self.hash[:16], "created": self.meta.get("created"),
               "masks": f"{len(self)} of {cfg.masks}", "bits_per_mask": int(self.layers["n_bits"].sum()),
               **{f"bytes per {k}": v for k, v in self.bytes_per_mask().items()},
               "test_acc_mean": float(acc.mean()) if len(acc) else None,
               "test_acc_std": float(acc.std(ddof=0)) if len(acc) else None,
               "masklab": software.get("masklab"), "torch": software.get("torch"),
               "git_commit": self.meta.get("git", {}).get("commit")}
        defaults, hashed = RunConfig(), self.meta["hashed_fields"]
        config = pd.DataFrame([{"field": k, "value": v, "default": getattr(defaults, k),
                                "source": _source(k, hashed, v, getattr(defaults, k)), "hashed": k in hashed}
                               for k, v in cfg.to_dict().items()])
        layers = self.layers.assign(keep=self.layers["n_keep"] / self.layers["n_bits"],
                                    words=self.layers["word_stop"] - self.layers["word_start"])
        return {"run": pd.DataFrame([run]), "settings": self.settings(), "config": config, "masks": self.table,
                "layers": layers}


# ---- finding runs -------------------------------------------------------------------------------------------
def open_run(path_or_id: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Run:
    """Open a run directory by path or by run id (under `runs_dir`, default `runs`)."""
    return Run(resolve_run(path_or_id, runs_dir))


def list_runs(runs_dir: str | os.PathLike = "runs") -> pd.DataFrame:
    """Every run under `runs_dir`: run_id, dataset, model, method, sparsity, epochs (for imported masks the
    epochs their checkpoints say they were trained for, when all say the same, else missing: an integer column
    with pandas' NA), lr, weight_init (the values used: method defaults resolved; missing for imported runs),
    weight_seed, masks (finished), planned, test_acc (mean of the final accuracies), created, path. A damaged
    run shows its error."""
    columns = ["run_id", "dataset", "model", "width", "method", "sparsity", "epochs", "lr", "weight_init",
               "weight_seed", "masks", "planned", "test_acc", "created", "path", "error"]
    runs = Path(runs_dir)
    rows: list[dict[str, Any]] = []
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        if path.name.startswith(".") or not (path / "run.json").is_file():
            continue
        try:
            run = Run(path, check="structure")  # listing: no hashing of every run
        except UserError as e:
            rows.append({"run_id": path.name, "path": str(path), "error": str(e)})
            continue
        cfg = run.config
        method = method_label(cfg.method, cfg.recycle)
        acc = [r["test_acc"] for r in run.records.values() if r.get("test_acc") is not None]
        rows.append({"run_id": run.id, "dataset": cfg.dataset, "model": cfg.model, "width": cfg.width,
                     "method": method, "sparsity": cfg.sparsity,
                     "epochs": _imported_epochs(run) if run.imported is not None else cfg.epochs,
                     "lr": cfg.lr, "weight_init": cfg.weight_init,
                     "weight_seed": cfg.weight_seed if run.imported is None else None, "masks": len(run),
                     "planned": cfg.masks, "test_acc": float(np.mean(acc)) if acc else None,
                     "created": run.meta.get("created"), "path": str(path), "error": None})
    table = pd.DataFrame(rows, columns=columns)
    for column in ("epochs", "weight_seed", "masks", "planned"):  # integers, missing where unknown (not NaN floats)
        table[column] = table[column].astype("Int64")
    return table.astype({"lr": float})


def _imported_epochs(run: Run) -> int | None:
    epochs = {r.get("epochs") for r in run.records.values()}
    return epochs.pop() if len(epochs) == 1 else None


