"""The results catalog: one SQLite database under the runs folder that indexes every run (its resolved settings,
its accuracies) and every analysis of it (its settings and key numbers), for `masklab results` and
`masklab.results()`.

The run directories stay the source of truth: the catalog is an index made from them. Every `results()` call
compares each run directory with what the catalog was made from (a fingerprint of modification times and sizes:
run.json, config.toml, masks/, analysis/ and each analysis folder) and re-reads the runs that changed, adds new
ones and drops the ones that are gone; a missing or damaged catalog file is simply rebuilt. `generate`,
`import` and `analyze` update their run's rows as they finish, so that `results()` usually finds nothing to do;
if such an update cannot get the database (locked for longer than the busy timeout, a read-only folder) it is
skipped, and the next `results()` catches up from the directories.

Schema (version 1), file ``<runs folder>/catalog.sqlite``:

- ``runs``: one row per run directory: run_id (key), path, created, config_hash, n_masks (finished), complete
  (0/1), test_acc_mean, test_acc_sd, test_acc_min, test_acc_max, best_test_acc_mean, test_loss_mean (over the
  finished masks; accuracies as fractions), problem (why a damaged run could not be read, else NULL), and one
  column per field of the run config with the value the run uses (`RunConfig.resolved_config`: lr, weight_init,
  scale_fan, recycle_rate and recycle_every resolved from the method's defaults; booleans as 0/1). Columns
  for config fields added in later versions are added when first seen. Also fingerprint and indexed (when the
  row was made), for the catalog itself.
- ``analyses``: one row per analysis of a run (``analysis/<settings id>/``): run_id, settings_id, path, created,
  n_masks (masks analysed), settings (JSON: the settings that differ from the defaults), resolved (JSON: all).
- ``key_numbers``: run_id, settings_id, name, value, unit, chance, sd_from_chance, n, text: the key numbers of
  each analysis (`Report.key_numbers`), value NULL where a key number is only words.

Any SQL client reads it, e.g. ``sqlite3 runs/catalog.sqlite "SELECT run_id, lr, test_acc_mean FROM runs WHERE
sparsity >= 0.8"`` or ``masklab results --sql "..."``.

Why SQLite in WAL mode: it is in Python's standard library (nothing to install), a single file any language
reads, and it lets several processes use one database safely: readers never block the writer and see a
consistent snapshot, writers take turns (each update is one ``BEGIN IMMEDIATE`` transaction, and a writer that
finds the database locked waits up to `BUSY_SECONDS` instead of failing), and a process killed mid-write leaves
the last committed state. DuckDB, the other candidate, lets only one process open a database for writing at a
time (even readers are locked out while it is open), which shards and sweeps writing at once would trip over.
WAL needs shared memory between the processes, which network filesystems (NFS, Lustre, GPFS, ...) do not give
across machines: there (read from /proc/mounts) the catalog uses SQLite's rollback journal with file locks
instead, and jobs on other machines never write the catalog (they write run directories; `results()` indexes
them).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.config import RunConfig
from masklab.errors import StoreError, UserError
from masklab.store.files import stamp
from masklab.store.run import Run

CATALOG = "catalog.sqlite"
SCHEMA_VERSION = 1
BUSY_SECONDS = 60.0
SETTINGS_FILE = "settings.json"       # analysis/<settings id>/settings.json, written by `analyze`
KEY_NUMBERS_FILE = "key_numbers.json"  # analysis/<settings id>/key_numbers.json, written by `analyze`
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.sshfs", "9p", "panfs", "pvfs2", "orangefs", "afs")

RUN_COLUMNS = [("run_id", "TEXT PRIMARY KEY"), ("path", "TEXT"), ("created", "TEXT"), ("config_hash", "TEXT"),
               ("n_masks", "INTEGER"), ("complete", "INTEGER"), ("test_acc_mean", "REAL"), ("test_acc_sd", "REAL"),
               ("test_acc_min", "REAL"), ("test_acc_max", "REAL"), ("best_test_acc_mean", "REAL"),
               ("test_loss_mean", "REAL"), ("problem", "TEXT"), ("fingerprint", "TEXT"), ("indexed", "TEXT")]
INTERNAL = ("fingerprint", "indexed")
ANALYSIS_COLUMNS = ["run_id", "settings_id", "path", "created", "n_masks", "settings", "resolved"]
KEY_COLUMNS = ["run_id", "settings_id", "name", "value", "unit", "chance", "sd_from_chance", "n", "text"]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs ({", ".join(f'"{name}" {kind}' for name, kind in RUN_COLUMNS)});
CREATE TABLE IF NOT EXISTS analyses (run_id TEXT NOT NULL, settings_id TEXT NOT NULL, path TEXT, created TEXT,
    n_masks INTEGER, settings TEXT, resolved TEXT, PRIMARY KEY (run_id, settings_id));
CREATE TABLE IF NOT EXISTS key_numbers (run_id TEXT NOT NULL, settings_id TEXT NOT NULL, name TEXT NOT NULL,
    value REAL, unit TEXT, chance REAL, sd_from_chance REAL, n INTEGER, text TEXT,
    PRIMARY KEY (run_id, settings_id, name));
"""


@dataclass
class RunEntry:
    """What the catalog holds about one run directory: its row in `runs`, its analyses and their key numbers."""

    run: dict
    analyses: list[dict] = field(default_factory=list)
    key_numbers: list[dict] = field(default_factory=list)


# ---- the database -----------------------------------------------------------------------------------------
def catalog_path(runs_dir: str | os.PathLike) -> Path:
    return Path(runs_dir) / CATALOG


def _filesystem(path: Path) -> str:
    """The filesystem type of the mount holding `path` (from /proc/mounts; "" where unknown)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return ""
    real = os.path.realpath(path)
    best, kind = "", ""
    for fields in mounts:
        if len(fields) >= 3:
            point = fields[1].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def journal_mode(runs_dir: str | os.PathLike) -> str:
    """"wal", or "delete" (the rollback journal) on a network filesystem, where WAL is unsafe across machines."""
    kind = _filesystem(Path(runs_dir))
    return "delete" if kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.") and kind != "fuse" else "wal"


def connect(runs_dir: str | os.PathLike, *, busy_seconds: float = BUSY_SECONDS) -> sqlite3.Connection:
    """An open connection to the catalog of `runs_dir` (created with its schema when missing), in autocommit
    mode: callers group their writes with `transaction`. A file that is not a readable catalog is replaced."""
    runs = Path(runs_dir)
    path = catalog_path(runs)
    W.make_dirs(runs, root=runs)
    W.check_no_links(path, runs)
    for attempt in range(2):
        try:
            conn = sqlite3.connect(path, timeout=busy_seconds, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
            conn.execute(f"PRAGMA journal_mode = {journal_mode(runs).upper()}")
            conn.execute("PRAGMA synchronous = NORMAL")
            with transaction(conn):
                for statement in _SCHEMA.split(";"):  # (not executescript: it would commit at once)
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            if int(version) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}")
            return conn
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing what could not be opened
                pass
            if attempt:
                raise StoreError(f"{path} is not a usable results catalog ({e}); remove it, and `masklab "
                                 "results` rebuilds it from the run directories") from None
            for suffix in ("", "-wal", "-shm", "-journal"):  # a damaged index: rebuilt from the run directories
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    raise AssertionError("unreachable")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (BEGIN IMMEDIATE: a second writer waits for the busy timeout
    instead of failing half-way), committed at the end or rolled back on an exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _sql_value(value):
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ensure_columns(conn: sqlite3.Connection, names: list[str]) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for name in names:
        if name not in have:
            conn.execute(f'ALTER TABLE runs ADD COLUMN "{name}"')


def store_entry(conn: sqlite3.Connection, entry: RunEntry) -> None:
    """Replace everything the catalog holds about `entry`'s run with `entry`, in one transaction."""
    run = {k: _sql_value(v) for k, v in entry.run.items()}
    run_id = run["run_id"]
    with transaction(conn):
        _ensure_columns(conn, list(run))
        for table in ("runs", "analyses", "key_numbers"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        names = list(run)
        columns = ", ".join(f'"{n}"' for n in names)
        conn.execute(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' for _ in names)})",
                     [run[n] for n in names])
        conn.executemany(f"INSERT OR REPLACE INTO analyses VALUES ({', '.join('?' for _ in ANALYSIS_COLUMNS)})",
                         [[_sql_value(a.get(c)) for c in ANALYSIS_COLUMNS] for a in entry.analyses])
        conn.executemany(f"INSERT OR REPLACE INTO key_numbers VALUES ({', '.join('?' for _ in KEY_COLUMNS)})",
                         [[_sql_value(k.get(c)) for c in KEY_COLUMNS] for k in entry.key_numbers])


# ---- reading a run directory ------------------------------------------------------------------------------
def fingerprint(run_dir: Path) -> str:
    """What a run's catalog rows were made from: modification times and sizes of run.json, config.toml, masks/,
    analysis/ and each analysis folder and its files that the catalog reads. Taken before reading the run, so
    that a change during the read shows next time."""
    parts = [stamp(run_dir / name) for name in ("run.json", "config.toml", "masks", "analysis")]
    analysis = run_dir / "analysis"
    if analysis.is_dir():
        for sub in sorted(p for p in analysis.iterdir() if p.is_dir()):
            parts += [sub.name, stamp(sub / SETTINGS_FILE), stamp(sub / KEY_NUMBERS_FILE)]
    return "|".join(parts)


def read_entry(run_dir: str | os.PathLike, run: Run | None = None) -> RunEntry:
    """The catalog's rows for one run directory, read from the directory (a damaged run gets a row that says
    why, under its directory name). `run`: the same directory already open (e.g. by `analyze`), used when
    nothing it read has changed since (`Run.unchanged`); reading 10,000 records again took seconds."""
    run_dir = Path(os.path.abspath(run_dir))
    now = fingerprint(run_dir)
    indexed = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if run is None or Path(os.path.abspath(run.path)) != run_dir or not run.unchanged():
        try:
            run = Run(run_dir, check="structure")
        except UserError as e:
            return RunEntry({"run_id": run_dir.name, "path": str(run_dir), "problem": str(e), "fingerprint": now,
                             "indexed": indexed})
    records = list(run.records.values())

    def stat(key: str, how) -> float | None:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        return float(how(values)) if values else None

    row = {"run_id": run.id, "path": str(run_dir), "created": run.meta.get("created"), "config_hash": run.hash,
           "n_masks": len(records), "complete": run.complete, "test_acc_mean": stat("test_acc", np.mean),
           "test_acc_sd": stat("test_acc", lambda v: np.std(v, ddof=1) if len(v) > 1 else np.nan),
           "test_acc_min": stat("test_acc", np.min), "test_acc_max": stat("test_acc", np.max),
           "best_test_acc_mean": stat("best_test_acc", np.mean), "test_loss_mean": stat("test_loss", np.mean),
           "problem": None, "fingerprint": now, "indexed": indexed}
    fixed = {name for name, _ in RUN_COLUMNS}
    for key, value in resolved_config(run.config).items():
        row[key if key not in fixed else f"config_{key}"] = value
    entry = RunEntry(row)
    analysis = run_dir / "analysis"
    for sub in sorted(p for p in analysis.iterdir() if p.is_dir()) if analysis.is_dir() else []:
        try:
            settings = json.loads((sub / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            continue  # not an analysis folder (or one being written): its key numbers come with its settings
        sid = str(settings.get("settings_id", sub.name))
        entry.analyses.append({"run_id": run.id, "settings_id": sid, "path": str(sub),
                               "created": settings.get("created"), "n_masks": settings.get("n_masks"),
                               "settings": json.dumps(settings.get("settings", {}), sort_keys=True),
                               "resolved": json.dumps(settings.get("resolved", {}), sort_keys=True)})
        try:
            numbers = json.loads((sub / KEY_NUMBERS_FILE).read_text())
        except (OSError, ValueError):
            numbers = []
        for number in numbers if isinstance(numbers, list) else []:
            if isinstance(number, dict) and number.get("name"):
                entry.key_numbers.append({"run_id": run.id, "settings_id": sid,
                                          **{c: number.get(c) for c in KEY_COLUMNS[2:]}})
    return entry


def resolved_config(config: RunConfig) -> dict:
    """The run's settings as the catalog stores them: every config field, method defaults resolved."""
    return config.resolved_config()


def run_directories(runs_dir: str | os.PathLike) -> list[Path]:
    runs = Path(runs_dir)
    if not runs.is_dir():
        return []
    return sorted(Path(os.path.abspath(p)) for p in runs.iterdir()
                  if not p.name.startswith(".") and (p / "run.json").is_file())


# ---- keeping it current -----------------------------------------------------------------------------------
def update_run(run_dir: str | os.PathLike, runs_dir: str | os.PathLike | None = None, run: Run | None = None) -> bool:
    """Index one run directory now (after `generate`, `import` or `analyze` wrote it). Best effort: returns False
    when the catalog could not be written (locked past the busy timeout, read-only), which `results()` makes up
    for from the directories."""
    run_dir = Path(run_dir)
    try:
        conn = connect(runs_dir if runs_dir is not None else run_dir.parent)
    except (sqlite3.Error, StoreError, OSError):
        return False
    try:
        store_entry(conn, read_entry(run_dir, run))
        return True
    except (sqlite3.Error, OSError):
        return False
    finally:
        conn.close()


def sync(conn: sqlite3.Connection, runs_dir: str | os.PathLike) -> int:
    """Bring the catalog up to date with the run directories: re-read the runs whose fingerprint changed, add
    new ones, drop those gone. Returns how many runs were (re-)read."""
    known = {row[0]: (row[1], row[2]) for row in conn.execute("SELECT run_id, path, fingerprint FROM runs")}
    by_path = {path: (run_id, printed) for run_id, (path, printed) in known.items()}
    seen: set[str] = set()
    count = 0
    for run_dir in run_directories(runs_dir):
        run_id, printed = by_path.get(str(run_dir), (None, None))
        if run_id is not None and printed == fingerprint(run_dir):
            seen.add(run_id)
            continue
        entry = read_entry(run_dir)
        store_entry(conn, entry)
        seen.add(entry.run["run_id"])
        count += 1
    gone = [run_id for run_id in known if run_id not in seen]
    if gone:
        with transaction(conn):
            for table in ("runs", "analyses", "key_numbers"):
                conn.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(r,) for r in gone])
    return count


def results(runs_dir: str | os.PathLike = "runs", *, sql: str | None = None) -> pd.DataFrame:
    """Every run under `runs_dir` with every analysis of it, from the catalog (brought up to date first).

    One row per run and analysis settings (one row with empty analysis columns for a run never analysed):
    the run's columns (see the module docstring: run_id, path, created, n_masks, complete, the accuracy
    summary, problem, then one column per resolved config field), then settings_id, analysis_created,
    analysis_settings (JSON of the non-default settings), analysis_masks, then one column per key number
    name holding its value (in its unit, as the analysis's key_numbers table gives it).

    With `sql`, the result of that query on the catalog instead (after the update), e.g.
    ``results("runs", sql="SELECT run_id, lr FROM runs")``.
    """
    runs = Path(runs_dir)
    try:
        conn = connect(runs)
    except (sqlite3.OperationalError, OSError) as e:  # a read-only folder: an index in memory this once
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            raise UserError(f"the results catalog {catalog_path(runs)} stayed locked for {BUSY_SECONDS:.0f} s; "
                            "try again when the other masklab process is done") from None
        conn = sqlite3.connect(":memory:", isolation_level=None)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
    try:
        sync(conn, runs)
        if sql is not None:
            try:
                return pd.read_sql_query(sql, conn)
            except (sqlite3.Error, pd.errors.DatabaseError) as e:
                raise UserError(f"the SQL query failed: {e}; the tables are runs, analyses and key_numbers "
                                "(docs/catalog.md)") from None
        return _results_table(conn)
    finally:
        conn.close()


def _results_table(conn: sqlite3.Connection) -> pd.DataFrame:
    runs = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", conn).drop(columns=list(INTERNAL))
    analyses = pd.read_sql_query("SELECT run_id, settings_id, created AS analysis_created, settings AS "
                                 "analysis_settings, n_masks AS analysis_masks FROM analyses "
                                 "ORDER BY run_id, settings_id", conn)
    numbers = pd.read_sql_query("SELECT run_id, settings_id, name, value FROM key_numbers WHERE value IS NOT NULL",
                                conn)
    table = runs.merge(analyses, on="run_id", how="left")
    if len(numbers):
        wide = numbers.pivot_table(index=["run_id", "settings_id"], columns="name", values="value",
                                   aggfunc="first", sort=False).reset_index()
        wide.columns.name = None
        clash = [c for c in wide.columns[2:] if c in table.columns]
        wide = wide.rename(columns={c: f"{c} (key number)" for c in clash})
        table = table.merge(wide, on=["run_id", "settings_id"], how="left")
    return table.reset_index(drop=True)


__all__ = ["CATALOG", "KEY_NUMBERS_FILE", "SETTINGS_FILE", "RunEntry", "catalog_path", "connect", "journal_mode",
           "read_entry", "results", "store_entry", "sync", "transaction", "update_run"]
