"""Run directories written by `masklab.generate` (in process, tiny digits runs): registry, packed bits,
exact rebuilding of every subnetwork, extras, determinism, resume rules and integrity checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import masklab
from masklab import files as W
from masklab.config import RunConfig, read_config
from masklab.errors import StoreError, UserError
from masklab.store.bits import BIT_ORDER, MaskSet
from masklab.store.files import sealed
from masklab.store.run import Run, list_runs, open_run
from tests.conftest import TINY_RUN as TINY


@pytest.fixture(scope="module")
def run(tiny_run) -> Run:
    """The session's shared tiny run (TINY): read only; the tests copy it to change it."""
    return tiny_run


def _files(run: Run) -> dict[str, bytes]:
    return {str(p.relative_to(run.path)): p.read_bytes() for p in sorted(run.path.rglob("*"))
            if p.is_file() and p.parent != run.path}


# ---- what is stored ---------------------------------------------------------------------------------------
def test_registry_table(run):
    t = run.table
    assert list(t["mask_id"]) == [0, 1, 2] == run.ids
    for col in ["mask_id", "score_seed", "weight_seed", "data_seed", "test_acc", "best_test_acc", "test_loss",
                "train_acc", "seconds", "epochs", "checksum"]:
        assert col in t.columns
    assert list(t["score_seed"]) == [0, 1, 2] and set(t["weight_seed"]) == {0} and set(t["data_seed"]) == {0}
    assert (t["best_test_acc"] >= t["test_acc"]).all() and (t["epochs"] == 2).all()
    assert t["checksum"].str.fullmatch("[0-9a-f]{64}").all()


def test_run_metadata(run):
    config = RunConfig(**TINY)
    assert run.id == config.run_id and run.hash == config.hash and run.path.name == run.id
    assert read_config(run.path / "config.toml") == config  # what the user set; run.config: the values used
    assert run.config == config.resolve() and run.config.hash == config.hash
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["bit_order"] == BIT_ORDER and meta["hashed_fields"] == {"width": 0.25, "epochs": 2, "keep_scores": True}
    assert meta["dataset"] == {"name": "digits", "input_shape": [1, 8, 8], "n_classes": 10, "n_train": 1347,
                               "n_test": 450}
    assert {"masklab", "python", "torch", "numpy"} <= set(meta["software"])
    assert "commit" in meta["git"]
    layers = run.layers
    assert list(layers.columns) == ["layer", "shape", "n_bits", "n_keep", "word_start", "word_stop"]
    assert (layers["word_start"] % 1 == 0).all() and layers["word_stop"].iloc[-1] == run.n_words
    assert list(layers["n_keep"]) == [n - n // 2 for n in layers["n_bits"]]


# ---- the settings a run used (issue 25: the resolved hyperparameters were stored nowhere) -------------------
def test_a_run_records_the_values_its_method_gave_and_shows_them(run):
    # run.config reads what training used, not None; the hash and config.toml stay over what the user set
    assert (run.config.lr, run.config.weight_init, run.config.scale_fan) == (0.1, "signed-constant", False)
    assert (run.config.recycle_rate, run.config.recycle_every) == (None, None)  # no recycling: nothing to resolve
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["resolved"] == {"lr": 0.1, "weight_init": "signed-constant", "scale_fan": False,
                                "recycle_rate": None, "recycle_every": None}
    text = (run.path / "config.toml").read_text()
    assert "# lr = 0.1\n" in text and '# weight_init = "signed-constant"\n' in text and "\nlr =" not in text
    settings = run.settings().set_index("setting")
    assert settings.loc["lr", "value"] == 0.1 and settings.loc["lr", "source"] == "method"
    assert settings.loc["weight init", "value"] == "signed-constant"
    assert settings.loc["epochs", "value"] == 2 and settings.loc["epochs", "source"] == "set"
    assert settings.loc["sparsity", "value"] == 0.5 and settings.loc["sparsity", "source"] == "default"
    assert settings.loc["score seeds", "value"] == "0..2" and settings.loc["weight seed", "value"] == 0
    assert {"method", "batch size", "dataset", "model", "data seed"} <= set(settings.index)
    summary = run.summary()
    assert summary["settings"].equals(run.settings())
    config = summary["config"].set_index("field")
    assert config.loc["lr", "value"] == 0.1 and config.loc["lr", "source"] == "method"
    assert not config.loc["lr", "hashed"] and config.loc["epochs", "source"] == "set"


def test_a_run_made_before_resolved_values_were_recorded_shows_them_from_its_config(run, tmp_path):
    copy = tmp_path / run.id
    shutil.copytree(run.path, copy)
    meta = json.loads((copy / "run.json").read_text())
    del meta["resolved"]
    (copy / "run.json").write_text(json.dumps(sealed(meta)))
    (copy / "config.toml").write_text("".join(line + "\n" for line in (copy / "config.toml").read_text().splitlines()
                                              if not line.startswith("# ")))
    old = Run(copy)
    assert (old.config.lr, old.config.weight_init, old.config.scale_fan) == (0.1, "signed-constant", False)
    assert old.settings().equals(run.settings())


def test_resolved_values_that_contradict_the_config_are_refused(run, tmp_path):
    copy = tmp_path / run.id
    shutil.copytree(run.path, copy)
    meta = json.loads((copy / "run.json").read_text())
    meta["resolved"]["epochs"] = 3
    (copy / "run.json").write_text(json.dumps(sealed(meta)))
    with pytest.raises(StoreError, match="field 'resolved'"):
        Run(copy)
    meta["resolved"] = {**json.loads((run.path / "run.json").read_text())["resolved"], "lr": 0.5}
    (copy / "run.json").write_text(json.dumps(sealed(meta)))
    assert Run(copy).config.lr == 0.5  # a value the run used that the method no longer gives: kept
    text = (copy / "config.toml").read_text().replace("epochs = 2", "epochs = 2\nlr = 0.1")
    (copy / "config.toml").write_text(text)
    with pytest.raises(StoreError, match="resolved lr = 0.5 but config.toml sets 0.1"):
        Run(copy)


def test_masks_are_one_memory_mapped_matrix(run):
    masks = run.masks
    assert isinstance(masks, MaskSet) and isinstance(masks.bits, np.memmap)
    assert masks.bits.shape == (3, run.n_words) and masks.bits.dtype == np.uint64
    assert list(masks.ids) == [0, 1, 2]
    assert (masks.popcounts(per_layer=True) == run.layers["n_keep"].to_numpy()).all()
    for i in run.ids:
        layers = run.mask_layers(i)
        assert np.array_equal(masks.unpack(i), np.concatenate([m.reshape(-1) for m in layers]))
        for k, m in enumerate(layers):
            assert np.array_equal(masks.unpack(i, k), m)
    assert not np.array_equal(masks.bits[0], masks.bits[1])  # other score seed, other mask


def test_storage_per_mask_is_the_packed_size_plus_a_header(run):
    for i in run.ids:
        assert (run.path / "masks" / f"{i:06d}.mask").stat().st_size == 64 + 8 * run.n_words
    assert set(run.disk_bytes().columns) >= {"mask", "record", "history", "total"}
    assert not list(run.path.rglob(f"*{W.TMP_MARK}*"))
    table = run.verify()
    assert (table["status"] == "ok").all()
    # extras: histories, scores, predictions
    assert table["kind"].value_counts()[["mask", "extra", "record"]].tolist() == [3, 9, 3]


def test_history(run):
    h = run.history(1)
    assert list(h["epoch"]) == [0, 1] and h["test_acc"].iloc[-1] == run.record(1)["test_acc"]
    assert set(run.history()["mask_id"]) == {0, 1, 2}


def test_list_runs_and_open_by_id(run):
    table = list_runs(run.path.parent)
    assert list(table["run_id"]) == [run.id]
    row = table.iloc[0]
    assert (row["model"], row["dataset"], row["method"], row["sparsity"], row["masks"]) == \
        ("mlp", "digits", "edge-popup", 0.5, 3)
    assert (row["lr"], row["weight_init"], row["weight_seed"], row["epochs"]) == (0.1, "signed-constant", 0, 2)
    assert str(table["epochs"].dtype) == "Int64"  # integers, not 2.0 (nor NaN beside an import)
    assert row["test_acc"] == pytest.approx(run.table["test_acc"].mean())
    assert open_run(run.id, run.path.parent).path == run.path
    assert open_run(run.id[:12], run.path.parent).path == run.path  # a unique prefix
    assert masklab.open_run(str(run.path)).id == run.id


@pytest.mark.parametrize("bad, message", [
    ("../etc", "no run directory"), ("/nonexistent/run", "no run directory"), ("nope", "no run 'nope'"),
    ("a..b", "not a run id"),
])
def test_open_run_refuses_bad_names(run, bad, message):
    with pytest.raises(StoreError, match=message):
        open_run(bad, run.path.parent)


def test_unknown_mask_id(run, tiny_runs):
    with pytest.raises(StoreError, match=r"has no mask 7; its mask ids are 0\.\.2"):
        run.record(7)
    with pytest.raises(UserError, match="mask id '1' is invalid: mask ids are integers >= 0"):
        run.record("1")
    with pytest.raises(StoreError, match="keeps no scores"):
        tiny_runs(keep_scores=False, masks=6).scores(0)  # the scale tests' run


# ---- exact rebuilding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes", [
    {},
    {"method": "biprop", "recycle": "iwr", "recycle_every": 1, "epochs": 4},
    {"recycle": "iterand", "recycle_every": 1, "epochs": 3, "sparsity": 0.7},
    {"method": "dense"},
], ids=["edge-popup", "biprop+iwr", "iterand", "dense"])
def test_model_rebuilds_the_recorded_accuracy_exactly(tmp_path, digits, changes):
    config = {**TINY, "masks": 2, **changes}
    run = masklab.generate(config, runs_dir=tmp_path, data=digits)
    for i in run.ids:
        result = run.evaluate(i, data=digits)
        assert (result.loss, result.acc) == (run.record(i)["test_loss"], run.record(i)["test_acc"])
        loss, acc = result  # a named tuple: unpacks as (loss, acc)
        assert (loss, acc) == (result.loss, result.acc)
        model = run.model(i)
        from masklab.nn.layers import masked_layers

        for (name, layer), mask in zip(masked_layers(model), run.mask_layers(i)):
            assert np.array_equal(layer.mask().numpy(), mask), name
    if changes.get("recycle") == "iwr":
        src = run.index_map(0, "src")
        assert run.record(0)["recycled"] > 0 and any((m != np.arange(m.size)).any() for m in src)
        assert run.record(0)["alphas"] is not None
    if changes.get("recycle") == "iterand":
        assert any((m != 0).any() for m in run.index_map(0, "draw"))
    if changes.get("method") == "dense":
        assert (run.masks.popcounts() == run.layers["n_bits"].sum()).all()
        assert "weights" in run.record(0)["extras"]


def test_scores_and_snapshots(tmp_path, digits):
    run = masklab.generate(runs_dir=tmp_path, data=digits, snapshot_every=1, **{**TINY,
                           "masks": 1, "epochs": 3})
    scores = run.scores(0)
    assert [s.shape for s in scores] == [tuple(s) for s in run.layers["shape"]]
    assert all(s.dtype == np.float16 for s in scores)
    for s, m in zip(scores, run.mask_layers(0)):  # the kept weights are the high |scores|
        assert np.abs(s[m]).astype(np.float32).min() >= np.abs(s[~m]).astype(np.float32).max()
    snaps = run.snapshots(0)
    assert list(snaps.ids) == [0, 1] and (snaps.popcounts(per_layer=True) == run.layers["n_keep"].to_numpy()).all()
    table = run.verify()
    assert (table["status"] == "ok").all() and (table["kind"] == "extra").sum() == 4  # + predictions


# ---- determinism and resume -------------------------------------------------------------------------------
def test_same_config_twice_gives_identical_bits_and_id(run, tmp_path, digits):
    again = masklab.generate(runs_dir=tmp_path, data=digits, **TINY)
    assert again.id == run.id
    assert np.array_equal(np.asarray(again.masks.bits), np.asarray(run.masks.bits))
    assert list(again.table["checksum"]) == list(run.table["checksum"])


def test_resume_rules(run, tmp_path, digits):
    path = tmp_path / run.id
    shutil.copytree(run.path, path)
    before = _files(Run(path))
    # complete and no --resume: reported as it is, nothing retrained
    assert len(masklab.generate(runs_dir=tmp_path, data=digits, **TINY)) == 3
    assert _files(Run(path)) == before
    # more masks: the run is incomplete; without resume refused, with resume extended
    with pytest.raises(StoreError, match="holds 3 of 5 masks; pass --resume"):
        masklab.generate(runs_dir=tmp_path, data=digits, **{**TINY, "masks": 5})
    extended = masklab.generate(runs_dir=tmp_path, data=digits, resume=True, **{**TINY, "masks": 5})
    assert extended.ids == [0, 1, 2, 3, 4] and extended.config.masks == 5
    after = _files(extended)
    assert all(after[k] == v for k, v in before.items())  # finished masks untouched
    assert extended.masks.bits.shape == (5, run.n_words)  # the consolidated matrix was rebuilt
    assert np.array_equal(np.asarray(extended.masks.bits[:3]), np.asarray(run.masks.bits))


def test_a_directory_of_another_config_is_refused(run, tmp_path, digits):
    other = RunConfig(**{**TINY, "sparsity": 0.8})
    shutil.copytree(run.path, tmp_path / other.run_id)
    with pytest.raises(StoreError, match=r"different config \(sparsity: 'default' there, 0\.8 here\)"):
        masklab.generate(other, runs_dir=tmp_path, data=digits, resume=True)


def test_a_data_root_outside_the_basic_multilingual_plane_reopens(tmp_path, digits):
    """config.toml holds an emoji as UTF-8 (the hand-written writer escaped it as a surrogate pair, which TOML
    rejects: the new run then refused to open); a path of non-UTF-8 bytes is refused before any file."""
    root = str(tmp_path / "données 😀 𝔘")
    run = masklab.generate(runs_dir=tmp_path / "runs", data=digits, data_root=root, **{**TINY, "masks": 1,
                                                                                         "epochs": 1})
    assert open_run(run.path).config.data_root == root
    assert "😀" in (run.path / "config.toml").read_text(encoding="utf-8")
    assert len(masklab.generate(runs_dir=tmp_path / "runs", resume=run.path, data=digits)) == 1
    undecodable = str(tmp_path).encode() + b"/\xff"
    with pytest.raises(UserError, match="'data_root' = .* is not UTF-8 text"):
        masklab.generate(runs_dir=tmp_path / "bad", data=digits, data_root=undecodable.decode(errors="surrogateescape"),
                         **TINY)
    assert not (tmp_path / "bad").exists()


def test_bad_input_leaves_no_run_directory(tmp_path, digits):
    runs = tmp_path / "runs"
    for bad in [{"sparsity": 1.5}, {"masks": 0}, {"model": "vgg"}, {"dataset": "imagenet"},
                {"model": "conv4", "dataset": "synthetic", "input_shape": "8"}]:
        with pytest.raises(UserError):
            masklab.generate(runs_dir=runs, **bad)
    with pytest.raises(UserError, match="fashion-mnist"):
        masklab.generate(runs_dir=runs, dataset="fashion-mnist", data_root=str(tmp_path))
    assert not runs.exists()


# ---- integrity --------------------------------------------------------------------------------------------
def test_truncated_mask_file_is_named_by_open_run(run, tmp_path):
    path = tmp_path / run.id
    shutil.copytree(run.path, path)
    mask = path / "masks" / "000001.mask"
    mask.write_bytes(mask.read_bytes()[:100])
    with pytest.raises(StoreError, match=r"000001\.mask is truncated or corrupt \(100 bytes"):
        open_run(path)


def test_corrupt_files_are_named_by_open_and_by_verify(run, tmp_path):
    path = tmp_path / run.id
    shutil.copytree(run.path, path)
    mask = path / "masks" / "000002.mask"
    data = bytearray(mask.read_bytes())
    data[-1] ^= 0xFF
    mask.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"000002\.mask fails its checksum"):  # sizes are right: the words tell
        open_run(path)
    (path / "masks.bits").unlink()
    with pytest.raises(StoreError, match=r"000002\.mask fails its checksum"):
        open_run(path)
    table = masklab.store.verify(path)
    bad = table[table["status"] == "problem"]
    assert list(bad["path"]) == ["masks/000002.mask"] and list(bad["mask_id"]) == [2]
    assert "fails its checksum" in bad["detail"].iloc[0]
    shutil.rmtree(path)
    shutil.copytree(run.path, path)
    history = path / "extras" / "000000.history.csv"
    history.write_text(history.read_text().replace("0.", "1.", 1))
    damaged = open_run(path)  # extras are checked when read, and by verify
    with pytest.raises(StoreError, match=r"000000\.history\.csv fails its checksum"):
        damaged.history(0)
    table = damaged.verify()
    assert list(table.loc[table["status"] == "problem", "path"]) == ["extras/000000.history.csv"]


def test_damaged_bit_matrix_is_named_and_a_stale_one_rebuilt(run, tmp_path):
    path = tmp_path / run.id
    shutil.copytree(run.path, path)
    cache = path / "masks.bits"
    cache.write_bytes(cache.read_bytes()[:-8])
    with pytest.raises(StoreError, match=r"masks\.bits is damaged .*--repair` rebuilds it"):
        open_run(path)
    table = masklab.store.verify(path, repair=True)
    assert list(table.loc[table["kind"] == "cache", "status"]) == ["repaired"]
    assert np.array_equal(np.asarray(open_run(path).masks.bits), np.asarray(run.masks.bits))
    assert cache.read_bytes() == (run.path / "masks.bits").read_bytes()
    # an older format (or a matrix built before masks were added) is a stale cache: rebuilt silently
    data = bytearray(cache.read_bytes())
    data[8:12] = (1).to_bytes(4, "little")
    cache.write_bytes(bytes(data))
    assert np.array_equal(np.asarray(open_run(path).masks.bits), np.asarray(run.masks.bits))
    assert cache.read_bytes() == (run.path / "masks.bits").read_bytes()


def test_registry_paths_cannot_leave_the_run(run, tmp_path):
    path = tmp_path / run.id
    shutil.copytree(run.path, path)
    record = path / "masks" / "000000.json"
    value = json.loads(record.read_text())
    value["extras"]["history"] = "../../../etc/passwd"
    record.write_text(json.dumps(sealed(value)))
    with pytest.raises(StoreError, match="refusing path"):
        open_run(path).history(0)


def test_the_same_generate_again_continues_an_incomplete_run(run, tmp_path, digits):
    """An interrupted run (here: its last mask's record gone) is continued by the identical call, without
    --resume; a damaged checkpoint is not an error: that mask trains from its start."""
    path = tmp_path / run.id
    shutil.copytree(run.path, path)
    (path / "masks" / "000002.json").unlink()
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "000002.npz").write_bytes(b"not a zip file")
    again = masklab.generate(runs_dir=tmp_path, data=digits, **TINY)
    assert again.complete and np.array_equal(np.asarray(again.masks.bits), np.asarray(run.masks.bits))
    assert not (path / "checkpoints").exists()


def test_opening_a_run_reads_run_json_once_not_once_per_mask(run, monkeypatch):
    """The repair hints of the records and mask files (they read run.json to say how to restore a mask) are
    worked out only for an error message: opening a run of 1,024 masks read run.json 7,168 times before."""
    from masklab.store import files as F

    reads: list[str] = []
    read_json = F.read_json
    monkeypatch.setattr(F, "read_json", lambda path: reads.append(path.name) or read_json(path))
    opened = open_run(run.path)
    opened.masks  # noqa: B018
    opened.model(opened.ids[0])
    assert reads.count("run.json") == 1 and reads.count("run.json") < len(opened.ids)
    mask_file = run.path / "masks" / "000000.bin"
    hint = F.lazy_repair_hint(mask_file)
    assert str(hint) == f"{hint}" == F.repair_hint(mask_file) and "masklab verify" in str(hint)
