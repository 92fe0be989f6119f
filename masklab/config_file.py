"""Config files: TOML in and out. A file is read safely (a regular file of at most MAX_CONFIG_BYTES, UTF-8,
valid TOML: anything else is one UserError line), its run keys flattened (a [run] table may hold them) and its
execution tables ([slurm]) kept apart; `to_toml` writes what `masklab.config.RunConfig.to_dict` gives.
`masklab.config.read_config` reads a file into a RunConfig."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from masklab.errors import UserError

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; past 1 MiB it is not one

# Tables a config file may hold beside the run's keys; they configure how a run is executed, not what it is.
TABLES = ("slurm",)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of run keys (a [run] table, if present, is flattened;
    the TABLES, such as [slurm], are left out: `load_tables` reads them)."""
    data = _load_toml_document(path)
    for name in TABLES:
        data.pop(name, None)
    return data


def load_tables(path: str | Path) -> dict[str, dict[str, Any]]:
    """The execution tables of a config file ([slurm]: the job array's resources), by name."""
    data = _load_toml_document(path)
    return {name: data[name] for name in TABLES if isinstance(data.get(name), dict)}


def _load_toml_document(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(_read_config_text(path))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass the path of a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML ({e}); fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; pass the path of a TOML file") from None
    except OSError as e:
        raise UserError(f"config file {path} cannot be read: {e.strerror or e}") from None
    if "run" in data and isinstance(data["run"], dict):
        data = {**{k: v for k, v in data.items() if k != "run"}, **data["run"]}
    for key, value in data.items():
        if isinstance(value, dict) and key not in TABLES:
            raise UserError(f"config file {path}: unexpected table [{key}]; write run keys at the top level "
                            f"(tables allowed: {', '.join(f'[{t}]' for t in TABLES)})")
    return data


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _read_config_text(path: Path) -> str:
    """The text of a config file, refusing anything but a regular file of at most MAX_CONFIG_BYTES.

    Opened non-blocking (a FIFO would otherwise wait for a writer forever) and checked with fstat on the
    open descriptor, so a device such as /dev/zero is refused instead of read without end.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise UserError(f"config file {path} is {kind}, not a regular file; pass the path of a TOML file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(MAX_CONFIG_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes: not a run config; pass the "
                        "path of a TOML file")
    return data.decode("utf-8")


def to_toml(values: dict[str, Any]) -> str:
    """TOML text of a flat dict of str / int / float / bool / list values, None values omitted (`tomli_w`).

    Examples
    --------
    >>> to_toml({"masks": 4, "sparsity": 0.9, "data_root": "/data/😀", "name": None})
    'masks = 4\nsparsity = 0.9\ndata_root = "/data/😀"\n'
    """
    return tomli_w.dumps({key: value for key, value in values.items() if value is not None})
