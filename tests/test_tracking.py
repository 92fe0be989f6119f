"""Experiment tracking (masklab/tracking.py): the per-epoch history as one table, and as TensorBoard event files
that TensorBoard's own reader reads back with the same values."""

import shutil

import numpy as np
import pandas as pd
import pytest

import masklab
from masklab import tracking
from masklab.cli import main


def test_history_table_is_every_masks_history_and_export_writes_it(tiny_run, tmp_path, monkeypatch, capsys):
    table = masklab.history_table(tiny_run)
    assert list(table.columns[:8]) == tracking.HISTORY_COLUMNS
    assert len(table) == len(tiny_run) * tiny_run.config.epochs
    for i in tiny_run.ids:
        own = tiny_run.history(i)
        rows = table[table["mask_id"] == i]
        assert rows["test_acc"].tolist() == own["test_acc"].tolist() and rows["epoch"].tolist() == own["epoch"].tolist()
    out = masklab.export_history(tiny_run, tmp_path / "h.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out), table, check_dtype=False)
    # the command: default <run id>-history.csv in the current folder, nothing written into the run
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tiny_run.path.rglob("*"))
    assert main(["export-history", str(tiny_run.path)]) == 0
    path = tmp_path / f"{tiny_run.id}-history.csv"
    assert capsys.readouterr().out.splitlines()[-1] == path.name
    pd.testing.assert_frame_equal(pd.read_csv(path), table, check_dtype=False)
    assert sorted(p.name for p in tiny_run.path.rglob("*")) == before
    assert main(["export-history", str(tiny_run.path), "--out", "h.txt"]) == 2
    assert "--out h.txt: give a .csv or .parquet file" in capsys.readouterr().err


def test_tensorboard_reads_back_every_masks_history(tiny_run, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / tiny_run.id
    shutil.copytree(tiny_run.path, path)
    assert main(["export-history", str(path), "--tensorboard", "--out", str(tmp_path / "h.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"TensorBoard event files: {path / 'tensorboard'}" and lines[-1] == str(tmp_path / "h.csv")
    run = masklab.open_run(path)
    for i in run.ids:
        history = run.history(i)
        events = EventAccumulator(str(path / "tensorboard" / f"mask-{i:06d}"))
        events.Reload()
        assert set(events.Tags()["scalars"]) == {tag for tag, _ in tracking.TAGS.values()}
        for column, (tag, factor) in tracking.TAGS.items():
            scalars = events.Scalars(tag)
            assert [s.step for s in scalars] == history["epoch"].tolist()
            # event files store 32-bit floats
            assert np.allclose([s.value for s in scalars], history[column].to_numpy(float) * factor, rtol=1e-6)
    first = (path / "tensorboard").rglob("events.out.tfevents.*")
    data = {p: p.read_bytes() for p in first}
    masklab.tracking.write_tensorboard(run)  # again: the same bytes (wall times from the run's creation)
    assert all(p.read_bytes() == b for p, b in data.items()) and len(data) == len(run)


def test_generate_writes_event_files_only_when_asked_and_the_run_is_the_same(tmp_path, digits, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    run = masklab.generate(runs_dir=tmp_path / "a", data=digits, masks=2, epochs=1, width=0.25, tensorboard=True)
    assert sorted(p.name for p in (run.path / "tensorboard").iterdir()) == ["mask-000000", "mask-000001"]
    plain = masklab.generate(runs_dir=tmp_path / "b", data=digits, masks=2, epochs=1, width=0.25)
    assert plain.id == run.id and not (plain.path / "tensorboard").exists()  # not hashed, not written by default
    assert np.array_equal(plain.masks.bits, run.masks.bits)
    # without the extra: one line naming it, before any training or file
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--masks", "2", "--epochs", "1", "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'masklab[tracking]'" in err and not (tmp_path / "runs").exists()
