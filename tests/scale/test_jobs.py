"""The wait for shard jobs ends on every way a task can end, each said in one line; local jobs are bounded
and ended on interrupt; the job array's options. SLURM is played by small scripts on PATH here (what
squeue and sacct print is set per test), so each ending is checked at once and without a cluster; the
same endings against a real SLURM are in test_slurm.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab.cli import main
from masklab.config import RunConfig
from masklab.scale import executors, jobs
from masklab.scale.executors import SlurmOptions, sbatch_script
from masklab.store.run import Run

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[2]
TINY = ["--masks", "4", "--epochs", "1", "--width", "0.25", "--stack", "1"]

FAKE = {  # SLURM's commands, played: each prints $FAKE/<name>.out and exits with $FAKE/<name>.rc
    "sbatch": 'echo "$@" >> "$FAKE/sbatch.args"; cat "$FAKE/sbatch.out" 2>/dev/null; '
              'cat "$FAKE/sbatch.err" >&2 2>/dev/null; exit $(cat "$FAKE/sbatch.rc" 2>/dev/null || echo 0)',
    "squeue": 'cat "$FAKE/squeue.out" 2>/dev/null; cat "$FAKE/squeue.err" >&2 2>/dev/null; '
              'exit $(cat "$FAKE/squeue.rc" 2>/dev/null || echo 0)',
    "sacct": 'cat "$FAKE/sacct.out" 2>/dev/null; cat "$FAKE/sacct.err" >&2 2>/dev/null; '
             'exit $(cat "$FAKE/sacct.rc" 2>/dev/null || echo 0)',
    "scontrol": 'echo "Slurmctld(primary) at fake is UP"',
    "scancel": 'echo "$@" >> "$FAKE/scancel.args"',
    "srun": "exit 0",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "fake"
    folder.mkdir()
    for name, body in FAKE.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    (folder / "sbatch.out").write_text("Submitted batch job 4242\n")
    monkeypatch.setenv("FAKE", str(folder))
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(jobs, "TERMINAL_GRACE_S", 0.3)
    monkeypatch.setattr(jobs, "UNKNOWN_LIMIT_S", 0.5)
    monkeypatch.setattr(jobs, "CONTROLLER_LIMIT_S", 0.5)
    monkeypatch.setitem(jobs.POLL_S, "slurm", 0.05)
    return folder


def squeue_says(fake: Path, *lines: str, rc: int = 0, err: str = "") -> None:
    (fake / "squeue.out").write_text("".join(f"{line}\n" for line in lines))
    (fake / "squeue.rc").write_text(str(rc))
    (fake / "squeue.err").write_text(err)


def no_accounting(fake: Path) -> None:
    (fake / "sacct.out").write_text("")
    (fake / "sacct.err").write_text("sacct: error: Slurm accounting storage is disabled\n")
    (fake / "sacct.rc").write_text("1")


def generate_slurm(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["generate", *TINY, "--runs-dir", str(tmp_path / "runs"), "--jobs", "2", "--executor", "slurm",
                 "--quiet", *extra])
    return code, capsys.readouterr().err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("state, said", [
    ("PREEMPTED", "was preempted and not requeued (its partition's PreemptMode cancels): PREEMPTED"),
    ("CANCELLED", "was cancelled: CANCELLED"),
    ("TIMEOUT", "ran out of its time limit: TIMEOUT"),
    ("NODE_FAIL", "lost its node: NODE_FAIL"),
    ("OUT_OF_MEMORY", "ran out of memory (raise --slurm-mem): OUT_OF_MEMORY"),
    ("FAILED", "failed: FAILED"),
])
def test_every_terminal_state_ends_the_wait_in_one_line(fake_slurm, tmp_path, capsys, state, said):
    squeue_says(fake_slurm, f"4242_0|{state}|None", f"4242_1|{state}|None")
    no_accounting(fake_slurm)
    code, err = generate_slurm(tmp_path, capsys)
    run = tmp_path / "runs" / RunConfig(masks=4, epochs=1, width=0.25).run_id
    assert code == 2 and err.count("\n") == 1, err
    assert f"task 0 of 2 (SLURM job 4242_0) {said}; its log: {run}/submitit/4242_0_0_log.err; 0 of its 2 masks " \
           "are stored (1 more task(s) ended too: 4242_1): rerun the same command to resume" in err, err


@pytest.mark.timeout(60)
def test_a_task_slurm_forgot_without_accounting_ends_the_wait(fake_slurm, tmp_path, capsys):
    squeue_says(fake_slurm, rc=1, err="slurm_load_jobs error: Invalid job id specified\n")
    no_accounting(fake_slurm)
    code, err = generate_slurm(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "is no longer known to SLURM" in err, err


@pytest.mark.timeout(60)
def test_a_silent_controller_ends_the_wait(fake_slurm, tmp_path, capsys):
    squeue_says(fake_slurm, rc=1, err="squeue: error: Unable to contact slurm controller (connect failure)\n")
    code, err = generate_slurm(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "the SLURM controller has not answered" in err, err
    assert "Unable to contact slurm controller" in err and "rerun the same command to wait for them again" in err


@pytest.mark.timeout(60)
def test_sacct_says_who_cancelled_and_requeues_are_shown(fake_slurm, tmp_path, capsys):
    squeue_says(fake_slurm, "4242_0|RUNNING|None", "4242_1|RUNNING|None")
    sub = executors.submit_shards([RunConfig(masks=4, epochs=1, width=0.25)], tmp_path / "runs", 2, "slurm",
                                  wait=False)
    watch = jobs.Watch(sub)
    watch.poll()
    squeue_says(fake_slurm, "4242_0|PENDING|BeginTime", "4242_1|CANCELLED|None")
    (fake_slurm / "sacct.out").write_text("4242_1|CANCELLED by 0|None|0:15\n")
    lines = watch.poll()
    assert "task 0 of 2 (SLURM job 4242_0): PENDING (BeginTime, requeued once)" in lines
    assert "task 1 of 2 (SLURM job 4242_1): CANCELLED (by root, signal 15)" in lines


@pytest.mark.timeout(60)
def test_sbatch_refusal_is_its_own_line_once_and_leaves_no_run(fake_slurm, tmp_path, capsys):
    (fake_slurm / "sbatch.out").write_text("")
    (fake_slurm / "sbatch.err").write_text("sbatch: error: invalid partition specified: nosuch\n"
                                           "sbatch: error: Batch job submission failed: Invalid partition name "
                                           "specified\n")
    (fake_slurm / "sbatch.rc").write_text("1")
    code, err = generate_slurm(tmp_path, capsys, "--slurm-partition", "nosuch")
    assert code == 2 and err.count("\n") == 1 and err.count("invalid partition specified: nosuch") == 1, err
    assert "nothing was submitted" in err
    assert not any((tmp_path / "runs").iterdir())  # the run made for the jobs is gone again


@pytest.mark.timeout(60)
def test_a_stopped_controller_is_one_line_before_anything_is_submitted(fake_slurm, tmp_path, capsys):
    (fake_slurm / "scontrol").write_text('#!/bin/sh\necho "Slurmctld(primary) at fake is DOWN"\nexit 1\n')
    code, err = generate_slurm(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "the SLURM controller does not answer" in err, err
    assert "is DOWN" in err and not (fake_slurm / "sbatch.args").exists()  # sbatch never called
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.timeout(60)
def test_a_rerun_attaches_to_running_jobs_and_a_complete_run_submits_nothing(fake_slurm, tmp_path, capsys):
    config = RunConfig(masks=4, epochs=1, width=0.25)
    squeue_says(fake_slurm, "4242_0|RUNNING|None", "4242_1|PENDING|Priority")
    first = executors.submit_shards([config], tmp_path / "runs", 2, "slurm", wait=False)
    (fake_slurm / "sbatch.out").write_text("Submitted batch job 5555\n")
    again = executors.submit_shards([config], tmp_path / "runs", 2, "slurm", wait=False)
    assert again.attached and again.job_ids == first.job_ids == ["4242_0", "4242_1"]
    assert (fake_slurm / "sbatch.args").read_text().count("\n") == 1  # one sbatch call only
    masklab.generate(config, runs_dir=tmp_path / "runs", resume=True)  # (the tasks' work, done here)
    squeue_says(fake_slurm, "4242_0|COMPLETED|None", "4242_1|COMPLETED|None")
    messages: list[str] = []
    done = executors.submit_shards([config], tmp_path / "runs", 2, "slurm", log=messages.append)
    assert done.job_ids == [] and any("complete: nothing to submit" in m for m in messages)
    assert (fake_slurm / "sbatch.args").read_text().count("\n") == 1


def test_the_job_array_carries_its_options_and_a_signal_scaled_to_its_time(tmp_path):
    options = SlurmOptions(partition="gpu", time=240, account="proj42", qos="long", constraint="a100",
                           gres="gpu:a100:1", extra=("mail-type=END", "exclusive"))
    script = sbatch_script(options, 4, tmp_path / "submitit")
    for line in ("#SBATCH --account=proj42", "#SBATCH --qos=long", "#SBATCH --constraint=a100",
                 "#SBATCH --gres=gpu:a100:1", "#SBATCH --mail-type=END", "#SBATCH --exclusive",
                 "#SBATCH --signal=USR2@120"):
        assert line in script, line
    assert "#SBATCH --signal=USR2@15" in sbatch_script(SlurmOptions(time=2), 2, tmp_path)
    assert "#SBATCH --signal=USR2@60" in sbatch_script(SlurmOptions(time=20), 2, tmp_path)
    for bad, said in [({"time": 1}, "must be an integer >= 2"), ({"extra": ["array=0-3"]}, "set by masklab itself"),
                      ({"extra": ["--no such"]}, "is not an sbatch option"), ({"account": "a b"}, "without spaces")]:
        with pytest.raises(masklab.UserError, match=re.escape(said)):
            SlurmOptions.from_dict(bad)


def test_setup_lines_that_look_like_choosing_a_python_are_named():
    assert "does not choose the tasks' Python" in executors.setup_python_note(["source .venv/bin/activate"])
    assert executors.setup_python_note(["module load cuda"]) is None


def test_a_task_at_its_time_limit_without_a_new_mask_stops_with_one_line(tmp_path, monkeypatch):
    job = executors.ShardJob()
    job._runs = [tmp_path]
    job._mine = [(0, [0, 1])]
    job._started = time.time() - 90
    job._stored_at_start = 0
    (tmp_path / "masks").mkdir()
    monkeypatch.setattr(executors, "_at_time_limit", lambda: True)
    with pytest.raises(masklab.UserError, match="too short to train one stack; raise --slurm-time"):
        job.checkpoint([], "runs", 0, 1)
    (tmp_path / "masks" / "000000.json").write_text("{}")  # a mask stored since it started: requeue
    assert job.checkpoint([], "runs", 0, 1).args == ([], "runs", 0, 1)
    monkeypatch.setattr(executors, "_at_time_limit", lambda: False)  # a preemption: always requeue
    job._stored_at_start = 1
    assert job.checkpoint([], "runs", 0, 1) is not None


# ---- local processes ------------------------------------------------------------------------------------
class _NothingStarted(Exception):
    """Raised by the stand-in for submitit's map_array: the test sees how many jobs would start, none does."""


def test_jobs_are_capped_at_the_masks_and_the_cores(tmp_path, monkeypatch):
    """The cap is checked where the jobs are handed to submitit, which is replaced here: on code without a cap
    this test fails without starting anything (it once started 100,000 local jobs and exhausted the machine)."""
    import submitit

    handed: list[int] = []

    def map_array(self, fn, *iterables):
        handed.append(len(iterables[0]))
        raise _NothingStarted

    for engine in (submitit.LocalExecutor, submitit.SlurmExecutor, submitit.AutoExecutor):
        monkeypatch.setattr(engine, "map_array", map_array)
    monkeypatch.setattr(executors, "max_local_jobs", lambda: 3)
    said: list[str] = []
    runs = tmp_path / "runs"
    with pytest.raises(_NothingStarted):
        executors.submit_shards([RunConfig(masks=2, epochs=1, width=0.25)], runs, 100000, log=said.append)
    with pytest.raises(_NothingStarted):
        executors.submit_shards([RunConfig(masks=50, epochs=1, width=0.25)], runs, 100000, log=said.append)
    assert handed == [2, 3]
    assert said[0].startswith("--jobs 100000 capped at 2: the run has 2 masks")
    assert said[1].startswith("--jobs 100000 capped at 3: at most one local process per core (3)")
    assert not list(runs.iterdir())  # nothing was started: the runs made for the jobs are removed again
    assert executors.plan_jobs(10**6, [RunConfig(masks=10**6)], "slurm", said.append) == executors.MAX_ARRAY_TASKS


def test_local_jobs_beyond_the_cores_are_refused_before_submitit_sees_them(tmp_path, monkeypatch):
    """A second guard, in _submit itself: whatever its caller planned, it hands submitit at most one local
    process per core (here 2 of 2 is fine, 3 is refused before anything starts)."""
    import submitit

    handed: list[int] = []

    def map_array(self, fn, *iterables):
        handed.append(len(iterables[0]))
        raise _NothingStarted

    monkeypatch.setattr(submitit.LocalExecutor, "map_array", map_array)
    monkeypatch.setattr(executors, "max_local_jobs", lambda: 2)
    config = RunConfig(masks=8, epochs=1, width=0.25)
    runs = [tmp_path / config.run_id]
    args = ([config], tmp_path, runs, 3, "local", SlurmOptions(), tmp_path / "submitit")
    with pytest.raises(RuntimeError, match="3 local jobs exceed"):
        executors._submit(*args)
    assert handed == []
    with pytest.raises(_NothingStarted):
        executors._submit([config], tmp_path, runs, 2, "local", SlurmOptions(), tmp_path / "submitit")
    assert handed == [2]


def test_the_local_cap_is_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert executors.max_local_jobs() == 2


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _processes_of(folder: Path) -> list[int]:
    """Live processes whose command line names `folder` (submitit controllers and tasks of a run)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if os.fsencode(str(folder)) in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _task_pids(run: Path) -> list[int]:
    pids = []
    for path in sorted((run / "jobs").glob("task-*.json")):
        try:
            pids.append(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    return pids


LONG_EPOCHS = 1000  # a run the signal always ends first (about a minute per mask on 2 idle cores)


def _start(runs: Path, *extra: str, own_group: bool = False, epochs: int = 30) -> subprocess.Popen:
    """`generate --jobs 2` of 6 masks (2 submitit controllers and 2 task processes); `own_group`: in a process
    group of its own, as a terminal's foreground job is. A test that signals the command before its end asks
    for many `epochs`, so that on a loaded machine the run cannot finish before the signal (it never trains
    them: the signal ends it)."""
    return subprocess.Popen([sys.executable, "-m", "masklab", "generate", "--masks", "6", "--epochs", str(epochs),
                             "--width", "0.25", "--stack", "1", "--runs-dir", str(runs), "--jobs", "2", "--quiet",
                             *extra],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=own_group)


def _wait(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.timeout(180)
def test_sigterm_ends_every_local_job(tmp_path):
    runs = tmp_path / "runs"
    proc = _start(runs, epochs=LONG_EPOCHS)
    run = runs / RunConfig(masks=6, epochs=LONG_EPOCHS, width=0.25).run_id
    _wait(lambda: len(_task_pids(run)) == 2, "both tasks started")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.count("\n") == 1 and "ended the 2 local shard job(s)" in err, err
    _wait(lambda: not _processes_of(run / "submitit"), "no job process left", timeout=30)


@pytest.mark.timeout(180)
def test_ctrl_c_at_a_terminal_ends_every_local_job_in_one_line(tmp_path):
    """Ctrl-C at a terminal sends SIGINT to the whole foreground process group: the command, submitit's
    controllers and the tasks at once. One line, exit 130, and no job process outlives the command."""
    runs = tmp_path / "runs"
    proc = _start(runs, own_group=True, epochs=LONG_EPOCHS)
    run = runs / RunConfig(masks=6, epochs=LONG_EPOCHS, width=0.25).run_id
    try:
        _wait(lambda: len(_task_pids(run)) == 2, "both tasks started")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:  # (ends what is left only when the test failed before its end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _processes_of(run / "submitit"):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert proc.returncode == 130 and err.count("\n") == 1 and "local shard job(s)" in err, err
    _wait(lambda: not _processes_of(run / "submitit"), "no job process left", timeout=30)


@pytest.mark.timeout(240)
def test_a_killed_local_task_is_one_line_and_a_rerun_resumes(tmp_path):
    config = RunConfig(masks=6, epochs=30, width=0.25)
    runs = tmp_path / "runs"
    proc = _start(runs)
    run = runs / config.run_id
    _wait(lambda: len(_task_pids(run)) == 2, "both tasks started")
    victim = _task_pids(run)[0]
    os.kill(victim, signal.SIGKILL)  # what the out-of-memory killer does to a task
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert re.search(r"task 0 of 2 \(local process \d+\) ended without writing its result \(killed by a signal", err)
    assert "its log: " in err and "rerun the same command to resume" in err
    rerun = _start(runs)
    out, err = rerun.communicate(timeout=200)
    assert rerun.returncode == 0, err
    one = masklab.generate(config, runs_dir=tmp_path / "one")
    assert np.array_equal(np.asarray(one.masks.bits), np.asarray(Run(run).masks.bits))
