"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

import difflib
import errno as _errno


class UserError(ValueError):
    """Bad input: a config value, a missing file, an unknown name. The message says what and how to fix it."""


class DataError(UserError):
    """A dataset is missing or corrupt; the message names the path searched and what was expected."""


class StoreError(UserError):
    """A run directory is unusable: wrong config, truncated or corrupt file, locked by another writer."""


class WriteError(StoreError):
    """The environment refused a write (disk full, read-only, no permission, a file where a directory
    should be). `path` is the file or directory masklab tried to write, `errno` the operating system's code."""

    def __init__(self, message: str, path=None, errno: int | None = None):
        super().__init__(message)
        self.path, self.errno = path, errno


def closest(word: str, options) -> str | None:
    """The option closest to the mistyped `word` by difflib's ratio (at least 0.6), or None."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, options) -> str:
    """' (did you mean X?)' with X the option `closest` to the mistyped `word`, or '' when none is close.
    E.g. did_you_mean('--sparsty', ['--sparsity', '--seed']) -> ' (did you mean --sparsity?)'."""
    found = closest(word, options)
    return f" (did you mean {found}?)" if found else ""


# errno -> what to do about it. Faults of the environment, not of masklab: the CLI reports them as bad input.
_REMEDIES = {
    "ENOSPC": "free space on that file system, then rerun (a `masklab generate` keeps its finished masks: "
              "rerun it with --resume)",
    "EDQUOT": "free space within your disk quota, then rerun (a `masklab generate` keeps its finished masks: "
              "rerun it with --resume)",
    "EFBIG": "the file system cannot hold a file that large; write to another one (--runs-dir / --figures)",
    "EROFS": "the file system is read-only; write to a writable directory (--runs-dir / --figures) or copy the "
             "run there",
    "EACCES": "you may not write there; make it writable (chmod / chown) or choose another directory "
              "(--runs-dir / --figures)",
    "EPERM": "you may not write there; make it writable (chmod / chown) or choose another directory "
             "(--runs-dir / --figures)",
    "ENOTDIR": "a part of that path is a file, not a directory; remove or rename it, or choose another directory",
    "EEXIST": "it exists and is not a directory; remove or rename it, or choose another directory",
    "EISDIR": "a directory is in the way; remove or rename it",
    "ELOOP": "it is a symbolic link, and masklab never writes through links; replace the link with a real "
             "file or directory",
    "EIO": "the disk reported an input/output error; check the disk, then rerun",
    "ENAMETOOLONG": "the path is too long; choose a shorter directory",
}
ENVIRONMENT_ERRNOS = frozenset(getattr(_errno, name) for name in _REMEDIES if hasattr(_errno, name))


def environment_message(err: OSError, path=None, doing: str | None = "write") -> str:
    """One line for an OSError of the environment: what was being done (`doing`: "write", "read"; None where
    no site said, e.g. the CLI's last resort), the path, what the system said, and the remedy."""
    where = path if path is not None else (err.filename or "a file")
    name = _errno.errorcode.get(err.errno or 0, "")
    what = err.strerror or str(err)
    remedy = _REMEDIES.get(name, "check the path and the file system, then rerun")
    if doing == "read" and name in ("ENOTDIR", "EISDIR", "EACCES", "EPERM", "ELOOP"):
        remedy = {"ENOTDIR": "a part of that path is a file, not a directory; restore the folder (from a copy)",
                  "EISDIR": "a directory is where a file should be; restore the file (from a copy)",
                  "ELOOP": "it is a symbolic link loop; replace the link with a real file"}.get(
                      name, "you may not read it; make it readable (chmod / chown)")
    verb = f"cannot {doing}" if doing else "cannot use"
    return f"{verb} {where}: {what}; {remedy}"


def write_error(path, err: OSError) -> WriteError:
    """A WriteError for `err`, raised while writing `path`."""
    return WriteError(environment_message(err, path), path, err.errno)
