"""`masks.bits`: all finished masks of a run as one N x W matrix, memory-mapped; a cache of the mask files.

Format (version 2), little-endian:

    offset 0    header, 64 bytes: magic `MLABBITS` (8), version (u32, = 2), offset of the words (u32),
                n masks (u64), n words per mask (u64), key (32): BLAKE2b-256 of the text
                "<n words>\\n" + "<mask id>:<checksum>\\n" per mask, i.e. of what the matrix was built from
    64          the n mask ids (i64)
    64 + 8 n    the n row checksums (32 bytes each): BLAKE2b-256 of each row's words, which is the
                `checksum` of that mask's record and the digest in its mask file's header
    offset      the words, n x W uint64, row r = mask ids[r]; `offset` is rounded up to 64 bytes

Checks. `open_cache` (cheap: the header, the ids and the row checksums, 72 n bytes) tells a current cache
from a stale one (another key: the registry changed since, or an older version: rebuilt silently) and
from a damaged one (the right key but a wrong size, ids or checksums: a StoreError). `check_rows` hashes
every row against its mask's checksum (linear in the file size, about 1 GB/s per core): a flipped bit in
the words is a StoreError naming the rows and masks. `Run` runs both whenever a run is opened.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from masklab import files as W
from masklab.errors import StoreError
from masklab.store import files as F

MAGIC = b"MLABBITS"
VERSION = 2
HEADER = struct.Struct("<8sIIQQ32s")  # magic, version, offset of the words, n masks, n words, key
ROW_DIGEST = 32


def key(n_words: int, ids: Sequence[int], checksums: Sequence[str]) -> bytes:
    """What a matrix is built from: the word count and every mask's id and checksum."""
    text = f"{int(n_words)}\n" + "".join(f"{i}:{c}\n" for i, c in zip(ids, checksums))
    return F.digest(text.encode())


def words_offset(n: int) -> int:
    """Offset of the words: header, n ids and n row checksums, rounded up to 64 bytes."""
    return -(-(HEADER.size + (8 + ROW_DIGEST) * n) // 64) * 64


def file_size(n: int, n_words: int) -> int:
    return words_offset(n) + 8 * n * n_words


def _fix(path: Path) -> str:
    return (f"`masklab verify {path.parent} --repair` rebuilds it from the mask files (it is a cache: deleting "
            "it is safe too)")


def cache_bytes(ids: Sequence[int], checksums: Sequence[str], words: np.ndarray) -> list[bytes | memoryview]:
    """The pieces of a masks.bits file for `words` (n x W) whose rows are masks `ids` with `checksums`."""
    n, w = words.shape
    offset = words_offset(n)
    head = HEADER.pack(MAGIC, VERSION, offset, n, w, key(w, ids, checksums))
    table = np.asarray(ids, dtype="<i8").tobytes() + b"".join(bytes.fromhex(c) for c in checksums)
    pad = bytes(offset - len(head) - len(table))
    return [head + table + pad, np.ascontiguousarray(words, dtype="<u8").view(np.uint8).data]


def open_cache(path: Path, ids: Sequence[int], checksums: Sequence[str], n_words: int) -> np.memmap | None:
    """The words of a current `masks.bits` for masks `ids` (memory-mapped, rows not yet hashed), or None
    when it is missing or stale. A damaged file (right key, wrong size, ids or checksums; a bad magic
    number) is a StoreError naming it."""
    n = len(ids)
    try:
        with F.open_regular(path, "the bit matrix", _fix(path)) as f:
            head = f.read(HEADER.size)
            size = f.seek(0, 2)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{path} cannot be read ({e.strerror or e}); {_fix(path)}") from None
    if len(head) < HEADER.size:
        raise StoreError(f"{path} is truncated ({size} bytes); {_fix(path)}")
    magic, version, offset, n0, w0, key0 = HEADER.unpack(head)
    if magic != MAGIC:
        raise StoreError(f"{path} is not a masklab bit matrix (bad magic number); {_fix(path)}")
    if version < VERSION or key0 != key(n_words, ids, checksums):
        return None  # an older format, or built before masks were added or moved aside: rebuild
    if version != VERSION or (offset, n0, w0) != (words_offset(n), n, n_words) or size != file_size(n, n_words):
        raise StoreError(f"{path} is damaged (its header or size does not fit its {n} masks of {n_words} words: "
                         f"{size} bytes, expected {file_size(n, n_words)}); {_fix(path)}")
    table = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER.size, shape=((8 + ROW_DIGEST) * n,))
    stored_ids = table[:8 * n].view("<i8")
    stored = table[8 * n:].reshape(n, ROW_DIGEST)
    if not np.array_equal(stored_ids, np.asarray(ids, dtype=np.int64)):
        raise StoreError(f"{path} is damaged (its mask ids are not the registry's); {_fix(path)}")
    expect = np.frombuffer(b"".join(bytes.fromhex(c) for c in checksums), np.uint8).reshape(n, ROW_DIGEST)
    bad = np.flatnonzero((stored != expect).any(axis=1))
    if len(bad):
        raise StoreError(f"{path} is damaged (the row checksums of masks {_some(ids, bad)} are not their "
                         f"records'); {_fix(path)}")
    return np.memmap(path, dtype="<u8", mode="r", offset=offset, shape=(n, n_words))


def bad_rows(words: np.ndarray, checksums: Sequence[str]) -> list[int]:
    """The rows of `words` whose BLAKE2b-256 is not their checksum (hashing on several threads)."""
    found = F.digests([words[r] for r in range(len(words))])
    return [r for r, (d, c) in enumerate(zip(found, checksums)) if d.hex() != c]


def check_rows(path: Path, words: np.ndarray, ids: Sequence[int], checksums: Sequence[str]) -> None:
    """Every row of `words` (from `path`) against its mask's checksum; a mismatch is a StoreError naming
    the rows and their masks."""
    bad = bad_rows(words, checksums)
    if bad:
        s = "s" if len(bad) > 1 else ""
        raise StoreError(f"{path} is corrupt: row{s} {_some(range(len(ids)), bad)} (mask{s} {_some(ids, bad)}) "
                         f"{'do' if s else 'does'} not match {'their' if s else 'its'} mask's checksum; {_fix(path)}")


def write_cache(path: Path, root: Path, ids: Sequence[int], checksums: Sequence[str], words: np.ndarray) -> None:
    """Write `masks.bits` of run `root` atomically (links refused: see masklab.files)."""
    W.atomic_write(path, cache_bytes(ids, checksums, words), root=root, in_run=True)


def _some(ids: Sequence[int], rows, limit: int = 5) -> str:
    ids = list(ids)
    named = [str(ids[r]) for r in list(rows)[:limit]]
    more = len(rows) - len(named)
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")
