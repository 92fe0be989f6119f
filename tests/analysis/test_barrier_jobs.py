"""Barrier pairs as independent tasks (masklab.analysis.paths.jobs): a killed evaluation resumes without
evaluating a finished pair again, with the same numbers; a Dask cluster gives the same numbers as this process."""

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from masklab.analysis.paths.jobs import BarrierTask, DaskEngine, evaluate_pairs, pending_pairs, run_pairs

PAIRS = [(0, 1), (0, 2), (1, 2), (2, 3), (1, 3)]


@pytest.fixture(scope="module")
def run(tiny_runs):
    return tiny_runs(masks=4)


def task_for(run, folder, **changes) -> BarrierTask:
    return BarrierTask(run_path=str(run.path), folder=str(folder), **{"points": 4, **changes})


def test_a_killed_evaluation_resumes_without_evaluating_finished_pairs_again(run, tmp_path):
    whole = task_for(run, tmp_path / "whole")
    barriers, curves, pending = run_pairs(whole, PAIRS)
    assert pending == len(PAIRS) and list(zip(barriers["mask_a"], barriers["mask_b"])) == PAIRS
    assert len(curves) == 4 * len(PAIRS)

    # a process that is SIGKILLed after storing its second pair
    killed = task_for(run, tmp_path / "killed")
    script = textwrap.dedent(f"""
        import os, signal
        from masklab.analysis.paths.jobs import BarrierTask, evaluate_pairs
        task = BarrierTask(**{killed.__dict__!r})
        stored = []
        def after(n):
            stored.append(n)
            if len(stored) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        evaluate_pairs(task, {PAIRS!r}, after)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert pending_pairs(killed, PAIRS) == PAIRS[2:]
    first = {p: os.stat(tmp_path / "killed" / f"{p[0]}-{p[1]}.json").st_mtime_ns for p in PAIRS[:2]}
    assert evaluate_pairs(killed, PAIRS) == 3  # only the three missing pairs are evaluated
    assert first == {p: os.stat(tmp_path / "killed" / f"{p[0]}-{p[1]}.json").st_mtime_ns for p in PAIRS[:2]}
    resumed, resumed_curves, pending = run_pairs(killed, PAIRS)
    assert pending == 0
    pd.testing.assert_frame_equal(resumed, barriers, check_exact=True)
    pd.testing.assert_frame_equal(resumed_curves, curves, check_exact=True)


def test_results_of_other_settings_are_not_reused(run, tmp_path):
    task = task_for(run, tmp_path)
    run_pairs(task, PAIRS[:1])
    assert pending_pairs(task, PAIRS[:1]) == []
    assert pending_pairs(task_for(run, tmp_path, points=5), PAIRS[:1]) == PAIRS[:1]


def test_dask_workers_give_the_numbers_of_this_process(run, tmp_path):
    pytest.importorskip("distributed")
    from masklab.analysis.tiles import local_client

    here, _, _ = run_pairs(task_for(run, tmp_path / "here"), PAIRS)
    with local_client(2) as client:
        engine = DaskEngine(client, chunk=1)
        there, curves, pending = run_pairs(task_for(run, tmp_path / "dask"), PAIRS, engine)
        assert "2 workers" in engine.describe()
        # distributed's MALLOC_TRIM_THRESHOLD_ halved a worker's speed on a pair (a fixed mmap threshold)
        environ = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
        assert sorted(environ.values()) == [(None, "1"), (None, "1")]
    assert pending == len(PAIRS)
    pd.testing.assert_frame_equal(there, here, check_exact=True)


def test_in_process_evaluation_uses_the_open_run_and_gives_the_numbers_of_a_run_it_opens(run, tmp_path,
                                                                                        monkeypatch):
    from masklab.analysis.paths import jobs

    opened = run_pairs(task_for(run, tmp_path / "opened"), PAIRS[:2])
    jobs._CACHE.clear()  # a fresh process: nothing built yet

    def no_open(path):
        raise AssertionError("the run given to InProcess must not be opened again")

    monkeypatch.setattr(jobs, "open_run", no_open)
    given = run_pairs(task_for(run, tmp_path / "given"), PAIRS[:2], jobs.InProcess(run))
    pd.testing.assert_frame_equal(given[0], opened[0], check_exact=True)
    pd.testing.assert_frame_equal(given[1], opened[1], check_exact=True)
