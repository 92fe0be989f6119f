"""Packed mask bits and the MaskSet: N masks as one N x W matrix of uint64 words.

Bit order (written into every run's metadata as BIT_ORDER): the mask is the concatenation of the prunable
layers in model order; each layer is flattened in C order and starts on a fresh 64-bit word; bit j of a
layer is bit (j % 64), least significant first, of word (j // 64) of that layer. The words are stored
little-endian. So a layer is the word slice [word_start, word_stop) and the padding bits past a layer's
end are always zero, which lets popcounts run over whole words.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from masklab.errors import UserError
from masklab.store.paths import check_mask_id

BIT_ORDER = ("layers in model order; each layer C-order flattened, starts on a 64-bit word; "
             "bit j -> word j//64, bit j%64 (LSB first); words little-endian uint64")
WORD_BITS = 64


def n_words(n_bits: int) -> int:
    return (int(n_bits) + WORD_BITS - 1) // WORD_BITS


def pack(flat: np.ndarray) -> np.ndarray:
    """Pack a 1-D bool array into little-endian uint64 words (padding bits zero)."""
    flat = np.ascontiguousarray(flat, dtype=bool).reshape(-1)
    nbytes = n_words(flat.size) * 8
    packed = np.zeros(nbytes, dtype=np.uint8)
    raw = np.packbits(flat, bitorder="little")
    packed[: raw.size] = raw
    return packed.view("<u8").astype(np.uint64, copy=False)


def unpack_words(words: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of `pack`: the first n_bits bits of the words as a 1-D bool array."""
    raw = np.ascontiguousarray(words).astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(raw, bitorder="little", count=int(n_bits)).astype(bool)


def make_layout(names: Sequence[str], shapes: Sequence[Sequence[int]],
                n_keep: Sequence[int] | None = None) -> pd.DataFrame:
    """The layer table of a MaskSet: layer, shape, n_bits, n_keep, word_start, word_stop."""
    rows, start = [], 0
    for i, (name, shape) in enumerate(zip(names, shapes)):
        shape = tuple(int(s) for s in shape)
        size = int(np.prod(shape)) if shape else 1
        stop = start + n_words(size)
        rows.append({"layer": name, "shape": shape, "n_bits": size,
                     "n_keep": None if n_keep is None else int(n_keep[i]),
                     "word_start": start, "word_stop": stop})
        start = stop
    return pd.DataFrame(rows, columns=["layer", "shape", "n_bits", "n_keep", "word_start", "word_stop"])


def pack_layers(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Pack one mask given as a list of per-layer bool arrays into its row of words."""
    return np.concatenate([pack(np.asarray(m).reshape(-1)) for m in layers]) if layers else \
        np.zeros(0, np.uint64)


class MaskSet:
    """N binary masks over the same layers, packed as an N x W uint64 matrix (`bits`).

    `bits` may be a read-only memory map; nothing here expands it to bool or float except `unpack`,
    which returns one mask (or one layer of one mask) at a time.
    """

    def __init__(self, bits: np.ndarray, layers: pd.DataFrame, ids: Sequence[int] | np.ndarray | None = None):
        if bits.ndim != 2 or bits.dtype != np.uint64:
            raise UserError(f"bits must be an N x W uint64 matrix, got {bits.dtype} {bits.shape}")
        width = int(layers["word_stop"].iloc[-1]) if len(layers) else 0
        if bits.shape[1] != width:
            raise UserError(f"bits have {bits.shape[1]} words per mask but the layers need {width}")
        self.bits = bits
        self.layers = layers.reset_index(drop=True)
        self.ids = np.arange(bits.shape[0]) if ids is None else np.asarray(ids, dtype=np.int64)
        if self.ids.shape != (bits.shape[0],):
            raise UserError(f"{len(self.ids)} ids for {bits.shape[0]} masks")

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_bool(cls, matrix: np.ndarray, layer_sizes: Sequence[int] | None = None,
                  layer_names: Sequence[str] | None = None, ids: Sequence[int] | None = None) -> MaskSet:
        """Wrap an N x d boolean matrix: one layer, or consecutive column blocks of `layer_sizes`. A matrix of
        another dtype is taken only when every value is 0 or 1 (kept = 1); any other value (-1.0, 0.5, 2) is a
        UserError: say which entries are kept explicitly, e.g. `MaskSet.from_bool(scores > 0)`."""
        matrix = np.asarray(matrix)
        if matrix.dtype != bool:
            if not (np.issubdtype(matrix.dtype, np.number) and not np.issubdtype(matrix.dtype, np.complexfloating)):
                raise UserError(f"expected a boolean matrix, got dtype {matrix.dtype}; pass e.g. `matrix != 0`")
            other = (matrix != 0) & (matrix != 1)
            if other.any():
                value = matrix[other].flat[0]
                raise UserError(f"expected a boolean matrix, got {matrix.dtype} values other than 0 and 1 (e.g. "
                                f"{value!r}); say which entries are kept explicitly, e.g. `matrix > 0` or "
                                "`matrix != 0`")
            matrix = matrix == 1
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2:
            raise UserError(f"expected an N x d boolean matrix, got shape {matrix.shape}")
        sizes = [matrix.shape[1]] if layer_sizes is None else [int(s) for s in layer_sizes]
        if sum(sizes) != matrix.shape[1] or any(s < 1 for s in sizes):
            raise UserError(f"layer sizes {sizes} do not add up to the {matrix.shape[1]} columns")
        names = list(layer_names) if layer_names is not None else [f"layer{i}" for i in range(len(sizes))]
        layout = make_layout(names, [(s,) for s in sizes])
        offsets = np.cumsum([0] + sizes)
        bits = np.zeros((matrix.shape[0], int(layout["word_stop"].iloc[-1])), dtype=np.uint64)
        for row in range(matrix.shape[0]):
            bits[row] = pack_layers([matrix[row, offsets[i]:offsets[i + 1]] for i in range(len(sizes))])
        out = cls(bits, layout, ids)
        out.layers["n_keep"] = out._common_counts()
        return out

    def _common_counts(self) -> list:
        counts = self.popcounts(per_layer=True)
        return [int(c[0]) if len(c) and (c == c[0]).all() else None for c in counts.T]

    # ---- shape ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.bits.shape[0]

    @property
    def n_masks(self) -> int:
        return self.bits.shape[0]

    @property
    def n_words(self) -> int:
        return self.bits.shape[1]

    @property
    def n_bits(self) -> int:
        return int(self.layers["n_bits"].sum())

    def __repr__(self) -> str:
        return f"MaskSet({self.n_masks} masks x {self.n_bits:,} bits in {len(self.layers)} layers)"

    def _repr_html_(self) -> str:
        """A notebook's view: the counts, then one row per layer (bits, and the kept share where every mask
        keeps the same count), never the bits."""
        keep = self.layers["n_keep"] if "n_keep" in self.layers.columns else [None] * len(self.layers)
        rows = "".join(
            f"<tr><td>{html.escape(str(name))}</td><td style=\"text-align:right\">{int(bits):,}</td>"
            f"<td style=\"text-align:right\">"
            f"{'n/a' if k is None or k != k else f'{100 * int(k) / int(bits):.4g}%'}</td></tr>"
            for name, bits, k in zip(self.layers["layer"], self.layers["n_bits"], keep))
        return (f"<div><b>MaskSet</b>: {self.n_masks:,} masks x {self.n_bits:,} bits in {len(self.layers)} layers"
                f"<table><thead><tr><th>layer</th><th>bits</th><th>kept (each mask)</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")

    def _layer_row(self, layer: str | int) -> pd.Series:
        if isinstance(layer, (int, np.integer)):
            return self.layers.iloc[int(layer)]
        hit = self.layers.index[self.layers["layer"] == layer]
        if len(hit) == 0:
            raise UserError(f"no layer {layer!r}; layers: {', '.join(self.layers['layer'])}")
        return self.layers.iloc[hit[0]]

    def _row(self, i: int) -> int:
        hit = np.flatnonzero(self.ids == check_mask_id(i))
        if len(hit) == 0:
            raise UserError(f"no mask with id {i}; ids are {self.ids.min()}..{self.ids.max()}")
        return int(hit[0])

    # ---- access ---------------------------------------------------------------------------------
    def unpack(self, i: int, layer: str | int | None = None) -> np.ndarray:
        """Mask with id `i` as bools: the whole flat mask, or one layer in its own shape."""
        row = self.bits[self._row(i)]
        if layer is None:
            return np.concatenate([
                unpack_words(row[r.word_start:r.word_stop], r.n_bits) for r in self.layers.itertuples()])
        r = self._layer_row(layer)
        return unpack_words(row[r.word_start:r.word_stop], r.n_bits).reshape(r["shape"])

    def unpack_layers(self, i: int) -> list[np.ndarray]:
        """Mask with id `i` as one bool array per layer, each in its layer's shape (`unpack(i, k)` for every k,
        with one row lookup: per layer, a pandas row cost more than its unpacking, 1 ms a mask of the digits
        MLP, most of the functional stage's rebuilding of 1,024 masks)."""
        row = self.bits[self._row(i)]
        return [unpack_words(row[start:stop], n_bits).reshape(shape) for start, stop, n_bits, shape in
                zip(self.layers["word_start"], self.layers["word_stop"], self.layers["n_bits"], self.layers["shape"])]

    def popcounts(self, per_layer: bool = False) -> np.ndarray:
        """Kept-bit counts: (N,) for whole masks or (N, L) per layer."""
        counts = np.zeros((self.n_masks, len(self.layers)), dtype=np.int64)
        for k, r in enumerate(self.layers.itertuples()):
            counts[:, k] = np.bitwise_count(self.bits[:, r.word_start:r.word_stop]).sum(axis=1, dtype=np.int64)
        return counts if per_layer else counts.sum(axis=1)

    def subset(self, ids: Sequence[int]) -> MaskSet:
        rows = [self._row(i) for i in ids]
        return MaskSet(np.ascontiguousarray(self.bits[rows]), self.layers.copy(), self.ids[rows])

    def same_layout(self, other: MaskSet) -> bool:
        cols = ["layer", "n_bits", "word_start", "word_stop"]
        return self.layers[cols].equals(other.layers[cols])
