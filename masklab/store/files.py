"""Files of a run directory: atomic writes, checksums, the mask file format (names and paths: paths.py).

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

import contextlib
import hashlib
import io
import json
import os
import secrets
import stat
import struct
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from masklab.errors import StoreError, UserError, WriteError, write_error

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


# ---- writing without leaving the run --------------------------------------------------------------------
def check_no_links(path: Path, root: Path | None = None) -> None:
    """Refuse to write `path` if it, or any directory between `root` and it, is a symbolic link (or a
    directory on the way is not a directory). Nothing is followed: each component is lstat'ed. `root`
    itself (a run directory, the figures folder: the user's choice) may be a link; it defaults to the
    parent of `path`, so that only `path` itself is checked. Missing components are fine (to be created)."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise StoreError(f"refusing to write {path}: it is not inside {root}") from None
    current = root
    for k, part in enumerate(rel.parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return
        except OSError as e:
            raise write_error(current, e) from None
        if stat.S_ISLNK(mode):
            what = "it is" if current == path else f"{current} is"
            real = "directory" if os.path.isdir(current) else "file"
            raise StoreError(f"refusing to write {path}: {what} a symbolic link, and masklab never writes through "
                             f"links; replace the link with a real {real}")
        if k < len(rel.parts) - 1 and not stat.S_ISDIR(mode):
            raise StoreError(f"cannot write {path}: {current} is not a directory; remove or rename it")


def make_dirs(path: Path, root: Path | None = None) -> Path:
    """Create directory `path` and its parents below `root` without following links (`root` itself is
    created as usual when missing, links allowed); a link or a file on the way is refused, naming it.
    `root` defaults to the parent of `path`. Returns `path`."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise write_error(root, e) from None
    check_no_links(path, root)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current)  # never follows a link: an existing link is EEXIST, checked below
        except FileExistsError:
            pass
        except OSError as e:
            raise write_error(current, e) from None
    check_no_links(path, root)  # a link put there meanwhile, or a file in the way
    if not path.is_dir():
        raise WriteError(f"cannot write {path}: it exists and is not a directory; remove or rename it", path)
    return path


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


def _write_all(fd: int, data: bytes | memoryview | list) -> None:
    for part in data if isinstance(data, list) else [data]:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view):]


def atomic_write(path: Path, data: bytes | memoryview | list, sync_dir: bool = True, *, root: Path | None = None,
                 durable: bool = True) -> None:
    """Write `data` (bytes, or a list of buffers written one after the other) to `path` whole or not at
    all: a new temporary file beside it (O_EXCL, O_NOFOLLOW), fsync, rename over `path`, fsync the
    directory. Links are refused, never followed: `path` and every directory between `root` (default:
    its parent) and it (see `check_no_links`). `durable=False` skips the fsyncs (for outputs that can be
    made again). An OSError (disk full, read-only, ...) becomes a WriteError naming `path`; the
    temporary file is removed."""
    path = Path(path)
    check_no_links(path, root)
    tmp = tmp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_npy(path: Path, dtype, shape: tuple[int, ...], *, root: Path | None = None,
               durable: bool = False) -> Iterator[np.ndarray]:
    """A new .npy file of `dtype` and `shape`, filled through a writable memory map and put in place whole.

    Yields the memory map (zero-filled); when the block ends without an exception the data are flushed
    (and fsynced with `durable`) and the file renamed over `path`, so a reader sees the old file or the
    new one, never half of it; on an exception the temporary file is removed. The header is written
    through the file descriptor opened with O_EXCL | O_NOFOLLOW, never by reopening a name, and links
    are refused as for `atomic_write`. For arrays too large to build as bytes first (N x N pair
    matrices): only the pages being written are resident."""
    path = Path(path)
    check_no_links(path, root)
    tmp = tmp_path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    array = None
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w+b") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": shape})
            offset = f.tell()
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            f.truncate(offset + size)
            array = np.memmap(f, dtype=dtype, mode="r+", offset=offset, shape=shape) if size else \
                np.zeros(shape, dtype=dtype)
            yield array
            if isinstance(array, np.memmap):
                array.flush()
            if durable:
                os.fsync(f.fileno())
        del array
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, root: Path | None = None) -> None:
    atomic_write(path, text.encode("utf-8"), root=root)


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


def atomic_write_json(path: Path, value: dict, *, root: Path | None = None) -> None:
    atomic_write_text(path, json_text(value), root=root)


TABLE_SUFFIXES = (".csv", ".parquet")


def write_frame(path: Path, table, *, root: Path | None = None) -> Path:
    """Write the DataFrame `table` to `path` whole or not at all (`atomic_write`), as CSV or Parquet by the
    suffix (`TABLE_SUFFIXES`; any other is a UserError); missing folders are made. Returns `path`.

    Examples
    --------
    >>> write_frame(Path("curve.csv"), curve)  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise UserError(f"{path}: a table file ends in .csv or .parquet, not {path.suffix or 'nothing'}")
    if path.suffix == ".parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    else:
        data = table.to_csv(index=False).encode("utf-8")
    make_dirs(path.parent, root=root)
    atomic_write(path, data, root=root, durable=False)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


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


def remove_tmp_files(root: Path) -> int:
    """Delete temporary files left by killed writers under `root`: those whose writer's pid (in the name)
    is no longer running, so that shards writing the same run at once keep each other's files."""
    count = 0
    for path in root.rglob(f".*{TMP_MARK}*"):
        pid = path.name.rsplit(TMP_MARK, 1)[-1].split("-")[0]
        if path.is_file() and not (pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid))):
            path.unlink(missing_ok=True)
            count += 1
    return count


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


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
