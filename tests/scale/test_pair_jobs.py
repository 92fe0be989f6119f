"""Barrier pairs as submitit jobs (masklab.scale.pair_jobs): the numbers of this process, every pair once."""

import pandas as pd
import pytest
import submitit

from masklab.analysis.paths.jobs import BarrierTask, run_pairs
from masklab.errors import UserError
from masklab.scale import pair_jobs
from masklab.scale.pair_jobs import SubmititEngine

PAIRS = [(0, 1), (0, 2), (1, 2)]


def test_local_jobs_give_the_numbers_of_this_process(tiny_run, tmp_path):
    def task(name: str) -> BarrierTask:
        return BarrierTask(run_path=str(tiny_run.path), folder=str(tmp_path / name), points=3)

    here, curves, _ = run_pairs(task("here"), PAIRS)
    seen: list[int] = []
    there, there_curves, pending = run_pairs(task("jobs"), PAIRS, SubmititEngine(2, "local"), seen.append)
    assert pending == 3 and sum(seen) == 3
    pd.testing.assert_frame_equal(there, here, check_exact=True)
    pd.testing.assert_frame_equal(there_curves, curves, check_exact=True)
    assert (tmp_path / "jobs" / "submitit").is_dir()


def test_bad_job_options_are_one_line_errors():
    with pytest.raises(UserError, match="--jobs 0 is invalid"):
        SubmititEngine(0)
    with pytest.raises(UserError, match="unknown"):
        SubmititEngine(2, "cloud")


def test_local_jobs_are_capped_at_the_cores_without_starting_one(tiny_run, tmp_path, monkeypatch):
    """submitit's map_array is replaced: the test sees how many jobs would start, and none does."""
    handed: list[int] = []

    class NothingStarted(Exception):
        pass

    def map_array(self, fn, *iterables):
        handed.append(len(iterables[0]))
        raise NothingStarted

    monkeypatch.setattr(submitit.LocalExecutor, "map_array", map_array)
    monkeypatch.setattr(pair_jobs, "max_local_jobs", lambda: 2)
    task = BarrierTask(run_path=str(tiny_run.path), folder=str(tmp_path / "jobs"), points=3)
    with pytest.raises(NothingStarted):
        SubmititEngine(100000, "local")(task, PAIRS)
    assert handed == [2]
