"""What every open of a run checks in its words: each mask file and masks.bits against the records'
checksums, and the run-level files against run.json's (the metadata: schema.py).
  - masks.bits, when current: its header, ids and row checksums (cache.py), and then
  - every mask file: its size and header (its digest = the record's checksum), and its words compared
    byte for byte with its row of masks.bits (where they differ, the file is hashed to tell which copy is
    corrupt); without a current masks.bits every mask file is hashed against its record.
  Linear in the run's size but at memory speed: about 0.1 s for 1,000 masks of Conv-4 size (303 MB; 0.9 s
  when masks.bits must be rebuilt and every file is hashed), see bench/bench_open_check.py.
  `Run(path, check="structure")` (used by `masklab runs`) skips the words until `masks` is first read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from masklab.errors import StoreError, WriteError
from masklab.store import cache as C
from masklab.store import files as F
from masklab.store.paths import inside, mask_path

CHUNK_BYTES = 64 << 20  # mask files read and hashed this much at a time


def read_run_file(path: Path, rel: str, info: dict) -> bytes:
    """The bytes of run-level file `rel` of run `path`, checked against run.json's size and BLAKE2b-256."""
    file = inside(path, rel)
    fix = "restore it from a copy of the run, or import the masks again"
    try:
        if os.path.islink(file):
            raise StoreError(f"{file} is a symbolic link; replace it with a real copy of the file")
        data = F.read_regular(file, "run file", f"run.json says {info['bytes']:,} bytes; {fix}", limit=info["bytes"],
                              exact=True)
    except FileNotFoundError:
        raise StoreError(f"{file} is missing; {fix}") from None
    if F.checksum(data) != info["blake2b"]:
        raise StoreError(f"{file} fails its checksum (corrupt); {fix}")
    return data


def _read(path: Path, n_words: int) -> bytes:
    try:
        return F.read_regular(path, "mask file", F.lazy_repair_hint(path), limit=F.mask_file_size(n_words), exact=True)
    except FileNotFoundError:
        raise StoreError(f"mask file {path} is missing; {F.repair_hint(path)}") from None


def checked_masks(root: Path, records: dict[int, dict], n_words: int) -> Iterator[tuple[int, np.ndarray]]:
    """(mask id, words) of every mask file, each checked against its record's checksum; the files are
    read a few tens of MB at a time and hashed on several threads."""
    ids = list(records)
    per_chunk = max(1, CHUNK_BYTES // F.mask_file_size(n_words))
    for start in range(0, len(ids), per_chunk):
        chunk = ids[start:start + per_chunk]
        datas = [_read(mask_path(root, i), n_words) for i in chunk]
        found = F.digests([memoryview(d)[F.HEADER_SIZE:] for d in datas])
        for i, data, d in zip(chunk, datas, found):
            yield i, F.check_mask_data(mask_path(root, i), data, n_words, records[i]["checksum"], i,
                                       words_digest=d)


def check_contents(root: Path, records: dict[int, dict], n_words: int) -> bool:
    """The words of every mask file, and of masks.bits when it is current, against the records; a mismatch
    is a StoreError naming the file (and the rows of masks.bits). Returns whether masks.bits was current.

    With a current masks.bits (its header, ids and row checksums already match the records: `open_cache`)
    each mask file's header digest is compared with its record's checksum and its words with its row of
    masks.bits: two copies that must agree byte for byte, at memory speed, and only where they differ is
    the mask file hashed, to tell which copy is corrupt. Without one, every mask file is hashed. (`verify`
    hashes both in full.)"""
    if not records:
        return False
    ids, sums = list(records), [r["checksum"] for r in records.values()]
    cache_path = root / "masks.bits"
    bits = C.open_cache(cache_path, ids, sums, n_words)
    if bits is None:
        for _ in checked_masks(root, records, n_words):
            pass
        return False
    bad_rows = []
    for row, i in enumerate(ids):
        path = mask_path(root, i)
        data = _read(path, n_words)
        try:
            F.check_mask_data(path, data, n_words, sums[row], i, same_as=bits[row])
        except StoreError:
            F.check_mask_data(path, data, n_words, sums[row], i)  # raises if the mask file is the bad copy
            bad_rows.append(row)  # the file is right: the row is not
    if bad_rows:
        C.check_rows(cache_path, bits, ids, sums)  # names every bad row
    return True


def build_cache(root: Path, records: dict[int, dict], n_words: int) -> np.ndarray:
    """The N x W words of the masks of `records` (in their order), read from the checked mask files (each
    file checked once) and written to masks.bits atomically; memory-mapped from it, or kept in memory where
    the run cannot be written (a read-only run or a full disk)."""
    n, ids, sums = len(records), list(records), [r["checksum"] for r in records.values()]
    words = np.empty((n, n_words), dtype=np.uint64)
    for row, (_, mask) in enumerate(checked_masks(root, records, n_words)):
        words[row] = mask
    path = root / "masks.bits"
    try:
        C.write_cache(path, root, ids, sums, words)
    except WriteError:
        return words
    return np.memmap(path, dtype="<u8", mode="r", offset=C.words_offset(n), shape=(n, n_words))
