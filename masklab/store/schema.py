"""What every open of a run checks in its metadata (`Run(path)`; `show`, `analyze`, `generate --resume` all open
the run this way; the words of its masks: contents.py):
  - run.json: its fields and their types, a consistent layout (word ranges, `n_words`, `n_bits`), the run
    id ending in the hash, and per layer `n_keep` = what the config's keep rule keeps (masklab's
    `n - int(sparsity * n)`; for imported runs also the reference rule or the imported counts, see
    `check_imported`); an imported run's `imported` section hashes to the config's `imported` digest, and
    its run-level files (`files`: the shared weights) exist with their recorded sizes (their checksums are
    checked when they are read, and by `verify`);
  - config.toml: its canonical hash equals run.json's (an edited hashed field is named; `masks` is not
    hashed and may be raised to extend a run);
  - every record (`masks/000003.json`): the required fields, each of the right type, and `n_keep` = the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pandas as pd

from masklab.config import RESOLVED, RunConfig
from masklab.errors import StoreError
from masklab.keep import layer_keep, rule_text
from masklab.store import files as F
from masklab.store.bits import BIT_ORDER
from masklab.store.meta import READ_FORMATS, RECORDED, RUN_FORMAT
from masklab.store.paths import own_file, stem

HEX64 = re.compile(r"[0-9a-f]{64}")


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


def check_record(path: Path, record: Any, mask_id: int, layers: pd.DataFrame, *, sealed: bool = True) -> dict:
    """`record` (read from `path`, the record of mask `mask_id`) if it matches its checksum (`sealed`: the
    run's format carries one, see `is_sealed`), has every required field with the right type and fits the
    layout; otherwise a StoreError naming the file and the field."""
    if not isinstance(record, dict):
        raise StoreError(f"record {path} is not a JSON object; {F.repair_hint(path)}")
    if sealed:
        F.check_sealed(path, record, F.lazy_repair_hint(path))
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
        if not own_file(rel, mask_id) or rel == f"masks/{stem(mask_id)}.json":
            raise StoreError(f"record {path} names {rel!r}, which is not one of mask {mask_id}'s own files "
                             f"(masks/{stem(mask_id)}.mask, extras/{stem(mask_id)}.*, snapshots/"
                             f"{stem(mask_id)}.npz); {F.repair_hint(path)}")
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
    if meta.get("format") not in READ_FORMATS:
        raise StoreError(f"{where} has format {meta.get('format')!r}; this masklab reads format {RUN_FORMAT} "
                         f"(and {', '.join(map(str, READ_FORMATS[:-1]))})")
    if is_sealed(meta):
        F.check_sealed(where, meta, fix)
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
                             "resolved": (f"a table of {', '.join(RESOLVED)}", _resolved),
                             "settings": (f"a table of {', '.join(RECORDED)}",
                                          lambda v: isinstance(v, dict) and set(v) == set(RECORDED)),
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


def is_sealed(meta: dict) -> bool:
    """Whether run.json (`meta`) and the run's records carry their checksums: every run of RUN_FORMAT 2 on."""
    return isinstance(meta, dict) and _int(meta.get("format")) and meta["format"] >= 2


def _resolved(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == set(RESOLVED) and \
        all(x is None or isinstance(x, (str, bool, int, float)) for x in v.values())


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


def resolved_config(path: Path, config: RunConfig, meta: dict) -> RunConfig:
    """The config the run used: `config` (config.toml, checked by `check_config`) with its method-dependent
    fields (RESOLVED) at run.json's `resolved` values, or, for a run made before masklab recorded them, at the
    method's defaults (`RunConfig.resolve`). A `resolved` value that contradicts a field config.toml sets is
    refused."""
    stored = meta.get("resolved")
    if stored is None:
        return config.resolve()
    for key, value in stored.items():
        mine = getattr(config, key)
        if mine is not None and mine != value:
            raise StoreError(f"{path / 'run.json'}: resolved {key} = {value!r} but config.toml sets {mine!r}; the "
                             "run's metadata is damaged: restore run.json from a copy of the run")
    return config.replace(**{key: value for key, value in stored.items() if getattr(config, key) is None})


def check_config(path: Path, config: RunConfig, meta: dict) -> None:
    """config.toml of run `path` must hash as run.json says (an edited hashed field is named), give its run id
    (an edited `name`), and hold the unhashed settings run.json records (`stack`, `device`: meta.RECORDED)."""
    if config.hashed_fields() == meta["hashed_fields"] and config.hash == meta["hash"]:
        stored = meta.get("settings", {})
        diff = [f"{k}: {getattr(config, k)!r} in config.toml, {stored[k]!r} in run.json" for k in RECORDED
                if k in stored and getattr(config, k) != stored[k]]
        if not diff and config.run_id != meta["run_id"]:
            diff = [f"name: {config.name!r} in config.toml gives the run id {config.run_id}, run.json's is "
                    f"{meta['run_id']}"]
        if diff:
            raise StoreError(f"{path / 'config.toml'} was edited after the run was made ({'; '.join(diff)}); "
                             f"`masklab verify {path} --repair` restores the file from run.json")
        return
    diff = field_diff(config.hashed_fields(), meta["hashed_fields"], "in config.toml", "in run.json")
    if diff:
        raise StoreError(f"{path / 'config.toml'} was edited after the run was made ({'; '.join(diff)}): its masks "
                         f"were trained with run.json's config; `masklab verify {path} --repair` restores the file "
                         "from run.json (or start a new run with the new config)")
    raise StoreError(f"{path / 'run.json'}: its hash is not the hash of its config (hashed fields "
                     f"{meta['hashed_fields']}); the metadata is damaged or from an incompatible masklab version")


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
        expect = layer_keep(int(r.n_bits), config)
        if expect is None:
            expect = None if imported is None or k >= len(imported["n_keep"]) else int(imported["n_keep"][k])
        if expect is None or int(r.n_keep) != expect:
            raise StoreError(f"{path / 'run.json'}: layer {r.layer} keeps {r.n_keep} of {r.n_bits} weights, but "
                             f"{rule_text(config)} keeps {expect}: run.json was edited; "
                             "restore it from a copy of the run")
    if imported is not None and len(imported["n_keep"]) != len(layers):
        raise StoreError(f"{path / 'run.json'}: its import section records {len(imported['n_keep'])} layers, its "
                         f"layout {len(layers)}: run.json was edited; restore it from a copy of the run")


def check_architecture(path: Path, layers: pd.DataFrame, config: RunConfig, meta: dict) -> None:
    """run.json's layer names and shapes (`layers`) are those of the network the config builds on its dataset's
    samples (built on torch's meta device: shapes only); a run imported without a model has none to compare.
    Left to `verify` and to rebuilding a subnetwork (which import torch anyway): a plain open stays without torch,
    and run.json's checksum already refuses an edit there."""
    if meta["dataset"].get("name") is None:
        return
    import torch

    from masklab.nn.layers import masked_layers
    from masklab.nn.models import build_model

    shape = tuple(meta["dataset"]["input_shape"])
    with torch.device("meta"):
        model = build_model(config.model, shape, int(meta["dataset"]["n_classes"]), config.width, config.method,
                            config.sparsity)
    built = [(name, [int(n) for n in m.weight.shape]) for name, m in masked_layers(model)]
    stored = [(str(r.layer), [int(n) for n in r.shape]) for r in layers.itertuples()]
    if built != stored:
        k = next((k for k, (a, b) in enumerate(zip(built, stored)) if a != b), min(len(built), len(stored)))
        what = f"layer {k}: {stored[k][0]} {stored[k][1]}" if k < len(stored) else f"{len(stored)} layers"
        expect = f"{built[k][0]} {built[k][1]}" if k < len(built) else f"{len(built)} layers"
        raise StoreError(f"{path / 'run.json'}: {what}, but model {config.model} (width {config.width:g}) on samples "
                         f"of shape {'x'.join(map(str, shape))} has {expect}: run.json was edited or made by another "
                         "masklab version; restore it from a copy of the run")


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
