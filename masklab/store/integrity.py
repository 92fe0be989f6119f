"""`verify(run, repair=False)`: the full check of a run a user asks for (`Run.verify()`, `masklab verify RUN
[--repair]`), and its repair. What every open checks: schema.py (the metadata) and contents.py (the words).

`verify` checks all that plus every extra file (size and checksum), the lock and the run's folders (no
links), and never raises on a finding: one row per file. `repair=True` (holding the writer lock) moves each
mask with a failing file into `quarantine/<id>-<k>/` (record first: that unregisters it; `generate --resume`
then retrains it), rewrites an edited config.toml from run.json, removes a linked `lock`, `masks.bits` or
`analysis`, and rebuilds masks.bits.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd

from masklab import files as W
from masklab.config import UNHASHED, RunConfig, read_config
from masklab.errors import StoreError, UserError, write_error
from masklab.store import cache as C
from masklab.store import files as F
from masklab.store.contents import build_cache, read_run_file
from masklab.store.lock import RunLock
from masklab.store.meta import config_toml, layout_frame
from masklab.store.paths import RECORD_RE, inside, own_file, resolve_run, stem
from masklab.store.schema import (
    check_architecture,
    check_config,
    check_layout,
    check_meta,
    check_record,
    is_sealed,
)

LINKABLE = {"lock": "remove", "masks.bits": "remove", "analysis": "remove", "masks": None, "extras": None,
            "snapshots": None, "checkpoints": None, "quarantine": None, "run.json": None, "config.toml": None,
            "weights.npy": None}


def verify(run, repair: bool = False, runs_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Check every file of a run (a Run, a path or a run id): run.json, config.toml, each record, mask file
    and extra (size and checksum), masks.bits (every row), and that the lock and the run's folders are
    not links. Never raises on what it finds (only on a path that is no run, or a write that repair cannot
    make, e.g. a read-only run: a WriteError). Returns one row per file checked: `path` (relative to the
    run), `kind`, `mask_id`, `status` (ok, stale: a cache to rebuild, problem, repaired), `detail` (what is
    wrong) and `action` (what repair did).

    `repair=True` holds the writer lock and: moves each mask with a failing record, mask file or extra
    to `quarantine/<id>-<k>/` (so that `generate --resume` retrains it), rewrites an edited config.toml from
    run.json, removes a `lock`, `masks.bits` or `analysis` that is a link, and rebuilds masks.bits."""
    path = resolve_run(getattr(run, "path", run), runs_dir)  # a Run, a path or a run id
    rows: list[dict] = []

    def add(rel: str, kind: str, status: str, detail: str = "", mask_id: int | None = None) -> dict:
        row = {"path": rel, "kind": kind, "mask_id": mask_id, "status": status, "detail": detail, "action": ""}
        rows.append(row)
        return row

    links = _check_links(path, add)
    lock = None
    try:
        if repair:
            if "lock" in links:
                _unlink(path / "lock")  # the link only: its target is never touched
                _done(links.pop("lock"), "removed it")
            lock = RunLock(path / "lock").acquire()
            for name, row in links.items():
                if LINKABLE[name] == "remove":
                    _unlink(path / name)
                    _done(row, "removed the link")
        meta = _verify_meta(path, add, repair)
        if meta is not None:
            _verify_masks(path, meta, add, repair)
    finally:
        if lock is not None:
            lock.release()
    table = pd.DataFrame(rows, columns=["path", "kind", "mask_id", "status", "detail", "action"])
    table["mask_id"] = table["mask_id"].astype("Int64")
    return table


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError as e:
        raise write_error(path, e) from None


def _done(row: dict, action: str) -> None:
    row["status"], row["action"] = "repaired", action


def _check_links(path: Path, add) -> dict[str, dict]:
    """Rows for the run's fixed names that are links (or a lock that is not a plain file of its own)."""
    found = {}
    for name, fix in LINKABLE.items():
        try:
            st = os.lstat(path / name)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            how = "repair removes the link" if fix else "replace the link with a real " + \
                ("file" if "." in name else "directory") + " (a copy of what it points to)"
            found[name] = add(name, "link", "problem", f"is a symbolic link; masklab never writes through "
                              f"links: {how}")
        elif name == "lock" and (not stat.S_ISREG(st.st_mode) or st.st_nlink > 1):
            found[name] = add(name, "link", "problem", "is not a plain file of its own (hard-linked or "
                              "special); repair removes it")
    return found


def _verify_meta(path: Path, add, repair: bool) -> dict | None:

    try:
        meta = F.read_json(path / "run.json")
        check_meta(path, meta)
        layers = layout_frame(meta["layers"])
    except UserError as e:
        add("run.json", "metadata", "problem", str(e))
        return None
    add("run.json", "metadata", "ok")
    for rel, info in meta.get("files", {}).items():
        try:
            read_run_file(path, rel, info)
            add(rel, "run file", "ok")
        except UserError as e:
            add(rel, "run file", "problem", str(e))
    old = None
    try:
        old = read_config(path / "config.toml")
        check_config(path, old, meta)
        check_layout(path, layers, old, meta)
        add("config.toml", "config", "ok")
    except UserError as e:
        row = add("config.toml", "config", "problem", str(e))
    else:
        try:
            check_architecture(path, layers, old, meta)
        except UserError as e:
            add("run.json", "layout", "problem", str(e))
        return meta
    restored = restored_config(path, meta, old)
    if restored is None:
        row["detail"] += "; run.json's hashed fields do not give run.json's hash, so it cannot be restored"
        return meta
    try:
        check_layout(path, layers, restored, meta)
    except UserError as e:
        add("run.json", "layout", "problem", str(e))
        return meta
    if repair:
        W.atomic_write_text(path / "config.toml", config_toml(restored), root=path, in_run=True)
        _done(row, "rewrote config.toml from run.json")
    return meta


def restored_config(path: Path, meta: dict, old: RunConfig | None) -> RunConfig | None:
    """The run's config rebuilt from run.json's hashed fields, with the fields that are not hashed (masks,
    name, device, ...) from the current config.toml where it is readable; None when that does not hash as
    run.json says."""
    unhashed = {k: v for k, v in old.to_dict().items() if k in UNHASHED} if old is not None else {}
    unhashed.update(meta.get("settings", {}))  # name, stack, device as the run was made (runs since format 2)
    try:
        config = RunConfig.from_dict({**unhashed, **meta["hashed_fields"]}, source=str(path / "run.json"))
    except UserError:
        return None
    prefix = meta["run_id"][:-9]  # the run id is <name>-<hash8>
    config = config.replace(name=None if prefix == config.default_name else prefix)
    if old is None:
        ids = [int(p.stem) for p in (path / "masks").glob("*.json") if p.stem.isdigit()]
        config = config.replace(masks=max(ids, default=config.masks - 1) + 1)
    return config if config.hash == meta["hash"] and config.run_id == meta["run_id"] else None


def _verify_masks(path: Path, meta: dict, add, repair: bool) -> None:
    layers = layout_frame(meta["layers"])
    n_words = int(meta["n_words"])
    good: dict[int, dict] = {}
    names = sorted(os.listdir(path / "masks")) if (path / "masks").is_dir() else []
    for name in names:
        m = RECORD_RE.fullmatch(name)
        if not m:
            continue
        i = int(m.group(1))
        rel = f"masks/{name}"
        bad: list[dict] = []
        record = None
        try:
            record = check_record(path / rel, F.read_json(path / rel), i, layers, sealed=is_sealed(meta))
            add(rel, "record", "ok", mask_id=i)
        except UserError as e:
            bad.append(add(rel, "record", "problem", str(e), i))
        if record is not None:
            mask_rel = f"masks/{stem(i)}.mask"
            try:
                F.read_mask(path / mask_rel, n_words, record["checksum"], mask_id=i)
                add(mask_rel, "mask", "ok", mask_id=i)
            except UserError as e:
                bad.append(add(mask_rel, "mask", "problem", str(e), i))
            for extra, info in record.get("files", {}).items():
                if extra == mask_rel:
                    continue
                try:
                    F.read_checked(inside(path, extra), info["bytes"], info["blake2b"], f"an extra of mask {i}")
                    add(extra, "extra", "ok", mask_id=i)
                except UserError as e:
                    bad.append(add(extra, "extra", "problem", str(e), i))
        if not bad and record is not None:
            good[i] = record
        elif repair:
            where = quarantine(path, i)
            for row in bad:
                _done(row, f"moved mask {i}'s files to {where}; {F.restore_hint(path)}")
    _verify_cache(path, good, n_words, add, repair)


def _verify_cache(path: Path, records: dict[int, dict], n_words: int, add, repair: bool) -> None:
    cache_path = path / "masks.bits"
    ids, sums = list(records), [r["checksum"] for r in records.values()]
    row = None
    if cache_path.is_file() and ids:
        try:
            bits = C.open_cache(cache_path, ids, sums, n_words)
            if bits is None:
                row = add("masks.bits", "cache", "stale", "built from other masks or an older format; rebuilt "
                          "when the run is next read")
            else:
                C.check_rows(cache_path, bits, ids, sums)
                add("masks.bits", "cache", "ok")
                return
        except UserError as e:
            row = add("masks.bits", "cache", "problem", str(e))
    elif ids:
        row = add("masks.bits", "cache", "stale", "missing; built when the run is next read")
    if repair and row is not None:
        cache_path.unlink(missing_ok=True)
        try:
            build_cache(path, records, n_words)
            _done(row, "rebuilt masks.bits from the mask files")
        except UserError as e:
            row["status"], row["action"] = "problem", f"rebuilding failed: {e}"


def quarantine(path: Path, mask_id: int) -> str:
    """Move mask `mask_id`'s own files (its record first: that unregisters the mask) into a new folder
    `quarantine/<id>-<k>/` under the run, keeping their relative paths. Returns that folder, relative.

    Which files are the mask's comes from its id and the store's naming (`paths.own_file`: masks/<stem>.json,
    masks/<stem>.mask, extras/<stem>.*, snapshots/<stem>.npz), never from its record: a damaged or hostile
    record naming run.json or config.toml cannot make the repair move them."""
    s = stem(mask_id)
    k = 1
    while (path / "quarantine" / f"{s}-{k}").exists():
        k += 1
    dest = f"quarantine/{s}-{k}"
    rels = [f"masks/{s}.json", f"masks/{s}.mask"]
    for folder in ("extras", "snapshots"):
        rels += [f"{folder}/{p.name}" for p in sorted((path / folder).glob(f"{s}.*"))
                 if own_file(f"{folder}/{p.name}", mask_id)]
    for rel in rels:
        source = path / rel
        if not own_file(rel, mask_id) or not os.path.lexists(source):
            continue
        try:
            W.check_no_links(source.parent, path)  # never move a file out of a linked folder (outside the run)
        except StoreError:
            continue
        target = path / dest / rel
        W.make_dirs(target.parent, root=path, in_run=True)
        try:
            os.rename(source, target)
        except OSError as e:
            raise write_error(target, e) from None
        W.fsync_dir(source.parent)
    return dest
