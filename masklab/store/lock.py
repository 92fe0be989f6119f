"""Who may write a run: `flock`s on the run's `lock` file and on one file per shard.

A process writing the whole run holds `lock` exclusively. A shard (`generate --shard I/N`) holds `lock`
shared and `locks/shard-I-of-N` exclusively: shards of a run coexist, a second process of the same shard
is refused, and a whole-run writer is refused while any shard runs (and the other way round). The
operating system releases a flock when its holder exits, however it exits (SIGKILL included), so a
crashed `generate` never leaves a run locked. An exclusive holder writes its pid into the file, for the
message a refused writer prints. (flock is advisory, and unreliable on some network file systems: on a
cluster, use a filesystem with working flock, such as NFSv4 or Lustre with flock enabled.)

Own code (stdlib `fcntl.flock`, under 100 lines) rather than a locking package: `filelock` has no shared mode,
and `fasteners`' inter-process reader-writer lock takes fcntl record locks, which a process loses as soon as it
closes any descriptor of the file (its documentation warns so), e.g. when `verify` reads `lock`. This one also
refuses a `lock` that is a symbolic link (O_NOFOLLOW) and never waits (a second writer is refused at once).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from masklab.errors import StoreError, write_error


class RunLock:
    """A lock on `path`, exclusive or `shared`; `acquire` raises StoreError at once if it cannot be had."""

    def __init__(self, path: Path, shared: bool = False, what: str | None = None):
        self.path = Path(path)
        self.shared = shared
        self.what = what or f"run {self.path.parent}"
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fix = f"`masklab verify {self.path.parent} --repair` removes it"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"refusing to write {self.path}: it is a symbolic link, and masklab never writes "
                                 f"through links; {fix}") from None
            raise write_error(self.path, e) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise StoreError(f"refusing to write {self.path}: it is not a plain file of its own "
                                 f"({'a hard link' if stat.S_ISREG(st.st_mode) else 'a special file'}); {fix}")
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            by = f"another process (pid {holder})" if holder else "shard processes (generate --shard)"
            raise StoreError(f"{self.what} is being written by {by}; wait for it to finish, or stop it and "
                             "rerun with --resume") from None
        except BaseException:
            os.close(fd)
            raise
        if self.shared:  # several holders: no pid to write
            self.fd = fd
            return self
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise write_error(self.path, e) from None
        self.fd = fd
        return self

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if not self.shared:
                os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
