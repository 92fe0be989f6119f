"""An imported run is checked on every open like a trained one: its import section, keep rule and shared weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import masklab
from masklab.errors import StoreError, UserError
from masklab.store.files import sealed
from masklab.store.run import Run


@pytest.fixture(scope="module")
def imported(mlp_checkpoints, tmp_path_factory):
    paths, _ = mlp_checkpoints
    return masklab.import_masks(paths[:2], "hidden-networks", keep=0.9, model="mlp", dataset="digits", width=0.25,
                                runs_dir=tmp_path_factory.mktemp("runs"))


@pytest.fixture
def copy(imported, tmp_path):
    path = tmp_path / "runs" / imported.id
    shutil.copytree(imported.path, path)
    return path


def _edit(path, change):
    meta = json.loads((path / "run.json").read_text())
    change(meta)
    (path / "run.json").write_text(json.dumps(sealed(meta)))


def test_the_run_opens_and_verifies(imported):
    table = Run(imported.path).verify()
    assert (table["status"] == "ok").all()
    assert "weights.npy" in set(table["path"]) and "run file" in set(table["kind"])


@pytest.mark.parametrize("change,match", [
    (lambda m: m["imported"].update(keep_fraction=0.8), "does not hash to the run's import digest"),
    (lambda m: m["imported"]["sources"][0].update(sha256="0" * 64), "does not hash to the run's import digest"),
    (lambda m: m["imported"].pop("mapping"), "lacks the field 'mapping'"),
    (lambda m: m.pop("imported"), "lacks the import section"),
    (lambda m: m["layers"][2].update(n_keep=576), "layer fc3 keeps 576 of 640 weights, but the reference rule"),
    (lambda m: m["files"].update({"../x": {"bytes": 1, "blake2b": "0" * 64}}), "refusing run file '../x'"),
])
def test_edits_of_run_json_are_caught_on_open(copy, change, match):
    _edit(copy, change)
    with pytest.raises(StoreError, match=match):
        Run(copy)


def test_an_edited_keep_fraction_in_config_toml_is_caught(copy):
    text = (copy / "config.toml").read_text().replace("keep_fraction = 0.9", "keep_fraction = 0.8")
    (copy / "config.toml").write_text(text)
    with pytest.raises(StoreError, match="keep_fraction"):
        Run(copy)


def test_damaged_shared_weights_are_caught(copy):
    weights = copy / "weights.npy"
    data = bytearray(weights.read_bytes())
    weights.write_bytes(bytes(data[:-4]))
    with pytest.raises(StoreError, match="weights.npy is truncated or corrupt"):
        Run(copy)
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    run = Run(copy)  # (same size: the checksum is checked where the weights are read)
    with pytest.raises(StoreError, match="weights.npy fails its checksum"):
        run.model(0)
    table = run.verify()
    assert table.loc[table["path"] == "weights.npy", "status"].item() == "problem"
    weights.unlink()
    with pytest.raises(StoreError, match="weights.npy is missing"):
        Run(copy)


def test_imported_runs_are_not_trained_further(imported):
    with pytest.raises(UserError, match="was imported"):
        masklab.generate(resume=imported.path, masks=5)
    with pytest.raises(UserError, match="imported run"):
        masklab.generate(imported.config.replace(name="again"), runs_dir=imported.path.parent)


def test_the_import_is_written_whole_or_not_at_all(mlp_checkpoints, tmp_path, monkeypatch):
    from masklab.store.writer import RunWriter

    paths, _ = mlp_checkpoints
    calls = []
    original = RunWriter.write_mask

    def failing(self, trained, device="cpu"):
        calls.append(trained.index)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(self, trained, device)

    monkeypatch.setattr(RunWriter, "write_mask", failing)
    with pytest.raises(OSError):
        masklab.import_masks(paths, "hidden-networks", keep=0.9, runs_dir=tmp_path / "runs")
    assert calls == [0, 1]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == []
    monkeypatch.setattr(RunWriter, "write_mask", original)
    run = masklab.import_masks(paths, "hidden-networks", keep=0.9, runs_dir=tmp_path / "runs")
    assert run.ids == [0, 1, 2] and np.asarray(run.masks.bits).shape[0] == 3


def test_show_and_runs_describe_an_imported_run_as_imported(imported, capsys):
    from masklab.cli import main

    assert main(["show", str(imported.path)]) == 0  # masks without a best or a training accuracy
    out = capsys.readouterr().out
    masks = out.split("\nmasks:\n")[1].split("\nlayers:")[0]
    assert "best_test_acc" in masks and "n/a" in masks
    assert main(["show", str(imported.path), "--mask", "0"]) == 0
    out = capsys.readouterr().out
    assert "(none: imported masks)" in out and "test_loss  " in out
    assert f"{imported.record(0)['test_loss']:.4f}" in out
    runs = masklab.list_runs(imported.path.parent)
    assert runs.loc[runs["run_id"] == imported.id, "epochs"].tolist() == [20]  # the checkpoints' own epoch


def test_a_damaged_imported_mask_is_restored_by_importing_its_source_again(mlp_checkpoints, imported, tmp_path,
                                                                           capsys):
    from masklab.cli import main

    paths, _ = mlp_checkpoints
    runs = tmp_path / "runs"
    run = masklab.import_masks(paths[:2], "hidden-networks", keep=0.9, model="mlp", dataset="digits", width=0.25,
                               runs_dir=runs)
    mask = run.path / "masks" / "000001.mask"
    data = bytearray(mask.read_bytes())
    data[100] ^= 1
    mask.write_bytes(bytes(data))
    assert main(["show", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "`masklab import` of the same source files again" in err and "generate --resume" not in err
    assert main(["verify", str(run.path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "mask 1 moved to" in out and "`masklab import` of the same source files again" in out
    assert "generate --resume" not in out
    assert len(Run(run.path)) == 1
    again = masklab.import_masks(paths[:2], "hidden-networks", keep=0.9, model="mlp", dataset="digits", width=0.25,
                                 runs_dir=runs)
    assert again.path == run.path and len(Run(run.path)) == 2
    np.testing.assert_array_equal(Run(run.path).masks.bits, imported.masks.bits)
