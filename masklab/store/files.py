"""Files of a run directory: atomic writes, checksums, the mask file format, safe paths.

Every file is written whole or not at all: the bytes go to a hidden temporary file beside the target
(`.<name>.tmp-<pid>-<random>`), which is fsynced and then renamed over the target, and the directory is
fsynced after the rename. A killed writer leaves at most a temporary file, which readers ignore and the
next writer removes.

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
import re
import secrets
import struct
from pathlib import Path

import numpy as np

from masklab.errors import StoreError

MASK_MAGIC = b"MLABMASK"
MASK_VERSION = 1
HEADER = struct.Struct("<8sIIQQ32s")  # magic, version, header size, mask id, n_words, digest
HEADER_SIZE = HEADER.size  # 64
TMP_MARK = ".tmp-"


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


# ---- atomic writes --------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: Path, data: bytes | memoryview, sync_dir: bool = True) -> None:
    """Write `data` to `path` whole or not at all (temporary file, fsync, rename, fsync the directory)."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def json_text(value: dict) -> str:
    """JSON for reading by eye: one top-level key per line; a list of dicts gets one dict per line."""
    lines = []
    for key, item in value.items():
        if isinstance(item, list) and item and all(isinstance(x, dict) for x in item):
            inner = ",\n".join(f"  {json.dumps(x)}" for x in item)
            lines.append(f" {json.dumps(key)}: [\n{inner}\n ]")
        elif isinstance(item, dict) and item and all(isinstance(x, dict) for x in item.values()):
            inner = ",\n".join(f"  {json.dumps(k)}: {json.dumps(x)}" for k, x in item.items())
            lines.append(f" {json.dumps(key)}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(item)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def atomic_write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json_text(value))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npy(path: Path) -> np.ndarray:
    """A raw .npy file, never unpickled; a damaged file is a StoreError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise StoreError(f"{path} is unreadable ({e}); the run's extras for this mask are damaged") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise StoreError(f"{path} is unreadable ({e}); the run's extras for this mask are damaged") from None


def remove_tmp_files(root: Path) -> int:
    """Delete temporary files left by killed writers under `root` (call only while holding the lock)."""
    count = 0
    for path in root.rglob(f".*{TMP_MARK}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            count += 1
    return count


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
    fix = "delete it (and its .json record) and rerun `masklab generate ... --resume` to retrain that mask"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"mask file {path} is missing; rerun `masklab generate ... --resume` to retrain it") \
            from None
    expected = mask_file_size(n_words)
    if len(data) != expected:
        raise StoreError(f"mask file {path} is truncated or padded: {len(data)} bytes, expected {expected}; {fix}")
    magic, version, header_size, stored_id, words, stored = HEADER.unpack_from(data)
    if magic != MASK_MAGIC or header_size != HEADER_SIZE:
        raise StoreError(f"{path} is not a masklab mask file (bad magic number); {fix}")
    if version != MASK_VERSION:
        raise StoreError(f"mask file {path} has format version {version}; this masklab reads version "
                         f"{MASK_VERSION}: upgrade masklab")
    if words != n_words or (mask_id is not None and stored_id != mask_id):
        raise StoreError(f"mask file {path} holds mask {stored_id} of {words} words, expected mask {mask_id} "
                         f"of {n_words}; {fix}")
    payload = memoryview(data)[HEADER_SIZE:]
    actual = digest(payload)
    if actual != stored or (expect_checksum is not None and actual.hex() != expect_checksum):
        raise StoreError(f"mask file {path} fails its checksum (corrupt); {fix}")
    return np.frombuffer(data, dtype="<u8", offset=HEADER_SIZE).astype(np.uint64, copy=False)


# ---- names and paths ------------------------------------------------------------------------------------
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_run_id(text: str) -> str:
    if not RUN_ID_RE.fullmatch(text) or ".." in text:
        raise StoreError(f"{text!r} is not a run id (letters, digits, '.', '_', '+', '-'; no slashes); "
                         "pass a run id from `masklab runs` or the path of a run directory")
    return text


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


def stem(mask_id: int) -> str:
    """File stem of mask `mask_id`: six digits (more when needed)."""
    if not isinstance(mask_id, (int, np.integer)) or isinstance(mask_id, bool) or mask_id < 0:
        raise StoreError(f"mask id {mask_id!r} is invalid: mask ids are integers >= 0")
    return f"{int(mask_id):06d}"
