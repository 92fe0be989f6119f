"""Files of a run directory: checksums, the mask file format, reading extras (names and paths: paths.py).
Every write, the run's included, goes through masklab/files.py: whole or not at all, never through a link.

Mask file (`masks/000003.mask`): a 64-byte header then the mask's packed words (little-endian uint64,
bit order `bits.BIT_ORDER`). Header, little-endian: magic `MLABMASK` (8 bytes), format version (u32),
header size (u32, = 64), mask id (u64), number of words (u64), BLAKE2b-256 digest of the words (32 bytes).
So a mask of W words takes 64 + 8 W bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import stat
import struct
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from masklab.errors import StoreError, environment_message

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
    with open_regular(path, "file", "restore it from a copy of the run") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- reading a run's files: regular files only, of bounded size ------------------------------------------
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def check_regular(path: str | os.PathLike, mode: int, what: str, fix: Hint) -> None:
    """Refuse `path` (of stat mode `mode`) unless it is a regular file: "<what> <path> is a FIFO, not a regular
    file; <fix>"."""
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise StoreError(f"{what} {path} is {kind}, not a regular file; {fix}")


def open_regular(path: str | os.PathLike, what: str, fix: Hint) -> BinaryIO:
    """`path` opened for reading (binary), refused unless it is a regular file: opened non-blocking (a FIFO
    would otherwise wait for a writer forever) and checked with fstat on the open descriptor (a link to
    /dev/zero is a character device, refused instead of read without end). Every file of a run is read
    through here. FileNotFoundError passes through (callers name what is missing); any other refusal is a
    StoreError "<what> <path> is a FIFO, not a regular file; <fix>"."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StoreError(environment_message(e, path, doing="read")) from None
    try:
        check_regular(path, os.fstat(fd).st_mode, what, fix)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_size(path: str | os.PathLike, what: str, fix: Hint) -> int:
    """The size of regular file `path` in bytes (lstat'ed: a link is refused like any non-regular file), for
    reading commands: any problem is a StoreError saying that `path` cannot be read, and why."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StoreError(f"{what} {path} is missing; {fix}") from None
    except OSError as e:
        raise StoreError(environment_message(e, path, doing="read")) from None
    check_regular(path, st.st_mode, what, fix)
    return st.st_size


def read_regular(path: str | os.PathLike, what: str, fix: Hint, *, limit: int | None = None,
                 exact: bool = False) -> bytes:
    """The bytes of regular file `path` (see `open_regular`). `limit`: the most it may hold, refused before
    reading (with `exact`, the size it must have: "truncated or padded"). A StoreError names the file, what it
    is (`what`) and the `fix`; FileNotFoundError passes through."""
    with open_regular(path, what, fix) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and (size != limit if exact else size > limit):
            if exact:
                raise StoreError(f"{what} {path} is truncated or padded: {size:,} bytes, expected {limit:,}; {fix}")
            raise StoreError(f"{what} {path} is {size:,} bytes, more than the {limit:,} it may hold; {fix}")
        try:
            data = f.read() if limit is None else f.read(limit + 1)
        except OSError as e:
            raise StoreError(f"{what} {path} cannot be read ({e.strerror or e}); {fix}") from None
    if limit is not None and (len(data) != limit if exact else len(data) > limit):  # it changed while read
        raise StoreError(f"{what} {path} changed size while it was read ({len(data):,} bytes); {fix}")
    return data


# ---- checksums of run.json and the records ---------------------------------------------------------------
JSON_CHECKSUM = "json_checksum"  # the field of run.json and of every record that checksums the rest of it


def stamp(path: str | os.PathLike) -> str:
    """"mtime_ns:size" of `path` ("-" when it cannot be stat'ed): what the catalog and `Run` compare to tell
    whether a file or folder changed since it was read (a file renamed into a folder changes the folder's)."""
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_mtime_ns}:{st.st_size}"


def json_checksum(value: dict) -> str:
    """Hex BLAKE2b-256 of `value` without its JSON_CHECKSUM field, as canonical JSON (keys sorted, no spaces,
    UTF-8): the same for the dict that was written and the dict read back from the file."""
    rest = {k: v for k, v in value.items() if k != JSON_CHECKSUM}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return checksum(text.encode("utf-8"))


def sealed(value: dict) -> dict:
    """`value` with its JSON_CHECKSUM field (set last): how run.json and every record are written."""
    return {**{k: v for k, v in value.items() if k != JSON_CHECKSUM}, JSON_CHECKSUM: json_checksum(value)}


def check_sealed(path: Path, value: Any, fix: Hint) -> None:
    """A run.json or record read from `path` must carry its JSON_CHECKSUM and match it: an edited value (a
    `test_acc` changed by hand) or a damaged file is refused, naming the file."""
    if not isinstance(value, dict):
        return  # (the schema names what it is)
    stored = value.get(JSON_CHECKSUM)
    if stored is None:
        raise StoreError(f"{path} has no checksum (field {JSON_CHECKSUM!r}): it was edited or damaged; {fix}")
    if stored != json_checksum(value):
        raise StoreError(f"{path} fails its checksum: it was edited or is corrupt; {fix}")


MAX_JSON_BYTES = 64 << 20  # run.json (an import of 10,000 masks names its sources: ~2 MB) or a record
MAX_JSON_DEPTH = 32  # nesting of run.json or a record (masklab writes at most 4 levels)


def read_json(path: Path) -> Any:
    """The JSON value of a run's metadata file (run.json, a record): a regular file (`open_regular`) of at most
    MAX_JSON_BYTES, nested at most MAX_JSON_DEPTH deep; anything else is a StoreError naming the file."""
    fix: Hint = "is this a masklab run directory?" if path.name == "run.json" else lazy_repair_hint(path)
    try:
        data = read_regular(path, "metadata file", fix, limit=MAX_JSON_BYTES)
    except FileNotFoundError:
        raise StoreError(f"{path} is missing: is this a masklab run directory?") from None
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise StoreError(f"{path} is corrupt (JSON nested deeper than {MAX_JSON_DEPTH} levels); {fix}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is unreadable or corrupt ({e}); {fix}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise StoreError(f"{path} is corrupt (JSON nested deeper than {MAX_JSON_DEPTH} levels); {fix}")
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            stack.extend((x, level + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


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
        data = read_regular(path, "mask file", lazy_repair_hint(path), limit=mask_file_size(n_words), exact=True)
    except FileNotFoundError:
        raise StoreError(f"mask file {path} is missing; {repair_hint(path)}") from None
    return check_mask_data(path, data, n_words, expect_checksum, mask_id)


class LazyText:
    """Text worked out only when an error message formats it: the repair hints read run.json, which every
    record and mask file read paid for before (7,168 reads of run.json to open a run of 1,024 imported masks
    and check its records: most of `analyze`'s time at that size)."""

    def __init__(self, make: Callable[[], str]):
        self.make = make

    def __str__(self) -> str:
        return self.make()

    def __format__(self, spec: str) -> str:
        return format(self.make(), spec)


Hint = str | LazyText  # the fix an error message names: text, or text worked out only when formatted


def lazy_repair_hint(path: Path) -> LazyText:
    """`repair_hint(path)`, worked out only when formatted."""
    return LazyText(lambda: repair_hint(path))


def repair_hint(path: Path) -> str:
    """How to fix a damaged file of one mask: `path` is `RUN/<folder>/<file>`."""
    run = Path(path).parent.parent
    return f"`masklab verify {run} --repair` moves that mask aside, then {restore_hint(run)}"


def restore_hint(run: Path, many: bool = False) -> str:
    """What brings back masks moved to quarantine: `generate --resume` retrains them; an imported run's masks
    come back by importing their source files again (the same files find the same run)."""
    them = "them" if many else "it"
    if _is_import(Path(run) / "run.json"):
        return f"`masklab import` of the same source files again (same options) restores {them}"
    return f"`masklab generate --resume {run}` retrains {them}"


def _is_import(run_json: Path) -> bool:
    """Whether run.json says its run is an import, read once per version of the file (its inode, size and
    mtime): the hints are worked out only for an error message (`lazy_repair_hint`), but a caller that formats
    one per mask (verify of a damaged run) would otherwise parse an imported run's run.json, which names every
    source (2,000 masks: ~0.4 MB), once per mask; before the hints were lazy every read of a record or mask
    file did, and a 2,000-mask import took 145 s instead of ~10 (quadratic)."""
    try:
        st = os.stat(run_json)
    except OSError:
        return False
    return _is_import_version(str(run_json), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _is_import_version(run_json: str, inode: int, size: int, mtime_ns: int) -> bool:
    try:
        return read_json(Path(run_json)).get("imported") is not None
    except (StoreError, AttributeError):
        return False


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
    fix = LazyText(lambda: f"{what}; {repair_hint(path)}")
    try:
        data = read_regular(path, "file", LazyText(lambda: f"its record says {size:,} bytes ({fix})"), limit=size,
                            exact=True)
    except FileNotFoundError:
        raise StoreError(f"{path} is missing ({fix})") from None
    if checksum(data) != checksum_hex:
        raise StoreError(f"{path} fails its checksum (corrupt) ({fix})")
    return data
