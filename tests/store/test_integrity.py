"""Integrity of a run directory (in process, tiny digits runs): what every open checks (masks.bits, mask
files, records, config.toml, run.json), `verify` and its repairs, quarantine and resume."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import masklab
from masklab.config import RunConfig
from masklab.errors import StoreError
from masklab.keep import layer_keep
from masklab.store import cache as C
from masklab.store import files as F
from masklab.store.files import sealed
from masklab.store.run import Run, open_run


@pytest.fixture(scope="module")
def run(tiny_run) -> Run:
    """The session's shared tiny run (TINY): read only; the tests damage `copy`."""
    return tiny_run


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the run, under its run id, to damage."""
    path = tmp_path / "runs" / run.id
    shutil.copytree(run.path, path)
    return path


def _flip(path, offset: int, bit: int = 1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- masks.bits -------------------------------------------------------------------------------------------
def test_the_bit_matrix_carries_what_it_was_built_from(run):
    data = (run.path / "masks.bits").read_bytes()
    magic, version, offset, n, w, key = C.HEADER.unpack_from(data)
    sums = list(run.table["checksum"])
    assert (magic, version, n, w) == (b"MLABBITS", 2, 3, run.n_words) and offset == C.words_offset(3)
    assert key == C.key(run.n_words, run.ids, sums)
    assert list(np.frombuffer(data, "<i8", 3, C.HEADER.size)) == run.ids
    rows = data[C.HEADER.size + 24:C.HEADER.size + 24 + 32 * 3]
    assert [rows[32 * k:32 * k + 32].hex() for k in range(3)] == sums
    assert len(data) == offset + 8 * 3 * run.n_words
    assert [F.checksum(np.asarray(run.masks.bits[k])) for k in range(3)] == sums


def test_a_row_changed_in_the_bit_matrix_is_named_when_the_run_is_opened(run, copy):
    cache = copy / "masks.bits"
    data = bytearray(cache.read_bytes())
    words = np.frombuffer(data, "<u8", offset=C.words_offset(3)).reshape(3, -1).copy()
    words[1] ^= np.uint64(0x0101)  # XOR one row's words: today's verify() passed and analyze used them
    data[C.words_offset(3):] = words.tobytes()
    cache.write_bytes(bytes(data))
    message = r"masks\.bits is corrupt: row 1 \(mask 1\) does not match its mask's checksum.*--repair` rebuilds it"
    with pytest.raises(StoreError, match=message):
        open_run(copy)
    lazy = Run(copy, check="structure")  # the cheap open; every reader of the bits still goes through the check
    with pytest.raises(StoreError, match=message):
        lazy.masks  # noqa: B018
    table = masklab.store.verify(copy)
    assert table.loc[table["status"] != "ok", ["path", "status"]].values.tolist() == [["masks.bits", "problem"]]
    assert "row 1 (mask 1)" in table.loc[table["path"] == "masks.bits", "detail"].iloc[0]
    repaired = masklab.store.verify(copy, repair=True)
    assert repaired.loc[repaired["path"] == "masks.bits", "status"].tolist() == ["repaired"]
    assert cache.read_bytes() == (run.path / "masks.bits").read_bytes()
    assert np.array_equal(np.asarray(open_run(copy).masks.bits), np.asarray(run.masks.bits))


@pytest.mark.parametrize("where, message", [
    (lambda n: C.HEADER.size + 8, r"its mask ids are not the registry's"),
    (lambda n: C.HEADER.size + 8 * n + 5, r"row checksums of masks 0 are not their records'"),
    (lambda n: 0, r"not a masklab bit matrix"),
    (lambda n: 20, r"is damaged \(its header or size"),
], ids=["ids", "row checksums", "magic", "counts"])
def test_a_damaged_bit_matrix_header_is_named(copy, where, message):
    _flip(copy / "masks.bits", where(3))
    with pytest.raises(StoreError, match=message):
        open_run(copy)


def test_a_stale_bit_matrix_is_rebuilt_silently(run, copy, digits):
    record = copy / "masks" / "000002.json"
    record.unlink()  # the registry changed since the matrix was built
    reopened = open_run(copy)
    assert reopened.masks.bits.shape == (2, run.n_words)
    assert np.array_equal(np.asarray(reopened.masks.bits), np.asarray(run.masks.bits[:2]))
    assert C.HEADER.unpack_from((copy / "masks.bits").read_bytes())[3] == 2


# ---- mask files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["current", "missing"])
def test_a_flipped_byte_in_a_mask_file_is_named_when_the_run_is_opened(copy, cache):
    if cache == "missing":
        (copy / "masks.bits").unlink()
    mask = copy / "masks" / "000001.mask"
    _flip(mask, F.HEADER_SIZE + 17)
    message = rf"mask file {mask} fails its checksum \(corrupt\); `masklab verify .* --repair` moves that mask aside"
    with pytest.raises(StoreError, match=message):
        open_run(copy)
    with pytest.raises(StoreError, match=message):
        Run(copy, check="structure").masks  # noqa: B018


def test_extras_are_checked_when_read(copy):
    _flip(copy / "extras" / "000001.scores.npy", 200)
    run = open_run(copy)  # extras are not read on open
    with pytest.raises(StoreError, match=r"000001\.scores\.npy fails its checksum"):
        run.scores(1)
    table = run.verify()
    assert table.loc[table["status"] == "problem", "path"].tolist() == ["extras/000001.scores.npy"]


def test_stored_predictions_are_checked_when_read(copy):
    """Each mask's test predictions (an extra written when it was trained) are checksummed like the others."""
    run = open_run(copy)
    assert run.predictions(1).dtype == np.int8 and len(run.predictions(1)) == run.meta["dataset"]["n_test"]
    _flip(copy / "extras" / "000001.predictions.npy", 140)
    run = open_run(copy)
    with pytest.raises(StoreError, match=r"000001\.predictions\.npy fails its checksum"):
        run.predictions(1)
    table = run.verify()
    assert table.loc[table["status"] == "problem", "path"].tolist() == ["extras/000001.predictions.npy"]


def test_repair_quarantines_a_damaged_mask_and_resume_retrains_exactly_it(run, copy, digits):
    _flip(copy / "masks" / "000001.mask", F.HEADER_SIZE + 3)
    before = _files(copy)
    table = masklab.store.verify(copy, repair=True)
    assert table.loc[table["kind"] == "mask", "status"].tolist() == ["ok", "repaired", "ok"]
    assert "quarantine/000001-1" in table.loc[table["path"] == "masks/000001.mask", "action"].iloc[0]
    moved = sorted(str(p.relative_to(copy / "quarantine" / "000001-1")) for p in
                   (copy / "quarantine" / "000001-1").rglob("*") if p.is_file())
    assert moved == ["extras/000001.history.csv", "extras/000001.predictions.npy", "extras/000001.scores.npy",
                     "masks/000001.json", "masks/000001.mask"]
    assert open_run(copy).ids == [0, 2]
    # --resume RUN: that run, its own config; exactly mask 1 is trained again, bit for bit the same
    again = masklab.generate(runs_dir="elsewhere", resume=copy, data=digits)
    assert again.path == copy and again.ids == [0, 1, 2]
    assert np.array_equal(np.asarray(again.masks.bits), np.asarray(run.masks.bits))
    after = _files(copy)
    for name, data in before.items():
        if "000001" not in name and name != "masks.bits" and name != "lock":
            assert after[name] == data, name  # the other masks untouched
    assert masklab.store.verify(copy)["status"].eq("ok").all()



@pytest.mark.parametrize("named", ["run.json", "config.toml", "masks/000000.mask", "extras/000002.history.csv"])
def test_repair_moves_only_a_masks_own_files_whatever_its_record_names(run, copy, named):
    """Issue 22, item 3: a record whose `files` named run.json (with a wrong checksum) made `verify --repair` move
    run.json into quarantine and destroyed the run. The record is now refused on open, and the repair moves mask 1's
    own files (by id and the store's naming), never what the record names."""
    path = copy / "masks" / "000001.json"
    record = json.loads(path.read_text())
    record["files"][named] = {"bytes": 3, "blake2b": "0" * 64}
    path.write_text(json.dumps(sealed(record)))
    with pytest.raises(StoreError, match=rf"record {path} names '{named}', which is not one of mask 1's own files"):
        open_run(copy)
    before = _files(copy)
    table = masklab.store.verify(copy, repair=True)
    assert table.loc[table["status"] == "repaired", "path"].tolist() == ["masks/000001.json", "masks.bits"]
    moved = sorted(str(p.relative_to(copy / "quarantine" / "000001-1")) for p in
                   (copy / "quarantine" / "000001-1").rglob("*") if p.is_file())
    own = sorted(rel for rel in before if rel.startswith(("masks/000001.", "extras/000001.", "snapshots/000001.")))
    assert {"extras/000001.history.csv", "extras/000001.scores.npy", "masks/000001.mask"} <= set(own)
    assert moved == own
    after = _files(copy)
    for name, data in before.items():
        if "000001" not in name and name not in ("masks.bits", "lock"):
            assert after[name] == data, name  # run.json, config.toml and the other masks untouched
    assert open_run(copy).ids == [0, 2]


# ---- records, config.toml, run.json -------------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("checksum"), r"lacks the field 'checksum'"),
    (lambda r: r.update(checksum=5), r"field 'checksum' = 5 is not a 64-digit hex string"),
    (lambda r: r.update(score_seed="1"), r"field 'score_seed' = '1' is not an integer"),
    (lambda r: r.pop("test_acc"), r"lacks the field 'test_acc'"),
    (lambda r: r.update(n_keep=[1, 2, 3]), r"keeps \[1, 2, 3\] weights per layer"),
    (lambda r: r.update(extras="x"), r"field 'extras' = 'x' is not a table"),
    (lambda r: r["files"].pop("extras/000001.scores.npy"), r"names extras without their checksums"),
], ids=["no checksum", "checksum type", "seed type", "no test_acc", "n_keep", "extras type", "unlisted extra"])
def test_a_record_lacking_a_field_or_of_a_wrong_type_is_named(copy, edit, message):
    path = copy / "masks" / "000001.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(sealed(record)))
    with pytest.raises(StoreError, match=rf"record {path}(: | ){message}.*--repair` moves that mask aside"):
        open_run(copy)
    table = masklab.store.verify(copy)
    assert table.loc[table["status"] == "problem", "path"].tolist() == ["masks/000001.json"]


def test_an_edited_config_is_named_on_open_and_restored_by_repair(run, copy):
    config = copy / "config.toml"
    original = config.read_bytes()
    config.write_text(config.read_text().replace("sparsity = 0.5", "sparsity = 0.9"))
    with pytest.raises(StoreError, match=rf"{config} was edited after the run was made \(sparsity: 0\.9 in "
                       r"config\.toml, 'default' in run\.json\).*--repair` restores the file"):
        open_run(copy)
    table = masklab.store.verify(copy, repair=True)
    assert table.loc[table["path"] == "config.toml", "status"].tolist() == ["repaired"]
    assert config.read_bytes() == original and open_run(copy).config == run.config
    # `masks` is not hashed: raising it (extending the run) is no edit
    config.write_text(config.read_text().replace("masks = 3", "masks = 5"))
    assert open_run(copy).config.masks == 5


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["layers"][0].update(n_keep=7), r"layer fc1 keeps 7 of 4096 weights, but sparsity 0\.5"),
    (lambda m: m.update(hash="0" * 64), r"run id .* does not end in its hash"),
    (lambda m: m.update(n_words=3), r"n_words / n_bits do not match its layers"),
    (lambda m: m.pop("layers"), r"lacks the field 'layers'"),
    (lambda m: m["hashed_fields"].update(epochs=4), r"config\.toml was edited .*epochs: 2 in config\.toml, 4 in run"),
])
def test_edits_of_run_json_are_named(copy, edit, message):
    path = copy / "run.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(sealed(meta)))
    with pytest.raises(StoreError, match=message):
        open_run(copy)


def test_the_store_keeps_as_many_weights_as_the_layers_do():
    from masklab.keep import n_keep

    for sparsity in (0.0, 0.1, 0.5, 0.7, 0.9, 0.99, 1 / 3):
        for n in (1, 7, 640, 4096, 36864, 2097152):
            assert layer_keep(n, RunConfig(sparsity=sparsity)) == n_keep(n, sparsity)
    assert layer_keep(100, RunConfig(method="dense", sparsity=0.9)) == 100


def test_verify_of_a_clean_run(run):
    table = run.verify()
    assert list(table.columns) == ["path", "kind", "mask_id", "status", "detail", "action"]
    assert table["status"].eq("ok").all()
    assert table["kind"].value_counts().to_dict() == {"extra": 9, "record": 3, "mask": 3, "metadata": 1,
                                                       "config": 1, "cache": 1}
    assert struct.calcsize(C.HEADER.format) == 64


def test_verify_names_links_and_repair_removes_only_the_links(copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep\n")
    (copy / "lock").unlink()
    (copy / "lock").symlink_to(outside / "precious")
    (copy / "analysis").symlink_to(outside)
    table = masklab.store.verify(copy)
    links = table[table["kind"] == "link"]
    assert links[["path", "status"]].values.tolist() == [["lock", "problem"], ["analysis", "problem"]]
    assert "is a symbolic link" in links["detail"].iloc[0]
    table = masklab.store.verify(copy, repair=True)
    assert table.loc[table["kind"] == "link", "status"].tolist() == ["repaired", "repaired"]
    assert not (copy / "lock").is_symlink() and not (copy / "analysis").exists()
    assert [p.name for p in outside.iterdir()] == ["precious"] and (outside / "precious").read_bytes() == b"keep\n"


def test_list_runs_shows_a_damaged_record_without_hashing(copy):
    path = copy / "masks" / "000000.json"
    record = json.loads(path.read_text())
    del record["checksum"]
    path.write_text(json.dumps(sealed(record)))
    table = masklab.list_runs(copy.parent)
    assert "lacks the field 'checksum'" in table["error"].iloc[0]
