"""The results catalog (masklab.store.catalog): resolved settings, several writers at once, rebuilt from the run
directories when missing, stale or damaged."""

import json
import multiprocessing
import shutil
import sqlite3

import pandas as pd
import pytest

from masklab.store import catalog as C


@pytest.fixture
def runs(tiny_runs, tmp_path):
    """A runs folder of its own with two runs (copies of shared tiny runs)."""
    root = tmp_path / "runs"
    root.mkdir()
    for run in (tiny_runs(), tiny_runs(method="biprop")):
        shutil.copytree(run.path, root / run.path.name)
    return root


def add_analysis(run_dir, settings_id, settings, numbers):
    folder = run_dir / "analysis" / settings_id
    folder.mkdir(parents=True)
    (folder / C.SETTINGS_FILE).write_text(json.dumps({"settings_id": settings_id, "settings": settings,
                                                      "resolved": settings, "created": "2026-01-01T00:00:00",
                                                      "n_masks": 3}))
    (folder / C.KEY_NUMBERS_FILE).write_text(json.dumps(numbers))


def test_one_row_per_run_with_every_resolved_setting(runs):
    table = C.results(runs)
    assert len(table) == 2 and table["settings_id"].isna().all()
    by_method = table.set_index("method")
    # left at None in the configs (the method's default): resolved
    assert by_method.loc["edge-popup", "lr"] == 0.1 and by_method.loc["edge-popup", "weight_init"] == "signed-constant"
    assert by_method.loc["biprop", "weight_init"] == "kaiming-normal"
    assert (table["n_masks"] == 3).all() and table["test_acc_mean"].between(0, 1).all()
    assert "fingerprint" not in table.columns and (runs / C.CATALOG).is_file()
    sql = C.results(runs, sql="SELECT run_id, lr FROM runs WHERE method = 'biprop'")
    assert list(sql.columns) == ["run_id", "lr"] and len(sql) == 1


def test_every_analysis_of_a_run_is_listed_with_its_key_numbers(runs):
    run_dir = sorted(runs.iterdir())[0]
    C.results(runs)
    add_analysis(run_dir, "default", {}, [{"name": "matching all", "value": 0.52, "unit": "fraction", "n": 3,
                                          "text": "52%"}, {"name": "embedding", "value": None, "text": "MDS"}])
    add_analysis(run_dir, "1a2b3c4d", {"pairs": 10}, [{"name": "matching all", "value": 0.53, "n": 3}])
    table = C.results(runs)  # stale: the new folders are seen
    rows = table[table["run_id"] == run_dir.name].set_index("settings_id")
    assert set(rows.index) == {"default", "1a2b3c4d"} and len(table) == 3
    assert rows.loc["default", "matching all"] == 0.52 and rows.loc["1a2b3c4d", "matching all"] == 0.53
    assert json.loads(rows.loc["1a2b3c4d", "analysis_settings"]) == {"pairs": 10}
    assert "embedding" not in table.columns  # words only: in key_numbers.text, not a value column
    shutil.rmtree(run_dir)
    assert len(C.results(runs)) == 1  # a run gone from the folder is gone from the catalog


def test_deleting_the_catalog_rebuilds_the_same_table(runs):
    add_analysis(sorted(runs.iterdir())[1], "default", {}, [{"name": "matching all", "value": 0.5, "n": 3}])
    before = C.results(runs)
    for path in runs.glob(f"{C.CATALOG}*"):
        path.unlink()
    pd.testing.assert_frame_equal(C.results(runs), before)
    (runs / C.CATALOG).write_bytes(b"not a database at all" * 100)  # damaged: rebuilt as well
    pd.testing.assert_frame_equal(C.results(runs), before)


def _writer(runs_dir: str, name: str, count: int, go) -> None:
    conn = C.connect(runs_dir, busy_seconds=120)
    go.wait(120)  # both start writing together
    for i in range(count):
        run_id = f"{name}-{i:04d}"
        C.store_entry(conn, C.RunEntry(
            {"run_id": run_id, "path": f"/nowhere/{run_id}", "n_masks": i, "lr": 0.1, "fingerprint": "x"},
            [{"run_id": run_id, "settings_id": "default", "n_masks": i}],
            [{"run_id": run_id, "settings_id": "default", "name": "matching all", "value": i / count}]))
    conn.close()


def test_two_writer_processes_at_once_lose_no_row(tmp_path):
    context = multiprocessing.get_context("spawn")
    C.connect(tmp_path).close()
    go = context.Event()
    writers = [context.Process(target=_writer, args=(str(tmp_path), name, 150, go)) for name in ("a", "b")]
    for w in writers:
        w.start()
    go.set()
    for w in writers:
        w.join(300)
        assert w.exitcode == 0
    conn = sqlite3.connect(tmp_path / C.CATALOG)
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 300
    assert conn.execute("SELECT count(*) FROM analyses").fetchone()[0] == 300
    assert conn.execute("SELECT count(*) FROM key_numbers").fetchone()[0] == 300
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_run_already_open_is_used_only_while_nothing_it_read_has_changed(runs, monkeypatch):
    """read_entry(run_dir, run) takes the rows from `run` (analyze's, open already) instead of reading every record
    again, and reads the directory again once a record was removed (or added) after `run` read it."""
    from masklab.store.run import Run

    run_dir = sorted(runs.iterdir())[0]
    run = Run(run_dir)
    fresh = C.read_entry(run_dir)
    opened = []
    monkeypatch.setattr(C, "Run", lambda *a, **k: opened.append(a) or Run(*a, **k))
    reused = C.read_entry(run_dir, run)
    assert opened == [] and reused.run["n_masks"] == fresh.run["n_masks"] == len(run.ids)
    assert {k: v for k, v in reused.run.items() if k != "indexed"} == \
        {k: v for k, v in fresh.run.items() if k != "indexed"}
    for file in (run_dir / "masks").glob(f"{run.ids[-1]:06d}.*"):
        file.unlink()
    assert run.unchanged() is False
    again = C.read_entry(run_dir, run)
    assert len(opened) == 1 and again.run["n_masks"] == len(run.ids) - 1
