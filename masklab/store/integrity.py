"""Integrity of a run directory: the checks made whenever a run is opened, and `verify` (full check, repair).

On every open (`Run(path)`; `show`, `analyze`, `generate --resume` all open the run this way):
  - run.json: its fields and their types, a consistent layout (word ranges, `n_words`, `n_bits`), the run
    id ending in the hash, and per layer `n_keep` = what the config's keep rule keeps (masklab's
    `n - int(sparsity * n)`; for imported runs also the reference rule or the imported counts, see
    `check_imported`); an imported run's `imported` section hashes to the config's `imported` digest, and
    its run-level files (`files`: the shared weights) exist with their recorded sizes (their checksums are
    checked when they are read, and by `verify`);
  - config.toml: its canonical hash equals run.json's (an edited hashed field is named; `masks` is not
    hashed and may be raised to extend a run);
  - every record (`masks/000003.json`): the required fields, each of the right type, and `n_keep` = the layout;
  - masks.bits, when current: its header, ids and row checksums (cache.py), and then
  - every mask file: its size and header (its digest = the record's checksum), and its words compared
    byte for byte with its row of masks.bits (where they differ, the file is hashed to tell which copy is
    corrupt); without a current masks.bits every mask file is hashed against its record.
  Linear in the run's size but at memory speed: about 0.1 s for 1,000 masks of Conv-4 size (303 MB; 0.9 s
  when masks.bits must be rebuilt and every file is hashed), see bench/bench_open_check.py.
  `Run(path, check="structure")` (used by `masklab runs`) skips the words until `masks` is first read.
`verify(run, repair=False)` checks all of it plus every extra file (size and checksum), the lock and the
run's folders (no links), and never raises on a finding: one row per file. `repair=True` (holding the
writer lock) moves each mask with a failing file into `quarantine/<id>-<k>/` (record first: that
unregisters it; `generate --resume` then retrains it), rewrites an edited config.toml from run.json,
removes a linked `lock`, `masks.bits` or `analysis`, and rebuilds masks.bits.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masklab.config import UNHASHED, RunConfig, n_keep, read_config
from masklab.errors import StoreError, UserError, write_error
from masklab.interop.rules import reference_keep_count
from masklab.store import cache as C
from masklab.store import files as F
from masklab.store.bits import BIT_ORDER
from masklab.store.meta import layout_frame, read_json

HEX64 = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 64 << 20  # mask files read and hashed this much at a time


# ---- field checks ---------------------------------------------------------------------------------------
def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_or_null(v: Any) -> bool:
    return v is None or _number(v)


def _hex(v: Any) -> bool:
    return isinstance(v, str) and HEX64.fullmatch(v) is not None


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(_int(x) for x in v)


def _numbers_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(_number(x) for x in v))


def _paths(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _files(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, dict) and _int(x.get("bytes"))
                                       and _hex(x.get("blake2b")) for k, x in v.items())


def _str(v: Any) -> bool:
    return isinstance(v, str)


# field -> (what it must be, test, required). Fields not listed are kept as they are.
RECORD_FIELDS: dict[str, tuple[str, Any, bool]] = {
    "mask_id": ("an integer", _int, True),
    "weight_seed": ("an integer", _int, True),
    "score_seed": ("an integer", _int, True),
    "data_seed": ("an integer", _int, True),
    "checksum": ("a 64-digit hex string", _hex, True),
    "n_keep": ("a list of integers", _ints, True),
    "test_acc": ("a number or null", _number_or_null, True),
    "best_test_acc": ("a number or null", _number_or_null, True),
    "test_loss": ("a number or null", _number_or_null, True),
    "seconds": ("a number or null", _number_or_null, True),
    "train_acc": ("a number or null", _number_or_null, False),
    "train_loss": ("a number or null", _number_or_null, False),
    "epochs": ("an integer", _int, False),
    "best_epoch": ("an integer", _int, False),
    "recycled": ("an integer", _int, False),
    "device": ("a string", _str, False),
    "finished": ("a string", _str, False),
    "alphas": ("a list of numbers or null", _numbers_or_null, False),
    "extras": ("a table of kind = path", _paths, False),
    "files": ("a table of path = {bytes, blake2b}", _files, False),
}


def check_record(path: Path, record: Any, mask_id: int, layers: pd.DataFrame) -> dict:
    """`record` (read from `path`, the record of mask `mask_id`) if it has every required field with the
    right type and fits the layout; otherwise a StoreError naming the file and the field."""
    if not isinstance(record, dict):
        raise StoreError(f"record {path} is not a JSON object; {F.repair_hint(path)}")
    for name, (what, ok, required) in RECORD_FIELDS.items():
        if name not in record:
            if required:
                raise StoreError(f"record {path} lacks the field {name!r}; {F.repair_hint(path)}")
            continue
        if not ok(record[name]):
            raise StoreError(f"record {path}: field {name!r} = {_short(record[name])} is not {what}; "
                             f"{F.repair_hint(path)}")
    if record["mask_id"] != mask_id:
        raise StoreError(f"record {path} is the record of mask {record['mask_id']}, not of mask {mask_id}; "
                         f"{F.repair_hint(path)}")
    if record["n_keep"] != [int(k) for k in layers["n_keep"]]:
        raise StoreError(f"record {path} keeps {record['n_keep']} weights per layer, the run's layout "
                         f"{list(layers['n_keep'])}; {F.repair_hint(path)}")
    for rel in [*record.get("extras", {}).values(), *record.get("files", {})]:
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise StoreError(f"record {path}: refusing path {rel!r}: paths in a run must stay inside it; "
                             f"{F.repair_hint(path)}")
    unlisted = sorted(set(record.get("extras", {}).values()) - set(record.get("files", {})))
    if unlisted:
        raise StoreError(f"record {path} names extras without their checksums ({', '.join(unlisted)}); "
                         f"{F.repair_hint(path)}")
    return record


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_meta(path: Path, meta: Any) -> None:
    """run.json of run `path`: its fields and types, a consistent layout, the run id ending in the hash."""
    where = path / "run.json"
    fix = "the run's metadata is damaged: restore run.json from a copy of the run"
    if not isinstance(meta, dict):
        raise StoreError(f"{where} is not a JSON object; {fix}")
    fields = {"run_id": ("a string", _str), "hash": ("a 64-digit hex string", _hex),
              "hashed_fields": ("a table", lambda v: isinstance(v, dict)), "layers": ("a list", _layers),
              "n_words": ("an integer", _int), "n_bits": ("an integer", _int),
              "bit_order": ("a string", _str), "dataset": ("a table", _dataset)}
    for name, (what, ok) in fields.items():
        if name not in meta:
            raise StoreError(f"{where} lacks the field {name!r}; {fix}")
        if not ok(meta[name]):
            raise StoreError(f"{where}: field {name!r} = {_short(meta[name])} is not {what}; {fix}")
    for name, (what, ok) in {"files": ("a table of path = {bytes, blake2b}", _files),
                             "imported": ("a table", lambda v: isinstance(v, dict))}.items():
        if name in meta and not ok(meta[name]):
            raise StoreError(f"{where}: field {name!r} = {_short(meta[name])} is not {what}; {fix}")
    for rel in meta.get("files", {}):
        if rel not in RUN_FILES:
            raise StoreError(f"{where}: refusing run file {rel!r}: a run holds only {', '.join(RUN_FILES)} at its "
                             f"top level; {fix}")
    if not meta["run_id"].endswith("-" + meta["hash"][:8]):
        raise StoreError(f"{where}: run id {meta['run_id']!r} does not end in its hash {meta['hash'][:8]}; {fix}")
    if meta["bit_order"] != BIT_ORDER:
        raise StoreError(f"{where} records another bit order ({meta['bit_order']!r}); this masklab reads "
                         f"{BIT_ORDER!r}")
    layers = meta["layers"]
    if not layers or meta["n_words"] != layers[-1]["word_stop"] or \
            meta["n_bits"] != sum(r["n_bits"] for r in layers):
        raise StoreError(f"{where}: n_words / n_bits do not match its layers; {fix}")


def _layers(v: Any) -> bool:
    keys = {"layer": _str, "shape": _ints, "n_bits": _int, "n_keep": _int, "word_start": _int, "word_stop": _int}
    return isinstance(v, list) and all(isinstance(r, dict) and all(k in r and ok(r[k]) for k, ok in keys.items())
                                       for r in v)


def _dataset(v: Any) -> bool:
    return isinstance(v, dict) and _ints(v.get("input_shape")) and _int(v.get("n_classes"))


def field_diff(a: dict, b: dict, a_label: str, b_label: str) -> list[str]:
    """`field: value <a_label>, value <b_label>` for each hashed field where two hashed_fields tables differ
    (a field at its default is absent from them)."""
    return [f"{k}: {a.get(k, 'default')!r} {a_label}, {b.get(k, 'default')!r} {b_label}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_config(path: Path, config: RunConfig, meta: dict) -> None:
    """config.toml of run `path` must hash as run.json says: an edited hashed field is named."""
    if config.hashed_fields() == meta["hashed_fields"] and config.hash == meta["hash"]:
        return
    diff = field_diff(config.hashed_fields(), meta["hashed_fields"], "in config.toml", "in run.json")
    if diff:
        raise StoreError(f"{path / 'config.toml'} was edited after the run was made ({'; '.join(diff)}): its masks "
                         f"were trained with run.json's config; `masklab verify {path} --repair` restores the file "
                         "from run.json (or start a new run with the new config)")
    raise StoreError(f"{path / 'run.json'}: its hash is not the hash of its config (hashed fields "
                     f"{meta['hashed_fields']}); the metadata is damaged or from an incompatible masklab version")


def expected_keep(n_bits: int, config: RunConfig) -> int | None:
    """Weights a layer of `n_bits` keeps under `config`: the rule of masklab.nn.select.n_keep (dense: all);
    for imported runs with keep_rule "reference" the reference code's `n - int((1 - keep_fraction) * n)`
    (their GetSubnet zeroes the `int((1 - k) * n)` smallest |scores|: one weight more than masklab's rule
    keeps at rates like k = 0.9); None for keep_rule "stored" (the counts are the import's)."""
    if config.method == "dense":
        return n_bits
    if config.keep_rule == "reference":
        if config.keep_fraction is None:
            return None
        return reference_keep_count(n_bits, config.keep_fraction)
    if config.keep_rule == "stored":
        return None
    return n_keep(n_bits, config.sparsity)


def keep_rule_text(config: RunConfig) -> str:
    """The config's keep rule in words (for messages)."""
    if config.keep_rule == "reference":
        return f"the reference rule n - int((1 - k) * n) at keep k = {config.keep_fraction!r}"
    if config.keep_rule == "stored":
        return "the imported masks' counts"
    return f"sparsity {config.sparsity:g} ({config.method})"


def check_layout(path: Path, layers: pd.DataFrame, config: RunConfig, meta: dict | None = None) -> None:
    """Each layer's `n_keep` in run.json is what the config's keep rule keeps. For an imported run (the
    config has an `imported` digest) `meta` (run.json) must be given: its import section is checked too
    (`check_imported`), and with keep_rule "stored" its counts are the rule."""
    imported = None
    if config.imported is not None or (meta is not None and "imported" in meta):
        if meta is None:
            raise ValueError("check_layout needs run.json's contents to check an imported run")
        imported = check_imported(path, meta, config)
    for k, r in enumerate(layers.itertuples()):
        expect = expected_keep(int(r.n_bits), config)
        if expect is None:
            expect = None if imported is None or k >= len(imported["n_keep"]) else int(imported["n_keep"][k])
        if expect is None or int(r.n_keep) != expect:
            raise StoreError(f"{path / 'run.json'}: layer {r.layer} keeps {r.n_keep} of {r.n_bits} weights, but "
                             f"{keep_rule_text(config)} keeps {expect}: run.json was edited; "
                             "restore it from a copy of the run")
    if imported is not None and len(imported["n_keep"]) != len(layers):
        raise StoreError(f"{path / 'run.json'}: its import section records {len(imported['n_keep'])} layers, its "
                         f"layout {len(layers)}: run.json was edited; restore it from a copy of the run")


# ---- imported runs (masklab import, see masklab/interop) --------------------------------------------------
# The `imported` section of run.json: field -> (what it must be, test). The fields of IMPORT_IDENTITY are what
# the import is (hashed into the config's `imported` digest, hence into the run id); the others say where it
# came from (file names as given, what the checkpoints reported) and may differ between two imports of the same
# files.
def _sources(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(x, dict) and _int(x.get("mask_id")) and _hex(x.get("sha256")) and _str(x.get("file"))
        and _int(x.get("bytes")) for x in v)


def _mapping(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _ints_or_null(v: Any) -> bool:
    return v is None or _ints(v)


IMPORT_FIELDS: dict[str, tuple[str, Any]] = {
    "format": ("a string", _str),
    "method": ("a string", _str),
    "keep_rule": ("a string", _str),
    "keep_fraction": ("a number or null", _number_or_null),
    "tie_break": ("a string", _str),
    "weights": ("'shared', 'per-mask' or 'none'", lambda v: v in ("shared", "per-mask", "none")),
    "sources": ("a non-empty list of {mask_id, file, bytes, sha256}", _sources),
    "mapping": ("a table of their key = our layer", _mapping),
    "n_keep": ("a list of integers", _ints),
    "gain_counts": ("a list of integers or null", _ints_or_null),
    "digest": ("a 64-digit hex string", _hex),
}
IMPORT_IDENTITY = ("format", "method", "keep_rule", "keep_fraction", "tie_break", "weights", "mapping", "n_keep",
                   "gain_counts")


def import_digest(section: dict) -> str:
    """The sha256 (hex) of what an import is: the sources' sha256s in order and the IMPORT_IDENTITY fields of
    run.json's `imported` section, as canonical JSON. The config's `imported` field holds it."""
    import hashlib
    import json

    identity = {k: section.get(k) for k in IMPORT_IDENTITY}
    identity["sources"] = [s["sha256"] for s in section["sources"]]
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_imported(path: Path, meta: dict, config: RunConfig) -> dict:
    """run.json's `imported` section (returned) if it has every field with the right type, hashes to the
    config's `imported` digest, names one source per mask and agrees with the config's method and keep rule;
    otherwise a StoreError naming the field."""
    where = path / "run.json"
    fix = "the run's metadata is damaged: restore run.json from a copy of the run"
    section = meta.get("imported")
    if config.imported is None:
        raise StoreError(f"{where} has an import section but config.toml is not an imported run's; {fix}")
    if not isinstance(section, dict):
        raise StoreError(f"{where} lacks the import section of an imported run; {fix}")
    for name, (what, ok) in IMPORT_FIELDS.items():
        if name not in section:
            raise StoreError(f"{where}: the import section lacks the field {name!r}; {fix}")
        if not ok(section[name]):
            raise StoreError(f"{where}: imported.{name} = {_short(section[name])} is not {what}; {fix}")
    digest = import_digest(section)
    if section["digest"] != digest or config.imported != digest:
        raise StoreError(f"{where}: the import section does not hash to the run's import digest (it was edited); {fix}")
    for name in ("method", "keep_rule", "keep_fraction"):
        if section[name] != getattr(config, name):
            raise StoreError(f"{where}: imported.{name} = {section[name]!r} but the config says "
                             f"{getattr(config, name)!r}; {fix}")
    if [s["mask_id"] for s in section["sources"]] != list(range(len(section["sources"]))):
        raise StoreError(f"{where}: imported.sources must name masks 0, 1, ... in order; {fix}")
    if section["weights"] == "shared" and "weights.npy" not in meta.get("files", {}):
        raise StoreError(f"{where}: an import with shared weights lists no weights.npy; {fix}")
    return section


# Files a run may hold at its top level beside the fixed ones (run.json's `files`: path -> {bytes, blake2b}).
RUN_FILES = ("weights.npy",)


def check_run_files(path: Path, meta: dict) -> None:
    """Each run-level file that run.json lists (an import's shared weights) exists, is a plain file (not a
    link) and has its recorded size. Its checksum is checked when it is read (`Run.run_file_bytes`)."""
    for rel, info in meta.get("files", {}).items():
        file = path / rel
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            raise StoreError(f"{file} is missing: the run's shared weights are gone; restore the file from a copy "
                             "of the run, or import the masks again") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{file} is not a plain file (a link?); replace it with a real copy of the file")
        if st.st_size != info["bytes"]:
            raise StoreError(f"{file} is truncated or corrupt ({st.st_size} bytes, run.json says {info['bytes']}); "
                             "restore it from a copy of the run, or import the masks again")


def read_run_file(path: Path, rel: str, info: dict) -> bytes:
    """The bytes of run-level file `rel` of run `path`, checked against run.json's size and BLAKE2b-256."""
    file = F.inside(path, rel)
    fix = "restore it from a copy of the run, or import the masks again"
    try:
        if os.path.islink(file):
            raise StoreError(f"{file} is a symbolic link; replace it with a real copy of the file")
        data = file.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{file} is missing; {fix}") from None
    except OSError as e:
        raise StoreError(f"{file} cannot be read ({e.strerror or e})") from None
    if len(data) != info["bytes"]:
        raise StoreError(f"{file} is truncated or padded: {len(data)} bytes, run.json says {info['bytes']}; {fix}")
    if F.checksum(data) != info["blake2b"]:
        raise StoreError(f"{file} fails its checksum (corrupt); {fix}")
    return data


# ---- contents -------------------------------------------------------------------------------------------
def _mask_path(root: Path, i: int) -> Path:
    return root / "masks" / f"{F.stem(i)}.mask"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"mask file {path} is missing; {F.repair_hint(path)}") from None
    except OSError as e:
        raise StoreError(f"mask file {path} cannot be read ({e.strerror or e})") from None


def checked_masks(root: Path, records: dict[int, dict], n_words: int) -> Iterator[tuple[int, np.ndarray]]:
    """(mask id, words) of every mask file, each checked against its record's checksum; the files are
    read a few tens of MB at a time and hashed on several threads."""
    ids = list(records)
    per_chunk = max(1, CHUNK_BYTES // F.mask_file_size(n_words))
    for start in range(0, len(ids), per_chunk):
        chunk = ids[start:start + per_chunk]
        datas = [_read(_mask_path(root, i)) for i in chunk]
        found = F.digests([memoryview(d)[F.HEADER_SIZE:] for d in datas])
        for i, data, d in zip(chunk, datas, found):
            yield i, F.check_mask_data(_mask_path(root, i), data, n_words, records[i]["checksum"], i,
                                       words_digest=d)


def check_contents(root: Path, records: dict[int, dict], n_words: int) -> bool:
    """The words of every mask file, and of masks.bits when it is current, against the records; a mismatch
    is a StoreError naming the file (and the rows of masks.bits). Returns whether masks.bits was current.

    With a current masks.bits (its header, ids and row checksums already match the records: `open_cache`)
    each mask file's header digest is compared with its record's checksum and its words with its row of
    masks.bits: two copies that must agree byte for byte, at memory speed, and only where they differ is
    the mask file hashed, to tell which copy is corrupt. Without one, every mask file is hashed. (`verify`
    hashes both in full.)"""
    if not records:
        return False
    ids, sums = list(records), [r["checksum"] for r in records.values()]
    cache_path = root / "masks.bits"
    bits = C.open_cache(cache_path, ids, sums, n_words)
    if bits is None:
        for _ in checked_masks(root, records, n_words):
            pass
        return False
    bad_rows = []
    for row, i in enumerate(ids):
        path = _mask_path(root, i)
        data = _read(path)
        try:
            F.check_mask_data(path, data, n_words, sums[row], i, same_as=bits[row])
        except StoreError:
            F.check_mask_data(path, data, n_words, sums[row], i)  # raises if the mask file is the bad copy
            bad_rows.append(row)  # the file is right: the row is not
    if bad_rows:
        C.check_rows(cache_path, bits, ids, sums)  # names every bad row
    return True


# ---- verify and repair ------------------------------------------------------------------------------------
LINKABLE = {"lock": "remove", "masks.bits": "remove", "analysis": "remove", "masks": None, "extras": None,
            "snapshots": None, "quarantine": None, "run.json": None, "config.toml": None, "weights.npy": None}


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
    from masklab.store.lock import RunLock
    from masklab.store.run import Run, resolve_run

    path = run.path if isinstance(run, Run) else resolve_run(run, runs_dir)
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
        meta = read_json(path / "run.json")
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
        return meta
    except UserError as e:
        row = add("config.toml", "config", "problem", str(e))
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
        F.atomic_write_text(path / "config.toml", _config_text(restored), root=path)
        _done(row, "rewrote config.toml from run.json")
    return meta


def _config_text(config: RunConfig) -> str:
    from masklab.store.writer import _config_toml

    return _config_toml(config)


def restored_config(path: Path, meta: dict, old: RunConfig | None) -> RunConfig | None:
    """The run's config rebuilt from run.json's hashed fields, with the fields that are not hashed (masks,
    name, device, ...) from the current config.toml where it is readable; None when that does not hash as
    run.json says."""
    unhashed = {k: v for k, v in old.to_dict().items() if k in UNHASHED} if old is not None else {}
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
    from masklab.store.run import RECORD_RE

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
            record = check_record(path / rel, read_json(path / rel), i, layers)
            add(rel, "record", "ok", mask_id=i)
        except UserError as e:
            bad.append(add(rel, "record", "problem", str(e), i))
        if record is not None:
            mask_rel = f"masks/{F.stem(i)}.mask"
            try:
                F.read_mask(path / mask_rel, n_words, record["checksum"], mask_id=i)
                add(mask_rel, "mask", "ok", mask_id=i)
            except UserError as e:
                bad.append(add(mask_rel, "mask", "problem", str(e), i))
            for extra, info in record.get("files", {}).items():
                if extra == mask_rel:
                    continue
                try:
                    F.read_checked(F.inside(path, extra), info["bytes"], info["blake2b"], f"an extra of mask {i}")
                    add(extra, "extra", "ok", mask_id=i)
                except UserError as e:
                    bad.append(add(extra, "extra", "problem", str(e), i))
        if not bad and record is not None:
            good[i] = record
        elif repair:
            where = quarantine(path, i, record)
            for row in bad:
                _done(row, f"moved mask {i}'s files to {where}; {F.restore_hint(path)}")
    _verify_cache(path, good, n_words, add, repair)


def _verify_cache(path: Path, records: dict[int, dict], n_words: int, add, repair: bool) -> None:
    from masklab.store.run import Run

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
            Run(path).masks  # noqa: B018 -- rebuilds the matrix from the checked mask files
            _done(row, "rebuilt masks.bits from the mask files")
        except UserError as e:
            row["status"], row["action"] = "problem", f"rebuilding failed: {e}"


def quarantine(path: Path, mask_id: int, record: dict | None) -> str:
    """Move mask `mask_id`'s files (its record first: that unregisters the mask) into a new folder
    `quarantine/<id>-<k>/` under the run, keeping their relative paths. Returns that folder, relative."""
    s = F.stem(mask_id)
    k = 1
    while (path / "quarantine" / f"{s}-{k}").exists():
        k += 1
    dest = f"quarantine/{s}-{k}"
    rels = [f"masks/{s}.json", f"masks/{s}.mask"]
    if record is not None:
        rels += [rel for rel in record.get("files", {}) if rel not in rels]
    for folder in ("extras", "snapshots"):  # what an unreadable record would have named
        rels += [f"{folder}/{p.name}" for p in sorted((path / folder).glob(f"{s}.*"))
                 if f"{folder}/{p.name}" not in rels and F.TMP_MARK not in p.name]
    for rel in rels:
        source = path / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not os.path.lexists(source):
            continue
        try:
            F.check_no_links(source.parent, path)  # never move a file out of a linked folder (outside the run)
        except StoreError:
            continue
        target = path / dest / rel
        F.make_dirs(target.parent, root=path)
        try:
            os.rename(source, target)
        except OSError as e:
            raise write_error(target, e) from None
        F.fsync_dir(source.parent)
    return dest
