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

import fcntl
import os
from pathlib import Path

from masklab import files as W
from masklab.errors import StoreError


class RunLock:
    """A lock on `path`, exclusive or `shared`; `acquire` raises StoreError at once if it cannot be had."""

    def __init__(self, path: Path, shared: bool = False, what: str | None = None):
        self.path = Path(path)
        self.shared = shared
        self.what = what or f"run {self.path.parent}"
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = W.open_lock_file(self.path, f"`masklab verify {self.path.parent} --repair` removes it")
        try:
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
            W.write_in_place(fd, f"{os.getpid()}\n".encode(), self.path)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self.fd = fd
        return self

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        if not self.shared:
            try:
                W.write_in_place(self.fd, b"", self.path)
            except StoreError:
                pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
