"""`generate --jobs N --executor slurm` against a real SLURM (scripts/slurm-local.sh: one node, loopback only,
partitions `work` (preempted with requeue), `work-cancel` (preempted with cancel) and `urgent`). Each check
ends with the run bit-identical to one process, or with the right one-line message; every wait has a
timeout, so a hang fails the test instead of the suite. Skipped without sbatch or a controller that
answers, or without the script's partitions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab.config import RunConfig
from masklab.store.run import Run

# `make test` runs this file on one pytest-xdist worker (--dist loadfile): the tests share the one-node cluster,
# and a preemption test beside another would preempt that test's jobs
pytestmark = pytest.mark.slurm
pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[2]
# digits mlp (width 4), 8 masks of 10 epochs: each of 2 tasks trains 4 masks, a few seconds each, long enough
# to act on a task between its first mask and its last
CONFIG = RunConfig(masks=8, epochs=10, width=4.0, stack=1)
FLAGS = ["--masks", "8", "--epochs", "10", "--width", "4", "--stack", "1"]
RUN_TIMEOUT_S = 240  # the longest a check may take; past it the submitter is killed and the test fails


def _answer(argv: list[str], timeout: float = 15) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


@pytest.fixture(scope="module")
def cluster():
    """Skip (with the reason) unless a SLURM from scripts/slurm-local.sh answers here."""
    for command in ("sbatch", "squeue", "sacct", "scontrol", "srun"):
        if shutil.which(command) is None:
            pytest.skip(f"no {command} on PATH: run scripts/slurm-local.sh (as root) for the slurm tests")
    ping = _answer(["scontrol", "ping"])
    if ping is None or ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.skip("the SLURM controller does not answer `scontrol ping`: start it with scripts/slurm-local.sh")
    parts = _answer(["sinfo", "-h", "-o", "%P"])
    names = {p.strip().rstrip("*") for p in parts.stdout.split()} if parts is not None else set()
    if not {"work", "work-cancel", "urgent"} <= names:
        pytest.skip(f"partitions work, work-cancel, urgent missing (have {sorted(names)}): run scripts/slurm-local.sh")
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Run:
    """The run one process makes (its 8 masks in one stack: the same bits as the tasks' stacks of one, in a
    third of the time)."""
    return masklab.generate(CONFIG.replace(stack=8), runs_dir=tmp_path_factory.mktemp("one"))


def same_run(a: Run, b: Run) -> None:
    assert a.id == b.id and a.ids == b.ids
    assert np.array_equal(np.asarray(a.masks.bits), np.asarray(b.masks.bits))
    drop = ["seconds", "finished"]
    assert a.table.drop(columns=drop).equals(b.table.drop(columns=drop))


def same_first_masks(a: Run, b: Run) -> None:
    """b, a run of the same settings with more masks, begins with a's masks (mask i depends on its seeds only)."""
    n = len(a.ids)
    assert b.ids[:n] == a.ids and len(b.ids) > n
    assert np.array_equal(np.asarray(a.masks.bits), np.asarray(b.masks.bits)[:n])
    drop = ["seconds", "finished"]
    assert a.table.drop(columns=drop).equals(b.table.drop(columns=drop).iloc[:n])


# the tests that act on tasks between a check and the next (Ctrl-C then a rerun; `masklab jobs` then
# `--cancel`) train 3x the masks: with 3 masks left a task could end between the two on a loaded machine
LONG_MASKS = 24


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start(runs: Path, *extra: str, jobs: int = 2, cwd: Path | None = None, masks: int = 8) -> subprocess.Popen:
    flags = [*FLAGS[:1], str(masks), *FLAGS[2:]]  # FLAGS with --masks `masks`
    return subprocess.Popen([sys.executable, "-m", "masklab", "generate", *flags, "--runs-dir", str(runs),
                             "--jobs", str(jobs), "--executor", "slurm", *extra], env=_env(), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Submitter:
    """A `masklab generate --jobs` process and its run; `finish` never waits more than RUN_TIMEOUT_S."""

    def __init__(self, runs: Path, *extra: str, jobs: int = 2, cwd: Path | None = None, masks: int = 8):
        self.runs = runs
        self.masks = masks
        self.proc = start(runs, *extra, jobs=jobs, cwd=cwd, masks=masks)
        self.started = time.monotonic()

    @property
    def path(self) -> Path:
        return self.runs / CONFIG.replace(masks=self.masks).run_id

    def job_ids(self) -> list[str]:
        try:
            return json.loads((self.path / "jobs" / "record.json").read_text())["job_ids"]
        except (OSError, ValueError, KeyError):
            return []

    def finish(self, timeout: float = RUN_TIMEOUT_S, from_now: bool = False) -> tuple[int, str, str]:
        """Its exit code, stdout and stderr, once it ends within `timeout` s of its start (or of now)."""
        spent = 0.0 if from_now else time.monotonic() - self.started
        try:
            out, err = self.proc.communicate(timeout=max(1.0, timeout - spent))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            _cancel(self.job_ids())
            pytest.fail(f"masklab generate --jobs hung for {timeout} s (killed); stderr: {err[-2000:]}")
        return self.proc.returncode, out, err


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        _answer(["scancel", *{j.split("_")[0] for j in job_ids}])


def wait_until(predicate, what: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the submitter ended ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def states(job_ids: list[str]) -> dict[str, str]:
    answer = _answer(["squeue", "-h", "-r", "-t", "all", "-j", ",".join({j.split("_")[0] for j in job_ids}),
                      "-o", "%i|%T"])
    return dict(line.split("|") for line in answer.stdout.split()) if answer is not None else {}


def first_mask_and_running(sub: Submitter) -> list[str]:
    """Wait until both tasks run and a mask is stored; their ids."""
    wait_until(lambda: len(sub.job_ids()) == 2, "the job record", proc=sub.proc)
    ids = sub.job_ids()
    wait_until(lambda: set(states(ids).values()) == {"RUNNING"} and any((sub.path / "masks").glob("*.json")),
               "both tasks running with a mask stored", proc=sub.proc)
    return ids


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("masklab:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


# ---- the checks -------------------------------------------------------------------------------------------
def test_array_from_another_directory_equals_one_process_and_a_rerun_submits_nothing(cluster, reference,
                                                                                     tmp_path):
    """A job array (2 minutes per task: the early signal is scaled to it, no task is signalled early),
    `--runs-dir` relative and the tasks started in another directory (`--slurm-extra chdir=/`), one CPU
    each (torch threads follow), a free-form sbatch option; then `masklab jobs` and a rerun."""
    sub = Submitter(Path("runs"), "--slurm-time", "2", "--slurm-cpus-per-task", "1", "--slurm-extra", "chdir=/",
                    "--slurm-extra", "comment=masklab-test", cwd=tmp_path)
    sub.runs = tmp_path / "runs"
    code, out, err = sub.finish()
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"runs/{CONFIG.run_id}"
    same_run(reference, Run(sub.path))
    script = next((sub.path / "submitit").glob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@15" in script and "#SBATCH --chdir=/" in script
    assert "requeued" not in err  # the 2-minute limit was never near: no task was signalled
    ids = sub.job_ids()
    comment = _answer(["squeue", "-h", "-t", "all", "-j", ids[0].split("_")[0], "-o", "%k"])
    assert comment is not None and "masklab-test" in comment.stdout
    from masklab.scale.jobs import job_table

    table = job_table(sub.path)
    assert list(table["state"]) == ["DONE", "DONE"] and list(table["threads"]) == [1, 1]
    assert list(table["masks_stored"]) == list(table["masks_planned"]) == [4, 4]
    again = Submitter(tmp_path / "runs", "--slurm-time", "2")
    code, out, err = again.finish(60)
    assert code == 0 and "complete: nothing to submit" in out and again.job_ids() == ids


def test_requeue_resumes(cluster, reference, tmp_path):
    sub = Submitter(tmp_path / "runs", "--slurm-time", "10")
    ids = first_mask_and_running(sub)
    assert _answer(["scontrol", "requeue", ids[0]]).returncode == 0
    code, out, err = sub.finish()
    assert code == 0, err
    assert re.search(rf"task 0 of 2 \(SLURM job {ids[0]}\): PENDING \(.*requeued once\)", err), err
    same_run(reference, Run(sub.path))


def _preempt() -> None:
    """A job of the urgent partition that needs the whole node: it preempts what runs in work / work-cancel."""
    cpus = _answer(["sinfo", "-h", "-p", "urgent", "-o", "%c"]).stdout.split()[0]
    answer = _answer(["sbatch", "-p", "urgent", "-c", cpus, "-t", "1", "-o", "/dev/null", "--wrap", "sleep 3"])
    assert answer is not None and answer.returncode == 0, answer


def test_preemption_with_requeue_resumes(cluster, reference, tmp_path):
    sub = Submitter(tmp_path / "runs", "--slurm-partition", "work", "--slurm-time", "10")
    ids = first_mask_and_running(sub)
    _preempt()
    code, out, err = sub.finish()
    assert code == 0, err
    assert "requeued" in err
    same_run(reference, Run(sub.path))
    assert ids == sub.job_ids()


def test_preemption_with_cancel_is_one_line_and_a_rerun_resumes(cluster, reference, tmp_path):
    """Preempted while starting (before submitit can requeue it from its signal handler: a task that gets
    there first is requeued, and the run then ends complete, also right), the task ends PREEMPTED."""
    sub = Submitter(tmp_path / "runs", "--slurm-partition", "work-cancel", "--slurm-time", "10", "--quiet")
    wait_until(lambda: len(sub.job_ids()) == 2, "the job record", proc=sub.proc)
    ids = sub.job_ids()
    wait_until(lambda: set(states(ids).values()) == {"RUNNING"}, "both tasks running", proc=sub.proc)
    _preempt()
    code, out, err = sub.finish()
    if code == 0:
        same_run(reference, Run(sub.path))
        return
    line = one_line(err)
    assert code == 2
    assert re.search(rf"task [01] of 2 \(SLURM job {ids[0].split('_')[0]}_[01]\) was preempted", line), line
    assert "PREEMPTED" in line and "its log: " in line and "rerun the same command to resume" in line
    assert str(sub.path / "submitit") in line  # the log's path, even with --quiet
    rerun = Submitter(tmp_path / "runs", "--slurm-partition", "work-cancel", "--slurm-time", "10", "--quiet")
    code, out, err = rerun.finish()
    assert code == 0, err
    same_run(reference, Run(rerun.path))


def test_scancel_is_one_line_and_a_rerun_resumes(cluster, reference, tmp_path):
    sub = Submitter(tmp_path / "runs", "--slurm-time", "10", "--quiet")
    ids = first_mask_and_running(sub)
    assert _answer(["scancel", ids[1]]).returncode == 0
    code, out, err = sub.finish()
    line = one_line(err)
    # (sacct adds who cancelled it, "CANCELLED (by root)", once accounting has recorded it)
    assert code == 2 and f"task 1 of 2 (SLURM job {ids[1]}) was cancelled: CANCELLED" in line, line
    assert re.search(r"\d of its 4 masks are stored: rerun the same command to resume", line), line
    rerun = Submitter(tmp_path / "runs", "--slurm-time", "10", "--quiet")
    code, out, err = rerun.finish()
    assert code == 0, err
    same_run(reference, Run(rerun.path))


def test_ctrl_c_leaves_the_tasks_running_and_a_rerun_waits_for_them(cluster, reference, tmp_path):
    sub = Submitter(tmp_path / "runs", "--slurm-time", "10", masks=LONG_MASKS)
    ids = first_mask_and_running(sub)
    sub.proc.send_signal(signal.SIGINT)
    code, out, err = sub.finish(30, from_now=True)
    line = one_line(err)
    assert code == 130 and "keep running" in line and ids[0] in line and f"masklab jobs {sub.path} --cancel" in line
    assert set(states(ids).values()) <= {"RUNNING", "COMPLETING", "COMPLETED"}
    rerun = Submitter(tmp_path / "runs", "--slurm-time", "10", masks=LONG_MASKS)
    code, out, err = rerun.finish()
    assert code == 0, err
    assert "still running" in out and rerun.job_ids() == ids  # attached: nothing submitted again
    same_first_masks(reference, Run(rerun.path))


def test_masklab_jobs_cancel_then_a_rerun_resumes(cluster, reference, tmp_path):
    sub = Submitter(tmp_path / "runs", "--slurm-time", "10", "--no-wait", "--quiet", masks=LONG_MASKS)
    code, out, err = sub.finish(60)
    assert code == 0 and out.startswith("jobs: "), err
    ids = sub.job_ids()
    wait_until(lambda: set(states(ids).values()) == {"RUNNING"}, "both tasks running")
    shown = subprocess.run([sys.executable, "-m", "masklab", "jobs", str(sub.path)], env=_env(), capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.count("RUNNING") == 2, shown
    cancel = subprocess.run([sys.executable, "-m", "masklab", "jobs", str(sub.path), "--cancel"], env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0 and f"cancelled 2 task(s): {' '.join(ids)}" in cancel.stdout, cancel
    wait_until(lambda: set(states(ids).values()) == {"CANCELLED"}, "both tasks cancelled", timeout=60)
    rerun = Submitter(tmp_path / "runs", "--slurm-time", "10", "--quiet", masks=LONG_MASKS)
    code, out, err = rerun.finish()
    assert code == 0, err
    assert rerun.job_ids() != ids
    same_first_masks(reference, Run(rerun.path))


def test_short_time_limits_are_refused_up_front(cluster, tmp_path):
    sub = Submitter(tmp_path / "runs", "--slurm-time", "1")
    code, out, err = sub.finish(60)
    line = one_line(err)
    assert code == 2 and "time = 1 must be an integer >= 2" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, said", [
    (["--slurm-partition", "nosuch"], "invalid partition specified: nosuch"),
    (["--slurm-mem", "100000GB"], "Requested node configuration is not available"),
    (["--slurm-gpus-per-task", "1"], "Invalid generic resource (gres) specification"),
])
def test_sbatch_refusals_are_one_line_and_leave_no_run(cluster, tmp_path, flags, said):
    sub = Submitter(tmp_path / "runs", *flags)
    code, out, err = sub.finish(60)
    line = one_line(err)
    assert code == 2 and "sbatch refused the job array: " in line and line.count(said) == 1, line
    assert not sub.path.exists()


def test_the_docs_slurmcluster_recipe_gives_the_exact_distances(cluster, tmp_path):
    """docs/scale.md's dask-jobqueue recipe, run as written with this machine's settings line: workers as
    SLURM jobs (loopback only), waited for, one thread each."""
    pytest.importorskip("dask_jobqueue")
    text = (REPO / "docs" / "scale.md").read_text()
    block = text.split("<!-- recipe: slurmcluster", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    run = masklab.generate(runs_dir=tmp_path / "runs", masks=6, epochs=1, width=0.25)
    lines = block.splitlines()
    settings = [i for i, line in enumerate(lines) if line.startswith("settings = ")]
    assert len(settings) == 1 and "jobs = 4" in lines and 'masklab.open_run("runs/<run-id>")' in block
    lines[settings[0]] = ("settings = dict(cores=1, processes=1, memory='2GB', walltime='00:10:00', queue='work', "
                          "python=sys.executable, log_directory=LOGS, "
                          "scheduler_options={'host': '127.0.0.1', 'dashboard_address': '127.0.0.1:0'}, "
                          "worker_extra_args=['--host', '127.0.0.1', '--dashboard-address', '127.0.0.1:0'])")
    code = "\n".join(lines).replace("jobs = 4", "jobs = 2").replace('"runs/<run-id>"', "RUN")
    scope = {"sys": sys, "LOGS": str(tmp_path / "logs"), "RUN": str(run.path)}
    exec(compile(code, "docs/scale.md (slurmcluster recipe)", "exec"), scope)
    assert scope["table"].equals(masklab.distances(run.masks, metric="hamming_norm", form="square"))
