"""One writer per run: an exclusive `flock` on the run's `lock` file.

The operating system releases a flock when its holder exits, however it exits (SIGKILL included), so a
crashed `generate` never leaves a run locked. The holder's pid is written into the file, for the message
a refused writer prints. (flock is advisory and unreliable on some network file systems.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from masklab.errors import StoreError


class RunLock:
    """Exclusive lock on `path`; `acquire` raises StoreError at once if another process holds it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"run {self.path.parent} is being written by another process (pid {holder}); "
                             "wait for it to finish, or stop it and rerun with --resume") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
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
