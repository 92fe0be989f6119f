"""Barrier pairs as submitit jobs (masklab.scale.pair_jobs): the numbers of this process, every pair once."""

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import submitit

from masklab.analysis.paths.jobs import BarrierTask, run_pairs
from masklab.errors import UserError
from masklab.scale import jobs, pair_jobs
from masklab.scale.jobs import JobFailed, JobsInterrupted, _children, _task_alive
from masklab.scale.pair_jobs import SubmititEngine
from masklab.scale.slurm import TaskState

PAIRS = [(0, 1), (0, 2), (1, 2)]


def _kill_the_task_when_it_starts(stop: threading.Event) -> None:
    """SIGKILL the task process of this test's one submitit job (a child of its controller, itself a child of
    this process) as soon as it appears: only our own descendants that are submitit task processes."""
    while not stop.is_set():
        for controller in _children(os.getpid()):
            for child in _children(controller):
                if _task_alive(child):
                    os.kill(child, signal.SIGKILL)
                    return
        time.sleep(0.02)


def test_a_killed_local_job_is_one_line_and_a_rerun_resumes_with_the_numbers_of_this_process(tiny_run, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setattr(jobs, "LOCAL_GRACE_S", 0.2)  # a killed process has no result to wait for

    def task(name: str) -> BarrierTask:
        return BarrierTask(run_path=str(tiny_run.path), folder=str(tmp_path / name), points=3)

    here, curves, _ = run_pairs(task("here"), PAIRS)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_task_when_it_starts, args=(stop,))
    killer.start()
    try:
        with pytest.raises(JobFailed, match=r"barrier task 0 of 1 \(local process \d+\) (was killed|ended without "
                           r"writing its result).*0 of 3 pairs are stored: rerun the same analysis") as failed:
            run_pairs(task("jobs"), PAIRS, SubmititEngine(1, "local"))
    finally:
        stop.set()
        killer.join()
    assert "\n" not in str(failed.value)
    seen: list[int] = []
    there, there_curves, pending = run_pairs(task("jobs"), PAIRS, SubmititEngine(2, "local"), seen.append)
    assert pending == 3 and sum(seen) == 3
    pd.testing.assert_frame_equal(there, here, check_exact=True)
    pd.testing.assert_frame_equal(there_curves, curves, check_exact=True)
    assert (tmp_path / "jobs" / "submitit").is_dir()


class _Job:
    """A submitted job as the wait sees it, with no process behind it."""

    def __init__(self, job_id: str, folder: Path, code: int | None = None):
        self.job_id = job_id
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl", stderr=folder / f"{job_id}.err")
        if code is not None or job_id.isdigit():
            self._process = SimpleNamespace(poll=lambda: code)


def _fake(tmp_path: Path, executor: str, jobs: list) -> tuple:
    task = BarrierTask(run_path=str(tmp_path / "run"), folder=str(tmp_path / "barriers"), points=3)
    return pair_jobs.submission(jobs, executor, tmp_path / "barriers" / "submitit", task), task


@pytest.mark.parametrize("state", ["CANCELLED", "PREEMPTED", "TIMEOUT"])
def test_slurm_tasks_that_end_without_their_result_are_one_line_not_a_hang(tmp_path, monkeypatch, state):
    """The old wait polled job.done() forever on a task SLURM had cancelled or preempted without requeueing."""
    monkeypatch.setattr(jobs, "TERMINAL_GRACE_S", 0.0)
    monkeypatch.setattr(jobs, "task_states", lambda ids: {i: TaskState(state, by="root") for i in ids})
    sub, task = _fake(tmp_path, "slurm", [_Job("12_0", tmp_path)])
    with pytest.raises(JobFailed, match=f"barrier task 0 of 1 \\(SLURM job 12_0\\) .*{state}.*0 of 3 pairs"):
        pair_jobs.wait(sub, task, PAIRS, poll_s=0.01)


def test_ctrl_c_during_the_wait_ends_the_local_jobs_in_one_line(tmp_path, monkeypatch):
    ended: list = []
    monkeypatch.setattr(pair_jobs, "end_local_jobs", lambda sub: ended.append(sub) or [4242])

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(pair_jobs.time, "sleep", interrupt)
    sub, task = _fake(tmp_path, "local", [_Job("4242", tmp_path, code=None)])
    with pytest.raises(JobsInterrupted, match="ended the 1 local barrier job.*pids 4242.*0 of 3 pairs are stored"):
        pair_jobs.wait(sub, task, PAIRS, poll_s=0.01)
    assert ended == [sub]


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
