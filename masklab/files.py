"""Every file masklab writes goes through this module (a test greps the package for any other write).

One rule for all of them, the run's files, tables, figures, pages, exports and `--out` files alike:

- **whole or not at all**: the bytes go to a hidden temporary file in the destination folder
  (`.<name>.tmp-<pid>-<random>`, created with O_EXCL | O_NOFOLLOW), which is fsynced and then renamed over
  the target; the folder is fsynced after the rename. A killed writer leaves at most a temporary file,
  which readers ignore and `remove_tmp_files` removes. A failed write (disk full, read-only, ...) is a
  WriteError naming the target; the temporary file is removed and the target keeps its old contents
  (never a 0-byte file);
- **never through a symbolic link**: the target, and every folder between the write's `root` and it, is
  lstat'ed first; a link is refused, naming it (`check_no_links`). `root` is the folder the caller answers
  for: a run directory for the store, the folder named by the user (`--out`'s folder, `--figures`) for an
  output. That folder itself may be a link (the user's choice, e.g. a scratch disk);
- **never inside a run**, except through the store (`in_run=True`) or into a run's `analysis/` folder
  (its derived tables; links are then checked from the run directory down). A run directory is found by
  its files (`run.json`, or `config.toml` beside a `masks/` folder), walking up from the target both as
  written and as resolved through links (`check_output`).

Own code rather than a library (atomicwrites is unmaintained; tempfile.NamedTemporaryFile follows links
and cannot refuse them): the O_NOFOLLOW / lstat rules above are the point.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from masklab.errors import StoreError, UserError, WriteError, write_error

TMP_MARK = ".tmp-"
RUN_MARKERS = ("run.json",)  # a folder holding one of these is a run directory
ANALYSIS = "analysis"  # the one folder of a run that outputs may be written into


# ---- where a write may go --------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run directory, by its files: `run.json`, or `config.toml` beside a `masks/`
    folder (a run whose run.json is missing or damaged is still a run)."""
    path = Path(path)
    if any(os.path.lexists(path / name) for name in RUN_MARKERS):
        return True
    return os.path.lexists(path / "config.toml") and os.path.isdir(path / "masks")


def run_containing(path: str | os.PathLike) -> Path | None:
    """The run directory that `path` lies in (walking up from it, as written and as resolved through
    links), or None."""
    written = Path(os.path.abspath(path))
    resolved = Path(os.path.realpath(written.parent)) / written.name
    for start in (written, resolved):
        for folder in start.parents:
            if is_run_dir(folder):
                return folder
    return None


def check_output(path: str | os.PathLike) -> Path | None:
    """Refuse to write `path` inside a run directory, except inside that run's `analysis/` folder: returns
    that run (the caller then checks links from it), or None when `path` is in no run."""
    path = Path(path)
    run = run_containing(path)
    if run is None:
        return None
    for candidate in (Path(os.path.abspath(path)), Path(os.path.realpath(Path(os.path.abspath(path)).parent))
                      / path.name):
        try:
            rel = candidate.relative_to(run)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] == ANALYSIS:
            return run
    raise StoreError(f"refusing to write {path}: it is inside the run directory {run}, whose files only masklab's "
                     f"own commands write; choose an output path outside the run (or under {run / ANALYSIS})")


def check_no_links(path: Path, root: Path | None = None) -> None:
    """Refuse to write `path` if it, or any directory between `root` and it, is a symbolic link (or a
    directory on the way is not a directory). Nothing is followed: each component is lstat'ed. `root`
    itself (a run directory, the figures folder: the user's choice) may be a link; it defaults to the
    parent of `path`, so that only `path` itself is checked. Missing components are fine (to be created)."""
    path = Path(os.path.abspath(path))  # (abspath follows no link: a relative path and an absolute root compare)
    root = path.parent if root is None else Path(os.path.abspath(root))
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


def check_target(path: str | os.PathLike, root: str | os.PathLike | None = None, *, in_run: bool = False) -> None:
    """The checks every write of `path` makes first (commands call it before long work, so that a refused
    output costs nothing): outside runs unless `in_run` (or in a run's analysis/ folder, links then checked
    from the run down), no link from `root` (default: the parent of `path`) down."""
    path = Path(path)
    root = None if root is None else Path(root)
    if not in_run:
        run = check_output(path)
        if run is not None:
            check_no_links(path, run)
    check_no_links(path, root)


def make_dirs(path: str | os.PathLike, root: str | os.PathLike | None = None, *, in_run: bool = False) -> Path:
    """Create directory `path` and its parents below `root` without following links (`root` itself is
    created as usual when missing, links allowed); a link or a file on the way is refused, naming it.
    `root` defaults to the parent of `path`. Outside runs unless `in_run` (see the module docstring).
    Returns `path`."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    if not in_run:  # before anything is created
        run = check_output(path)
        if run is not None:
            check_no_links(path, run)
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


# ---- writing ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def writing(path: str | os.PathLike, *, root: str | os.PathLike | None = None, in_run: bool = False,
            durable: bool = True, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """A binary file object to write `path` through, whole or not at all: a new temporary file in the
    same folder (O_EXCL, O_NOFOLLOW, read-write so that it can be memory-mapped), fsynced (unless
    `durable=False`: outputs that can be made again) and renamed over `path` when the block ends without
    an exception; removed otherwise. Links are refused from `root` (default: the parent of `path`) down,
    and `path` must lie outside every run unless `in_run` (the store writing its own run at `root`). An
    OSError (disk full, read-only, ...) becomes a WriteError naming `path`.

    >>> with writing("out/table.csv") as f:   # doctest: +SKIP
    ...     frame.to_csv(f, index=False)
    """
    path = Path(path)
    check_target(path, root, in_run=in_run)
    tmp = tmp_path(path)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)


def _write_all(fd: int, data: bytes | memoryview | list) -> None:
    for part in data if isinstance(data, list) else [data]:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view):]


def atomic_write(path: str | os.PathLike, data: bytes | memoryview | list, sync_dir: bool = True, *,
                 root: str | os.PathLike | None = None, durable: bool = True, in_run: bool = False) -> None:
    """Write `data` (bytes, or a list of buffers written one after the other) to `path` whole or not at
    all (see `writing`: temporary file beside it, fsync, rename, links refused, outside runs unless
    `in_run`)."""
    with writing(path, root=root, in_run=in_run, durable=durable, sync_dir=sync_dir) as f:
        _write_all(f.fileno(), data)


def atomic_write_text(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None,
                      durable: bool = True, in_run: bool = False) -> None:
    atomic_write(path, text.encode("utf-8"), root=root, durable=durable, in_run=in_run)


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


def atomic_write_json(path: str | os.PathLike, value: dict, *, root: str | os.PathLike | None = None,
                      in_run: bool = False) -> None:
    atomic_write_text(path, json_text(value), root=root, in_run=in_run)


def write_table(path: str | os.PathLike, table, *, root: str | os.PathLike | None = None) -> None:
    """A DataFrame to `path` as Parquet (`.parquet`) or CSV (anything else, no index), streamed into the
    temporary file (no second copy in memory). Not durable: a table can be computed again."""
    path = Path(path)
    with writing(path, root=root, durable=False) as f:
        if path.suffix == ".parquet":
            table.to_parquet(f, index=False)
        else:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
            table.to_csv(text, index=False)
            text.detach()


TABLE_SUFFIXES = (".csv", ".parquet")


def write_frame(path: str | os.PathLike, table, *, root: str | os.PathLike | None = None) -> Path:
    """Write the DataFrame `table` to `path` (a user's `--out`) as CSV or Parquet by the suffix
    (`TABLE_SUFFIXES`; any other is a UserError), missing folders made below `root`; see `write_table`.
    Returns `path`.

    Examples
    --------
    >>> write_frame(Path("curve.csv"), curve)  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise UserError(f"{path}: a table file ends in .csv or .parquet, not {path.suffix or 'nothing'}")
    make_dirs(path.parent, root=root)
    write_table(path, table, root=root)
    return path


@contextlib.contextmanager
def atomic_npy(path: str | os.PathLike, dtype, shape: tuple[int, ...], *, root: str | os.PathLike | None = None,
               durable: bool = False, in_run: bool = False) -> Iterator[np.ndarray]:
    """A new .npy file of `dtype` and `shape`, filled through a writable memory map (zero-filled) and put in
    place whole when the block ends (see `writing`; on an exception the temporary file is removed): for
    arrays too large to build as bytes first (N x N pair matrices), only the pages being written are
    resident. The header goes through the descriptor opened with O_EXCL | O_NOFOLLOW, never by reopening a
    name. The file's space is reserved first (posix_fallocate), so a full disk is a WriteError here, never
    a SIGBUS while the map is filled."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with writing(path, root=root, in_run=in_run, durable=durable) as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.flush()
        offset = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            yield np.zeros(shape, dtype=dtype)
            return
        try:
            os.posix_fallocate(f.fileno(), 0, offset + nbytes)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
                raise
            os.ftruncate(f.fileno(), offset + nbytes)
        mapped = np.memmap(f, dtype=dtype, mode="r+", offset=offset, shape=tuple(shape))
        try:
            yield mapped
            mapped.flush()
        finally:
            mm = getattr(mapped, "_mmap", None)
            del mapped
            if mm is not None:
                with contextlib.suppress(BufferError):
                    mm.close()


def open_lock_file(path: Path, fix: str) -> int:
    """A read-write descriptor of lock file `path` (created when missing), for flock: never through a link
    (O_NOFOLLOW), never a FIFO's wait (O_NONBLOCK), and refused unless a plain file of its own (a hard link
    would let the pid written into it land in another file). `fix` says how to clear a refused lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"refusing to write {path}: it is a symbolic link, and masklab never writes "
                             f"through links; {fix}") from None
        raise write_error(path, e) from None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise write_error(path, e) from None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise StoreError(f"refusing to write {path}: it is not a plain file of its own "
                         f"({'a hard link' if stat.S_ISREG(st.st_mode) else 'a special file'}); {fix}")
    return fd


def write_in_place(fd: int, data: bytes, path: Path) -> None:
    """Replace the contents of open file `fd` (a lock file, `path`, held under flock) by `data`: the one
    write in place, for a file whose identity is the lock."""
    try:
        os.ftruncate(fd, 0)
        if data:
            os.pwrite(fd, data, 0)
    except OSError as e:
        raise write_error(path, e) from None


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes of a .npy file of `array` (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


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
