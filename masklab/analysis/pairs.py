"""Per-pair results as N x N matrices on disk: one memory-mappable .npy file per quantity and layer.

A pair folder (`masklab analyze` keeps one at ``runs/<run>/analysis/<settings id>/pairs/``)::

    pairs.json                the manifest: format version, and for every quantity and layer its file, dtype,
                              unit, description and attributes (e.g. the layer's bits)
    ids.npy                   int64 mask ids of the rows and columns (pairs within one set of masks)
    <quantity>/<layer>.npy    the N x N matrix of `quantity` over `layer`: entry [i, j] is the pair
                              (ids[i], ids[j]); symmetric; the diagonal holds each mask with itself

Why this format (measured and reasoned, issue 24):

- ``.npy`` is numpy's own format: ``np.load(path, mmap_mode="r")`` maps it without reading it, so a stage
  reads the rows it needs (a block of rows of one layer) and never holds more; it is exact for integers and
  floats and needs no library beyond numpy (any language reads it from its short text header).
- One file per quantity and layer: each is one contiguous N x N block, written once and atomically
  (`masklab.files.atomic_npy`: a reader sees the old file or the new one), and a later analysis adds its
  own quantities (e.g. prediction disagreement) beside the distances without rewriting them.
- Not compressed: a compressed file (npz, Zarr, Parquet) cannot be memory-mapped and costs a decompression
  per read, and distance counts between near-random masks hardly compress.
- Distances are stored as intersection counts ``|a AND b|`` (`INTERSECTION`) in the smallest unsigned integer
  type that holds the layer's largest kept count (uint16 for the digits MLP): the four metrics are exact
  functions of the counts, of the kept counts (the diagonal) and of the layer's bits
  (`masklab.analysis.distances.metric_values`), so one 2-byte matrix per layer replaces four 8-byte ones and
  every metric comes out bit for bit as `masklab.distances` computes it
  (`masklab.analysis.distances.stored_intersections`).
- The long table (mask_a, mask_b, layer, metric, value) is a view made on demand (`PairStore.long`,
  `long_table`): at N = 10,000 it would hold 50 million rows per layer and metric.

Only the process that creates a pair folder writes it (the manifest is rewritten atomically after each file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.errors import StoreError, UserError
from masklab.store import files as F

FORMAT = 1
MANIFEST = "pairs.json"
IDS = "ids.npy"
INTERSECTION = "intersection"
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
LONG_COLUMNS = ["mask_a", "mask_b", "layer", "metric", "value"]


def count_dtype(largest: int) -> np.dtype:
    """The smallest unsigned integer type that holds every value up to `largest`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _file_name(name: str, index: int, kind: str) -> str:
    """A file-system name for a quantity or layer: the name itself when it is plain, else `<kind><index>`."""
    return name if _SAFE.fullmatch(name) and ".." not in name else f"{kind}{index}"


class PairStore:
    """The per-pair matrices of one set of masks in a folder (see the module docstring).

    Create one with `PairStore.create(folder, ids)`, open one with `PairStore.open(folder)`.

    Examples
    --------
    >>> store = PairStore.create(tmp / "pairs", ids=[0, 1, 2])          # doctest: +SKIP
    >>> store.write("disagreement", np.zeros((3, 3)), unit="fraction")   # doctest: +SKIP
    >>> store.read("disagreement").shape                                 # doctest: +SKIP
    (3, 3)
    """

    def __init__(self, folder: Path, ids: np.ndarray, entries: list[dict], root: Path | None = None):
        self.folder = Path(folder)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.entries = entries
        self.root = root

    # ---- opening -------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike, ids: Sequence[int] | np.ndarray, *,
               root: str | os.PathLike | None = None) -> PairStore:
        """A pair folder for the masks `ids` (rows and columns in this order). An existing folder for the same
        ids is opened as it is (its quantities stay); one for other masks is emptied first, so that no matrix
        of other masks is left beside the new ones. `root`: nothing is written through a link below it."""
        folder = Path(folder)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(np.unique(ids)) != len(ids):
            raise UserError("a pair store needs distinct mask ids")
        root_path = Path(root) if root is not None else folder.parent
        if (folder / MANIFEST).is_file():
            try:
                existing = cls.open(folder, root=root_path)
            except StoreError:
                existing = None
            if existing is not None and np.array_equal(existing.ids, ids):
                return existing
        if folder.exists() and not folder.is_symlink():
            shutil.rmtree(folder)
        W.make_dirs(folder, root=root_path)
        W.atomic_write(folder / IDS, W.npy_bytes(ids), root=root_path, durable=False)
        store = cls(folder, ids, [], root_path)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike, *, root: str | os.PathLike | None = None) -> PairStore:
        """The pair folder at `folder` (written by `create`); a missing or damaged manifest is a StoreError."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            ids = F.load_npy(folder / IDS)
        except (OSError, ValueError) as e:
            raise StoreError(f"{folder} is not a readable pair folder ({e}); run the analysis again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"{folder / MANIFEST}: unknown pair-folder format; run the analysis again")
        return cls(folder, ids, list(manifest.get("entries", [])), Path(root) if root is not None else folder.parent)

    # ---- what is stored ------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    def _entry(self, quantity: str, layer: str) -> dict | None:
        return next((e for e in self.entries if e["quantity"] == quantity and e["layer"] == layer
                     and not e.get("pending")), None)

    def has(self, quantity: str, layer: str = "all") -> bool:
        return self._entry(quantity, layer) is not None

    def layers(self, quantity: str) -> list[str]:
        """The layers stored for `quantity`, in the order they were written."""
        return [e["layer"] for e in self.entries if e["quantity"] == quantity and not e.get("pending")]

    def attrs(self, quantity: str, layer: str = "all") -> dict:
        """The attributes stored with one matrix (e.g. ``{"n_bits": 16384}`` for intersection counts)."""
        return dict(self._need(quantity, layer).get("attrs", {}))

    def quantities(self) -> pd.DataFrame:
        """One row per stored matrix: quantity, layer, dtype, unit, description, file (relative to the folder),
        bytes."""
        rows = [{"quantity": e["quantity"], "layer": e["layer"], "dtype": e["dtype"], "unit": e.get("unit", ""),
                 "description": e.get("description", ""), "file": e["file"],
                 "bytes": (self.folder / e["file"]).stat().st_size if (self.folder / e["file"]).exists() else 0}
                for e in self.entries]
        return pd.DataFrame(rows, columns=["quantity", "layer", "dtype", "unit", "description", "file", "bytes"])

    def path(self, quantity: str, layer: str = "all") -> Path:
        return self.folder / self._need(quantity, layer)["file"]

    def _need(self, quantity: str, layer: str) -> dict:
        entry = self._entry(quantity, layer)
        if entry is None:
            have = sorted({f"{e['quantity']}/{e['layer']}" for e in self.entries})
            raise UserError(f"no {quantity!r} matrix for layer {layer!r} in {self.folder}; stored: "
                            f"{', '.join(have) or 'nothing'}")
        return entry

    # ---- writing -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, quantity: str, layer: str = "all", dtype=np.float64, *, unit: str = "",
               description: str = "", attrs: dict | None = None) -> Iterator[np.ndarray]:
        """A zero-filled N x N memory map of `dtype` to fill; registered (and put in place, atomically) when the
        block ends without an exception. Rewriting a quantity and layer replaces it."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", quantity):
            raise UserError(f"quantity name {quantity!r} is invalid: lower-case letters, digits and '_'")
        quantities = list(dict.fromkeys(e["quantity"] for e in self.entries))
        q_dir = _file_name(quantity, quantities.index(quantity) if quantity in quantities else len(quantities),
                           "quantity")
        existing = self._entry(quantity, layer)
        index = sum(e["quantity"] == quantity for e in self.entries)  # pending ones too: no two share a file
        rel = existing["file"] if existing is not None else f"{q_dir}/{_file_name(layer, index, 'layer')}.npy"
        entry = {"quantity": quantity, "layer": layer, "file": rel, "dtype": np.dtype(dtype).str, "unit": unit,
                 "description": description, "attrs": dict(attrs or {}), "pending": True}
        if existing is None:  # its place in the order is taken now: several writers may be open at once
            self.entries.append(entry)
        target = self.folder / rel
        try:
            W.make_dirs(target.parent, root=self.root)
            with W.atomic_npy(target, dtype, (self.n, self.n), root=self.root) as matrix:
                yield matrix
        except BaseException:
            if existing is None:
                self.entries.remove(entry)
            raise
        del entry["pending"]
        if existing is not None:
            self.entries[self.entries.index(existing)] = entry
        self._write_manifest()

    def write(self, quantity: str, matrix: np.ndarray, layer: str = "all", *, unit: str = "",
              description: str = "", attrs: dict | None = None) -> Path:
        """Store one N x N `matrix` (rows and columns in the order of `ids`); returns its file."""
        matrix = np.asarray(matrix)
        if matrix.shape != (self.n, self.n):
            raise UserError(f"a {quantity} matrix must be {self.n} x {self.n} (the store's masks); got "
                            f"{matrix.shape}")
        with self.writer(quantity, layer, matrix.dtype, unit=unit, description=description, attrs=attrs) as out:
            out[:] = matrix
        return self.path(quantity, layer)

    def write_long(self, table: pd.DataFrame, quantity: str, *, dtype=None, unit: str = "", description: str = "",
                   diagonal=0) -> None:
        """Store a long table (mask_a, mask_b, layer, value; e.g. from `long`) as matrices, one per layer:
        each row fills [a, b] and [b, a]; the diagonal is `diagonal` unless the table lists (a, a) pairs.
        Pairs the table does not list stay 0. The inverse of `long` (exactly, for the pairs listed)."""
        missing = [c for c in ("mask_a", "mask_b", "layer", "value") if c not in table.columns]
        if missing:
            raise UserError(f"write_long needs columns mask_a, mask_b, layer, value; missing {', '.join(missing)}")
        position = pd.Series(np.arange(self.n), index=self.ids)
        for layer, group in table.groupby("layer", sort=False):
            rows = position.reindex(group["mask_a"].to_numpy()).to_numpy()
            cols = position.reindex(group["mask_b"].to_numpy()).to_numpy()
            if np.isnan(rows.astype(float)).any() or np.isnan(cols.astype(float)).any():
                raise UserError(f"the table names masks that are not in this store (ids {self.ids[:5].tolist()}...)")
            values = group["value"].to_numpy()
            with self.writer(quantity, str(layer), dtype or values.dtype, unit=unit,
                             description=description) as out:
                np.fill_diagonal(out, diagonal)
                out[rows.astype(np.int64), cols.astype(np.int64)] = values
                out[cols.astype(np.int64), rows.astype(np.int64)] = values

    def _write_manifest(self) -> None:
        done = [e for e in self.entries if not e.get("pending")]
        W.atomic_write(self.folder / MANIFEST, W.json_text({"format": FORMAT, "n_masks": self.n,
                                                             "entries": done}).encode(),
                       root=self.root, durable=False)

    # ---- reading -------------------------------------------------------------------------------------------
    def read(self, quantity: str, layer: str = "all", *, mmap: bool = True) -> np.ndarray:
        """The N x N matrix of `quantity` over `layer`: a read-only memory map (``mmap=True``) or an array."""
        entry = self._need(quantity, layer)
        path = self.folder / entry["file"]
        try:
            matrix = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"{path} is unreadable ({e}); run the analysis again") from None
        if matrix.shape != (self.n, self.n) or matrix.dtype.str != entry["dtype"]:
            raise StoreError(f"{path} holds a {matrix.dtype} {matrix.shape} array, the manifest says "
                             f"{entry['dtype']} ({self.n}, {self.n}); run the analysis again")
        return matrix

    def square(self, quantity: str, layer: str = "all") -> pd.DataFrame:
        """One matrix as an N x N DataFrame indexed by mask ids (index "mask_a", columns "mask_b")."""
        return pd.DataFrame(np.asarray(self.read(quantity, layer)), index=pd.Index(self.ids, name="mask_a"),
                            columns=pd.Index(self.ids, name="mask_b"))

    def long(self, quantity: str, layers: Sequence[str] | None = None, *, diagonal: bool = False) -> pd.DataFrame:
        """The pairs i < j (and i == j with `diagonal`) of `quantity` as a long table: mask_a, mask_b, layer,
        metric (= `quantity`), value; layers in the order stored. Holds every pair in memory: for the N that
        a person reads."""
        names = self.layers(quantity) if layers is None else list(layers)
        rows, cols = np.triu_indices(self.n, 0 if diagonal else 1)
        parts = [np.asarray(self.read(quantity, layer))[rows, cols] for layer in names]
        n_pairs = len(rows)
        return pd.DataFrame({
            "mask_a": np.tile(self.ids[rows], len(names)),
            "mask_b": np.tile(self.ids[cols], len(names)),
            "layer": np.repeat(np.array(names, dtype=object), n_pairs),
            "metric": quantity,
            "value": np.concatenate(parts) if parts else np.empty(0),
        }, columns=LONG_COLUMNS)

    def bytes(self) -> int:
        """Bytes of every file of the folder."""
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


def upper_blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """Row blocks [start, stop) covering 0..n, for walking the upper triangle of an N x N matrix block by block
    (row block r holds the pairs (i, j) with start <= i < stop and j > i)."""
    for start in range(0, n, max(1, int(block_rows))):
        yield start, min(start + int(block_rows), n)


__all__ = ["INTERSECTION", "PairStore", "count_dtype", "upper_blocks"]
