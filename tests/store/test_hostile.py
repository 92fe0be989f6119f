"""Hostile and careless edits of a run directory (issue 22, round three of the red team): corruption that went
unseen (items 7, 8, 9) and files that hung or crashed the readers (item 12). Each test failed on the code before
the fix."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal

import numpy as np
import pytest

import masklab
from masklab.cli import main
from masklab.errors import StoreError
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


@contextlib.contextmanager
def deadline(seconds: int = 30):
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`: an open() of a FIFO
    waits for a writer that never comes."""
    def expired(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s: the reader hangs")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _problems(table) -> list[str]:
    return table.loc[table["status"] == "problem", "path"].tolist()


# ---- item 7: records and run.json carry a checksum that every open checks ------------------------------------
def test_an_edited_accuracy_in_a_record_fails_its_checksum(copy):
    """Issue 22, item 7: `"test_acc": 0.7` edited to 0.2 in a record passed open and verify and flowed into every
    table and figure."""
    path = copy / "masks" / "000001.json"
    record = json.loads(path.read_text())
    assert F.JSON_CHECKSUM in record
    record["test_acc"] = 0.2
    path.write_text(json.dumps(record))
    with pytest.raises(StoreError, match=rf"{path} fails its checksum: it was edited or is corrupt; "
                                         r"`masklab verify .* --repair` moves that mask aside"):
        open_run(copy)
    assert _problems(masklab.store.verify(copy)) == ["masks/000001.json"]
    masklab.store.verify(copy, repair=True)
    assert open_run(copy).ids == [0, 2]  # mask 1 moved aside: `generate --resume` trains it again


@pytest.mark.parametrize("edit", [lambda m: m.update(created="2020-01-01T00:00:00+00:00"),
                                  lambda m: m["dataset"].update(n_test=1),
                                  lambda m: m.pop(F.JSON_CHECKSUM)],
                         ids=["created", "dataset", "checksum removed"])
def test_an_edited_run_json_fails_its_checksum(copy, edit):
    """Issue 22, item 7: run.json's unchecked fields (the dataset's sizes, when it was made) could be edited."""
    path = copy / "run.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=rf"{path} (fails its checksum|has no checksum)"):
        open_run(copy)
    assert _problems(masklab.store.verify(copy)) == ["run.json"]


def test_a_record_without_its_checksum_is_refused(copy):
    path = copy / "masks" / "000000.json"
    record = json.loads(path.read_text())
    del record[F.JSON_CHECKSUM]
    path.write_text(json.dumps(record))
    with pytest.raises(StoreError, match=rf"{path} has no checksum"):
        open_run(copy)


def test_the_checksum_is_over_the_values_not_the_layout_of_the_text(copy):
    """A record rewritten with other spacing and key order (what a JSON tool does) still opens."""
    for path in [copy / "run.json", *sorted((copy / "masks").glob("*.json"))]:
        value = json.loads(path.read_text())
        path.write_text(json.dumps(dict(reversed(list(value.items()))), indent=4))
    assert open_run(copy).ids == [0, 1, 2]


def test_a_run_made_before_checksums_opens_as_format_1(copy, run):
    """Runs of format 1 (made before masklab checksummed its metadata) are read without that check."""
    for path in [copy / "run.json", *sorted((copy / "masks").glob("*.json"))]:
        value = json.loads(path.read_text())
        del value[F.JSON_CHECKSUM]
        if path.name == "run.json":
            value["format"] = 1
        path.write_text(json.dumps(value))
    old = open_run(copy)
    assert old.ids == run.ids and old.table.equals(run.table)
    assert F.JSON_CHECKSUM not in run.table.columns


# ---- item 12: every file of a run is opened non-blocking, checked to be a regular file, bounded ---------------
@pytest.mark.parametrize("rel", ["masks/000001.json", "masks/000001.mask", "masks.bits"])
def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(copy, rel):
    """Issue 22, item 12: a FIFO in place of a record or of masks.bits hung `show` / `verify` in open()."""
    assert len(Run(copy).masks) == 3  # masks.bits exists
    os.unlink(copy / rel)
    os.mkfifo(copy / rel)
    with deadline():
        with pytest.raises(StoreError, match=r"is a FIFO, not a regular file"):
            Run(copy)
        table = masklab.store.verify(copy)
    assert rel in _problems(table) or rel == "masks.bits" and (table["path"] == "masks.bits").any()


def test_a_fifo_in_place_of_an_extra_is_refused(copy):
    path = copy / "extras" / "000000.history.csv"
    os.unlink(path)
    os.mkfifo(path)
    run = Run(copy)
    with deadline():
        with pytest.raises(StoreError, match=rf"{path} is a FIFO, not a regular file"):
            run.history(0)
        assert "extras/000000.history.csv" in _problems(masklab.store.verify(copy))


def test_show_and_verify_of_a_run_with_a_fifo_exit_2(copy, capsys):
    os.unlink(copy / "masks" / "000002.json")
    os.mkfifo(copy / "masks" / "000002.json")
    with deadline(60):
        assert main(["show", str(copy)]) == 2
        assert "is a FIFO, not a regular file" in capsys.readouterr().err
        assert main(["verify", str(copy)]) != 0


def test_a_record_that_links_to_dev_zero_is_refused(copy):
    """Issue 22, item 12: a record linked to /dev/zero was read without end (MemoryError, "internal error")."""
    path = copy / "masks" / "000001.json"
    os.unlink(path)
    os.symlink("/dev/zero", path)
    with deadline():
        with pytest.raises(StoreError, match=rf"{path} is a character device, not a regular file"):
            Run(copy)


def test_a_record_larger_than_any_record_is_refused_unread(copy):
    path = copy / "masks" / "000001.json"
    with open(path, "r+b") as f:
        f.truncate(F.MAX_JSON_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(StoreError, match=rf"{path} is {F.MAX_JSON_BYTES + 1:,} bytes, more than the "):
        Run(copy)


@pytest.mark.parametrize("depth", [100_000, F.MAX_JSON_DEPTH + 1])
def test_a_deeply_nested_record_is_refused(copy, depth):
    """Issue 22, item 12: a 100,000-deep JSON record was a RecursionError reported as "internal error"."""
    path = copy / "masks" / "000001.json"
    path.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(StoreError, match=rf"{path} is corrupt \(JSON nested deeper than {F.MAX_JSON_DEPTH} levels\)"):
        Run(copy)
    assert "masks/000001.json" in _problems(masklab.store.verify(copy))


# ---- item 8: run.json's layer shapes are those of the config's model -----------------------------------------
def test_a_layer_shape_that_is_not_the_models_is_named_by_verify_and_rebuilding(copy, run):
    """Issue 22, item 8: a changed shape (same size, so the word ranges still fit) passed `verify`, and the masks
    came back in the wrong shape (interpolate then blamed the mask file). A hostile edit that recomputes run.json's
    checksum is still named by verify and by rebuilding a subnetwork."""
    path = copy / "run.json"
    meta = json.loads(path.read_text())
    last = meta["layers"][-1]
    assert last["shape"][0] != last["shape"][1]
    last["shape"] = last["shape"][::-1]
    path.write_text(json.dumps(sealed(meta)))
    message = re.escape(f"{path}: layer {len(meta['layers']) - 1}: {last['layer']} {last['shape']}, but model mlp")
    table = masklab.store.verify(copy)
    bad = table[table["status"] == "problem"]
    assert bad["path"].tolist() == ["run.json"] and bad["detail"].str.contains(message).all()
    with pytest.raises(StoreError, match=message):
        Run(copy).model(0)
    with pytest.raises(StoreError, match=message):
        Run(copy).evaluate(0)
    assert masklab.store.verify(run.path)["status"].isin(["ok", "stale"]).all()


# ---- item 9: the unhashed settings of config.toml (name, stack, device) are the run's -------------------------
@pytest.mark.parametrize("field, value, message", [
    ("stack", "7", r"stack: 7 in config\.toml, \d+ in run\.json"),
    ("device", '"cuda"', r"device: 'cuda' in config\.toml, '\w+' in run\.json"),
    ("name", '"elsewhere"', r"name: 'elsewhere' in config\.toml, None in run\.json"),
])
def test_edited_unhashed_settings_are_named_and_repaired(copy, run, capsys, field, value, message):
    """Issue 22, item 9: edited `name`, `stack`, `device` in config.toml passed verify and verify --repair, then
    blocked `--resume` with a hint about a --name the user never gave."""
    path = copy / "config.toml"
    text = path.read_text()
    line = re.compile(rf"^{field} = .*$", re.M)
    path.write_text(line.sub(f"{field} = {value}", text) if line.search(text) else text + f"{field} = {value}\n")
    with pytest.raises(StoreError, match=rf"{path} was edited after the run was made \({message}\); "
                                         rf"`masklab verify {copy} --repair` restores the file from run\.json"):
        Run(copy)
    assert _problems(masklab.store.verify(copy)) == ["config.toml"]
    table = masklab.store.verify(copy, repair=True)
    assert table.loc[table["path"] == "config.toml", "action"].tolist() == ["rewrote config.toml from run.json"]
    assert Run(copy).config == run.config
    assert main(["generate", "--resume", str(copy), "--quiet"]) == 0  # nothing left to train: it opens
    assert capsys.readouterr().out.strip() == str(copy)


def test_run_json_records_the_unhashed_settings(run):
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["settings"] == {"name": run.config.name, "stack": run.config.stack, "device": run.config.device}


# ---- item 17: errors say what was being done ------------------------------------------------------------------
def test_the_masks_of_a_read_only_run_without_its_cache_are_read_in_memory(copy, run, read_only):
    """Issue 22, item 17: `open_run(...).masks` on a read-only run without masks.bits raised a raw OSError from the
    temporary file's cleanup."""
    (copy / "masks.bits").unlink(missing_ok=True)
    read_only(copy)
    masks = open_run(copy).masks
    assert np.array_equal(np.asarray(masks.bits), np.asarray(run.masks.bits))
    assert not (copy / "masks.bits").exists()


def test_a_file_in_place_of_a_runs_folder_is_named_by_a_read_command(copy, capsys):
    """Issue 22, item 17: `show` on a run whose `extras` is a file said "cannot write" (show only reads)."""
    shutil.rmtree(copy / "extras")
    (copy / "extras").write_text("not a folder\n")
    assert main(["show", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" not in err[0], err
    assert "extras" in err[0] and "not a directory" in err[0]
