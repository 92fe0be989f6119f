"""Files of a run directory: checksums, the mask file format, reading extras (names and paths: paths.py).
Every write, the run's included, goes through masklab/files.py: whole or not at all, never through a link.

Mask file (`masks/000003.mask`): a 64-byte header then the mask's packed words (little-endian uint64,
bit order `bits.BIT_ORDER`). Header, little-endian: magic `MLABMASK` (8 bytes), format version (u32),
header size (u32, = 64), mask id (u64), number of words (u64), BLAKE2b-256 digest of the words (32 bytes).
So a mask of W words takes 64 + 8 W bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from masklab.errors import StoreError

MASK_MAGIC = b"MLABMASK"
MASK_VERSION = 1
HEADER = struct.Struct("<8sIIQQ32s")  # magic, version, header size, mask id, n_words, digest
HEADER_SIZE = HEADER.size  # 64


def digest(data: bytes | memoryview | np.ndarray) -> bytes:
    """BLAKE2b-256 of raw bytes (an array is hashed as its little-endian bytes)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).data
    return hashlib.blake2b(data, digest_size=32).digest()


def checksum(data: bytes | memoryview | np.ndarray) -> str:
    """Hex BLAKE2b-256, the form stored in the registry."""
    return digest(data).hex()


def file_checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_npy(path: Path, data: bytes | None = None) -> np.ndarray:
    """A raw .npy file (or its bytes `data`, read and checked already), never unpickled; a damaged file is
    a StoreError naming it."""
    try:
        return np.load(path if data is None else io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise StoreError(f"{path} is unreadable ({e}); the run's extras for this mask are damaged") from None


def load_npz(path: Path, data: bytes | None = None) -> dict[str, np.ndarray]:
    """The arrays of a .npz file (or of its bytes `data`), never unpickled; a damaged file is a StoreError."""
    try:
        with np.load(path if data is None else io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise StoreError(f"{path} is unreadable ({e}); the run's extras for this mask are damaged") from None


# ---- mask files -----------------------------------------------------------------------------------------
def mask_bytes(mask_id: int, words: np.ndarray) -> tuple[bytes, str]:
    """The bytes of a mask file and the hex checksum of its words."""
    payload = np.ascontiguousarray(words, dtype="<u8").tobytes()
    d = digest(payload)
    header = HEADER.pack(MASK_MAGIC, MASK_VERSION, HEADER_SIZE, int(mask_id), len(payload) // 8, d)
    return header + payload, d.hex()


def mask_file_size(n_words: int) -> int:
    return HEADER_SIZE + 8 * int(n_words)


def read_mask(path: Path, n_words: int, expect_checksum: str | None = None,
              mask_id: int | None = None) -> np.ndarray:
    """Read and check one mask file: size, magic, version, word count, id and checksum.

    Returns the words as a uint64 array. Any problem is a StoreError that names the file.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"mask file {path} is missing; rerun `masklab generate ... --resume` to retrain it") \
            from None
    except OSError as e:
        raise StoreError(f"mask file {path} cannot be read ({e.strerror or e})") from None
    return check_mask_data(path, data, n_words, expect_checksum, mask_id)


def repair_hint(path: Path) -> str:
    """How to fix a damaged file of one mask: `path` is `RUN/<folder>/<file>`."""
    run = Path(path).parent.parent
    return f"`masklab verify {run} --repair` moves that mask aside, then {restore_hint(run)}"


def restore_hint(run: Path, many: bool = False) -> str:
    """What brings back masks moved to quarantine: `generate --resume` retrains them; an imported run's masks
    come back by importing their source files again (the same files find the same run)."""
    them = "them" if many else "it"
    try:
        imported = json.loads((Path(run) / "run.json").read_text()).get("imported") is not None
    except (OSError, ValueError, AttributeError):
        imported = False
    if imported:
        return f"`masklab import` of the same source files again (same options) restores {them}"
    return f"`masklab generate --resume {run}` retrains {them}"


def check_mask_data(path: Path, data: bytes, n_words: int, expect_checksum: str | None = None,
                    mask_id: int | None = None, same_as: np.ndarray | None = None,
                    words_digest: bytes | None = None) -> np.ndarray:
    """Check the bytes of mask file `path` (see `read_mask`) and return its words. With `same_as` (words
    already checked against `expect_checksum`) the words are compared with them instead of hashed: the
    same verdict at memory speed. `words_digest`: the BLAKE2b-256 of the words, if computed already."""
    expected = mask_file_size(n_words)
    if len(data) != expected:
        raise StoreError(f"mask file {path} is truncated or padded: {len(data)} bytes, expected {expected}; "
                         f"{repair_hint(path)}")
    magic, version, header_size, stored_id, words, stored = HEADER.unpack_from(data)
    if magic != MASK_MAGIC or header_size != HEADER_SIZE:
        raise StoreError(f"{path} is not a masklab mask file (bad magic number); {repair_hint(path)}")
    if version != MASK_VERSION:
        raise StoreError(f"mask file {path} has format version {version}; this masklab reads version "
                         f"{MASK_VERSION}: upgrade masklab")
    if words != n_words or (mask_id is not None and stored_id != mask_id):
        raise StoreError(f"mask file {path} holds mask {stored_id} of {words} words, expected mask {mask_id} "
                         f"of {n_words}; {repair_hint(path)}")
    out = np.frombuffer(data, dtype="<u8", offset=HEADER_SIZE).astype(np.uint64, copy=False)
    if expect_checksum is not None and stored.hex() != expect_checksum:
        ok = False
    elif same_as is not None and expect_checksum is not None:
        ok = np.array_equal(out, same_as)
    else:
        ok = (words_digest if words_digest is not None else digest(memoryview(data)[HEADER_SIZE:])) == stored
    if not ok:
        raise StoreError(f"mask file {path} fails its checksum (corrupt); {repair_hint(path)}")
    return out


def digests(buffers, threads: int | None = None) -> list[bytes]:
    """BLAKE2b-256 of each buffer (bytes or arrays), on up to `threads` threads (default: the usable
    cores, at most 4) when there is enough to hash: hashlib releases the GIL on large buffers."""
    views = [np.ascontiguousarray(b).view(np.uint8).data if isinstance(b, np.ndarray) else b for b in buffers]
    total = sum(len(v) for v in views)
    if threads is None:
        threads = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if threads <= 1 or total < (8 << 20) or len(views) < 2:
        return [digest(v) for v in views]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(digest, views, chunksize=max(1, len(views) // (4 * threads))))


def read_checked(path: Path, size: int, checksum_hex: str, what: str) -> bytes:
    """The bytes of `path`, checked against the size and BLAKE2b-256 its mask's record gives; a problem
    is a StoreError naming the file and the fix."""
    fix = f"{what}; {repair_hint(path)}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} is missing ({fix})") from None
    except OSError as e:
        raise StoreError(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) != size:
        raise StoreError(f"{path} is truncated or padded: {len(data)} bytes, its record says {size} ({fix})")
    if checksum(data) != checksum_hex:
        raise StoreError(f"{path} fails its checksum (corrupt) ({fix})")
    return data
