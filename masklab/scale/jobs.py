"""The shard jobs of a submission: its record in the runs, the wait, the status view, `masklab jobs`.

Every run a submission writes records it in `<run>/jobs/record.json` (executor, job ids, the runs, where
the logs are), so that rerunning the same command while the jobs still run waits for them instead of
submitting more (`attach`), and `masklab jobs RUN` can show them (`job_table`) or cancel them
(`cancel_jobs`). Each task writes its progress (`<first run>/jobs/task-I.json`: pid, host, threads, epochs of
the masks in training) for the status view.

`wait_for` ends on every way a task can end, and says why in one line:
- its result (submitit's result file): done, or the task's own one-line error;
- SLURM: a terminal state (CANCELLED, PREEMPTED, TIMEOUT, NODE_FAIL, FAILED, OUT_OF_MEMORY, BOOT_FAIL,
  DEADLINE, or COMPLETED without a result) that lasts TERMINAL_GRACE_S (time for submitit's own requeue
  after the early signal, and for the result file to appear on a shared filesystem); a task neither squeue
  nor sacct knows for UNKNOWN_LIMIT_S (a cluster without accounting forgets a finished job after
  MinJobAge); a controller that answers nothing for CONTROLLER_LIMIT_S;
- local: a process that ended without a result (its signal or exit code).
Ctrl-C (or SIGTERM) during the wait ends every local job this command started; SLURM tasks keep running
and the message says how to wait for them again or cancel them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from masklab.config import RunConfig, read_config
from masklab.errors import UserError
from masklab.files import atomic_write, json_text, make_dirs, pid_alive
from masklab.scale.slurm import MEANING, TERMINAL, SlurmUnavailable, cancel, task_states
from masklab.store.paths import resolve_run
from masklab.store.shards import shard_masks

TERMINAL_GRACE_S = 15.0
UNKNOWN_LIMIT_S = 120.0
CONTROLLER_LIMIT_S = 300.0
POLL_S = {"local": 0.5, "slurm": 3.0}
LOCAL_GRACE_S = 3.0  # a local task writes its result before its process exits; allow the file system a moment
STOP_WAIT_S = 10.0  # after SIGINT, how long local jobs get to end before SIGKILL
FOLDER = "jobs"
REQUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
RAN_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "SUSPENDED"})
# SLURM states in which a result file may still be overwritten by the task's next lifetime (a preempted task
# passes through COMPLETING on its way back to the queue)
ACTIVE_BEFORE_RESULT = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                                  "REQUEUE_FED", "RESIZING", "SIGNALING", "SUSPENDED", "STOPPED"})
# terminal states that SLURM (not the task) brought about: they say why, whatever error the task pickled
ENDED_BY_SLURM = frozenset({"BOOT_FAIL", "CANCELLED", "DEADLINE", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                            "REVOKED", "TIMEOUT"})


class JobFailed(UserError):
    """A shard task ended without its result (killed, cancelled, preempted, out of time or memory): a fault of
    the environment, said in one line with the task, how it ended, its log and that rerunning resumes."""


class JobsInterrupted(KeyboardInterrupt):
    """The wait was interrupted; the message says what became of the jobs."""


def job_shard(job: int, run: int, jobs: int) -> int:
    """The shard of run number `run` that job `job` of `jobs` trains: dealt out rotated by the run's number,
    because with masks % jobs != 0 (3 masks, 2 jobs) job 0 would otherwise get the larger shard of every run."""
    return (job + run) % jobs


def task_masks(configs: Sequence[RunConfig], index: int, jobs: int) -> list[tuple[int, list[int]]]:
    """(run number, mask ids) that job `index` of `jobs` trains, for every run."""
    return [(r, shard_masks(c.masks, job_shard(index, r, jobs), jobs)) for r, c in enumerate(configs)]


# ---- the record -------------------------------------------------------------------------------------------
@dataclass
class JobRecord:
    """What a submission left in each of its runs (`<run>/jobs/record.json`)."""

    executor: str
    job_ids: list[str]
    runs: list[str]  # run ids, in submission order
    runs_dir: str
    folder: str  # submitit's folder (logs, results)
    masks: list[int]  # masks planned per run
    submitted: str = ""
    host: str = ""

    @property
    def jobs(self) -> int:
        return len(self.job_ids)


def record_path(run: Path) -> Path:
    return Path(run) / FOLDER / "record.json"


def progress_path(run: Path, index: int) -> Path:
    return Path(run) / FOLDER / f"task-{index}.json"


def read_record(run: Path) -> JobRecord | None:
    """The job record of `run`, or None (no submission, or a record that is not one: it is then ignored)."""
    path = record_path(run)
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
            return None
        values = json.loads(path.read_text())
        return JobRecord(**{k: values[k] for k in JobRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def make_folders(runs: Sequence[Path]) -> None:
    """Each run's `jobs/` folder (the record; the first run's also holds the tasks' progress files)."""
    for run in runs:
        make_dirs(Path(run) / FOLDER, root=Path(run), in_run=True)


def write_record(submission: Submission) -> None:
    for run in submission.runs:
        atomic_write(record_path(run), json_text(asdict(submission.record)).encode(), root=run, in_run=True)


def stored(run: Path, masks: int | None = None, ids: Sequence[int] | None = None) -> int:
    """How many masks of `run` are stored (records), among `ids` or the first `masks`."""
    try:
        names = set(os.listdir(Path(run) / "masks"))
    except OSError:
        return 0
    wanted = ids if ids is not None else range(masks or 0)
    return sum(1 for i in wanted if f"{i:06d}.json" in names)


def ids_text(job_ids: Sequence[str]) -> str:
    """"12_0 .. 12_3" for an array, the ids otherwise (at most 6 shown)."""
    if len(job_ids) > 2 and all("_" in j for j in job_ids) and len({j.split("_")[0] for j in job_ids}) == 1:
        return f"{job_ids[0]} .. {job_ids[-1]}"
    shown = " ".join(job_ids[:6])
    return shown + (f" (+{len(job_ids) - 6} more)" if len(job_ids) > 6 else "")


# ---- a submission ---------------------------------------------------------------------------------------
@dataclass
class Submission:
    """The shard jobs of one `submit_shards` call (or those it attached to): submitit's jobs, the runs
    they write, their configs and (once waited for) their results."""

    record: JobRecord
    runs: list[Path]
    configs: list[RunConfig]
    jobs: list = field(default_factory=list)  # submitit Job objects, one per task
    results: list[dict] = field(default_factory=list)
    attached: bool = False

    @property
    def executor(self) -> str:
        return self.record.executor

    @property
    def job_ids(self) -> list[str]:
        return list(self.record.job_ids)

    @classmethod
    def new(cls, submitted: list, runs: list[Path], configs: Sequence[RunConfig], executor: str,
            folder: Path) -> Submission:
        record = JobRecord(executor, [str(job.job_id) for job in submitted], [p.name for p in runs],
                           os.fspath(runs[0].parent), os.fspath(folder), [c.masks for c in configs],
                           datetime.now(UTC).isoformat(timespec="seconds"), socket.gethostname())
        return cls(record, list(runs), list(configs), list(submitted))

    @classmethod
    def complete(cls, runs: list[Path], executor: str) -> Submission:
        record = JobRecord(executor, [], [p.name for p in runs], os.fspath(runs[0].parent), "", [])
        return cls(record, list(runs), [_config(p) for p in runs])

    @classmethod
    def from_record(cls, record: JobRecord, runs: list[Path], configs: Sequence[RunConfig] | None = None
                    ) -> Submission:
        configs = list(configs) if configs is not None else [_config(p) for p in runs]
        return cls(record, list(runs), configs, [_job(record, job_id) for job_id in record.job_ids], attached=True)


def _config(run: Path) -> RunConfig:
    return read_config(Path(run) / "config.toml")


def _job(record: JobRecord, job_id: str):
    """A submitit Job for a recorded id (to read its result and log paths)."""
    if record.executor == "slurm":
        # submitit here, not at the top: every command loads this module (cli/options -> scale.executors), and
        # submitit's import costs more than the CLI's own start (0.37 s against 0.23 s, on the shared machine)
        from submitit.slurm.slurm import SlurmJob

        return SlurmJob(folder=record.folder, job_id=job_id)
    from submitit.local.local import LocalJob  # (see above)

    return LocalJob(folder=record.folder, job_id=job_id)


def attach(configs: Sequence[RunConfig], runs_dir: Path, jobs: int, executor: str) -> Submission | None:
    """The running submission recorded in these runs, to wait for instead of submitting again; None when
    there is none (or its jobs have all ended). Refuses when the runs are being written by jobs of another
    submission (other runs, or another executor)."""
    paths = [Path(runs_dir) / c.run_id for c in configs]
    records = [(p, read_record(p)) for p in paths if p.is_dir()]
    for path, record in records:
        if record is None or not _alive(record):
            continue
        if record.runs != [c.run_id for c in configs] or record.executor != executor:
            raise UserError(f"run {path} is being written by shard jobs of another submission ({record.executor}: "
                            f"{ids_text(record.job_ids)}); wait for them (`masklab jobs {path}`) or cancel them "
                            f"(`masklab jobs {path} --cancel`), then rerun")
        return Submission.from_record(record, paths, configs)
    return None


def _alive(record: JobRecord) -> bool:
    if record.executor == "slurm":
        try:
            return any(s.active for s in task_states(record.job_ids).values())
        except SlurmUnavailable:
            return False
    return record.host == socket.gethostname() and any(_local_alive(int(j), record.folder) for j in record.job_ids
                                                      if j.isdigit())


def _local_alive(pid: int, folder: str) -> bool:
    """Whether `pid` is a live submitit controller of this submission's folder (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return pid_alive(pid) and not os.path.isdir("/proc")
    return any(b"submitit" in a for a in argv) and os.fsencode(folder) in argv


# ---- watching the tasks -----------------------------------------------------------------------------------
@dataclass
class Task:
    """One shard task as the wait sees it."""

    index: int
    job_id: str
    state: str = "SUBMITTED"
    detail: str = ""  # SLURM's reason, the signal of a killed process, ...
    since: float = 0.0
    requeues: int = 0
    result: dict | None = None
    failure: str | None = None  # why it ended without its result (one line)
    crashed: bool = False  # its result is a Python error (an internal error of the task)
    ran: bool = False  # it has been seen running (so a return to the queue is a requeue)
    log: Path | None = None

    @property
    def ended(self) -> bool:
        return self.result is not None or self.failure is not None

    def label(self, executor: str, count: int) -> str:
        where = f"SLURM job {self.job_id}" if executor == "slurm" else f"local process {self.job_id}"
        return f"task {self.index} of {count} ({where})"


class Watch:
    """The tasks of a submission, polled: `poll()` updates them and returns the status lines of what
    changed; `finished` once every task has ended."""

    def __init__(self, submission: Submission, clock: Callable[[], float] = time.monotonic):
        self.sub = submission
        self.clock = clock
        now = clock()
        self.tasks = [Task(i, job_id, since=now, log=_log_path(job)) for i, (job_id, job) in
                      enumerate(zip(submission.job_ids, submission.jobs))]
        self._silent_since: float | None = None

    @property
    def finished(self) -> bool:
        return all(t.ended for t in self.tasks)

    def poll(self) -> list[str]:
        lines: list[str] = []
        now = self.clock()
        waiting = [t for t in self.tasks if not t.ended]
        states = self._states(waiting)
        for task in waiting:
            if task.job_id in states:
                state, detail = states[task.job_id]
                if state != task.state or detail != task.detail:
                    if task.ran and state in REQUEUED_STATES and task.state not in REQUEUED_STATES:
                        task.requeues += 1  # it ran, and is back in the queue: requeued (preempted, timed out)
                    if state != task.state:
                        task.since = now
                    task.state, task.detail = state, detail
                    lines.append(f"{task.label(self.sub.executor, len(self.tasks))}: {self.state_text(task)}")
                task.ran = task.ran or state in RAN_STATES
            if self._result_counts(task):
                self._read_result(task)
            if not task.ended:
                self._judge(task, now)
        return lines

    @staticmethod
    def state_text(task: Task) -> str:
        details = [task.detail] if task.detail else []
        if task.requeues and task.state in REQUEUED_STATES:
            details.append(f"requeued {_times(task.requeues)}")
        return task.state + (f" ({', '.join(details)})" if details else "")

    def _result_counts(self, task: Task) -> bool:
        """Whether a task's result file, if any, is its last word: SLURM may requeue a task that wrote one
        (submitit's own `scontrol requeue` fails on a task SLURM requeues itself, and that failure is pickled
        as an error), so there the result counts once SLURM no longer runs or queues the task."""
        return self.sub.executor != "slurm" or task.state not in ACTIVE_BEFORE_RESULT

    def _read_result(self, task: Task) -> None:
        job = self.sub.jobs[task.index]
        path = job.paths.result_pickle
        if not path.exists():
            return
        from submitit.core.utils import pickle_load  # (submitit: see _job)

        try:
            outcome, value = pickle_load(path)
        except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError):
            return  # being written: read again at the next poll
        if outcome == "success" and isinstance(value, dict):
            task.result, task.state, task.failure = value, "DONE", None
        elif self.sub.executor == "slurm" and task.state in ENDED_BY_SLURM:
            return  # the error is a consequence (e.g. submitit's requeue refused): SLURM's state says why (_judge)
        else:
            task.result, task.state = {"shard": task.index, "error": None, "done": []}, "FAILED"
            task.crashed = True
            task.failure = _last_line(str(value))

    def _ended_by_slurm(self, task: Task) -> str:
        how = MEANING.get(task.state, "ended")
        if task.state == "COMPLETED":
            how = "ended without writing its result (see its log)"
        return f"{how}: {self.state_text(task)}"

    def _states(self, tasks: list[Task]) -> dict[str, tuple[str, str]]:
        if not tasks:
            return {}
        if self.sub.executor == "slurm":
            now = self.clock()
            try:
                states = task_states([t.job_id for t in tasks])
            except SlurmUnavailable as e:
                self._silent_since = self._silent_since or now
                if now - self._silent_since >= CONTROLLER_LIMIT_S:
                    raise JobFailed(f"the SLURM controller has not answered for {CONTROLLER_LIMIT_S / 60:g} minutes "
                                    f"({e}); the tasks may still run: rerun the same command to wait for them again, "
                                    f"or see `masklab jobs {self.sub.runs[0]}`") from None
                return {}
            self._silent_since = None
            return {job_id: (s.state, s.detail()) for job_id, s in states.items()}
        out = {}
        for task in tasks:
            job = self.sub.jobs[task.index]
            process = getattr(job, "_process", None)
            if process is not None:
                code = process.poll()
                if code is None:
                    out[task.job_id] = ("RUNNING", "")
                elif code < 0:
                    out[task.job_id] = ("KILLED", _signal_name(-code))
                else:
                    out[task.job_id] = ("EXITED", f"exit code {code}")
            elif _local_alive(int(task.job_id), self.sub.record.folder):
                out[task.job_id] = ("RUNNING", "")
            else:
                out[task.job_id] = ("EXITED", "")
        return out

    def _judge(self, task: Task, now: float) -> None:
        """Decide whether a task without a result has ended for good (see the module's notes)."""
        held = now - task.since
        state = task.state
        if self.sub.executor == "slurm":
            if state in TERMINAL and held >= TERMINAL_GRACE_S:
                task.failure = self._ended_by_slurm(task)
            elif state == "UNKNOWN" and held >= UNKNOWN_LIMIT_S:
                task.failure = (f"is no longer known to SLURM (neither squeue nor sacct has it after "
                                f"{UNKNOWN_LIMIT_S:g} s: a cluster without accounting forgets finished jobs)")
        elif state in ("KILLED", "EXITED") and held >= LOCAL_GRACE_S:
            orphan = _task_pid(self.sub, task.index)
            if orphan is not None and _task_alive(orphan):  # its controller died: end the task it left, so
                _kill(orphan, signal.SIGKILL)               # that a rerun can take the shard over
            if state == "KILLED":
                task.failure = f"was killed by {task.detail}"
            else:
                task.failure = ("ended without writing its result (killed by a signal, e.g. the out-of-memory "
                                "killer, or its task process was)")


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("---")]
    return lines[-1] if lines else "no message"


def _log_path(job) -> Path | None:
    try:
        return Path(job.paths.stderr)
    except (AttributeError, ValueError):
        return None


# ---- the wait ---------------------------------------------------------------------------------------------
def wait_for(submission: Submission, quiet: bool = True, log: Callable[[str], None] | None = None,
             *, poll_s: float | None = None) -> list[dict]:
    """Wait for every task of `submission`, with a progress bar of mask-epochs done / planned and a status
    line whenever a task changes state (on stderr; none with `quiet`); the tasks' results. A task that
    failed on bad input raises UserError (its message); one that ended without its result raises JobFailed,
    one that crashed RuntimeError, each one line naming the task, how it ended, its log, and that rerunning
    the same command resumes. Ctrl-C or SIGTERM raises JobsInterrupted (see `stop`)."""
    if not submission.jobs:
        return []
    watch = Watch(submission)
    total = sum(c.masks * c.epochs for c in submission.configs)
    bar = tqdm(total=total, disable=quiet, unit="mask-epoch", desc="masks", dynamic_ncols=True, leave=False)
    pause = poll_s if poll_s is not None else POLL_S.get(submission.executor, 1.0)
    try:
        with _sigterm_as_interrupt():
            while True:
                for line in watch.poll():
                    if not quiet:
                        bar.write(line, file=sys.stderr)
                done, stored_masks = _done(submission)
                bar.set_description(f"masks {stored_masks}/{sum(c.masks for c in submission.configs)}", False)
                bar.set_postfix_str(_summary(watch), refresh=False)
                bar.update(min(total, done) - bar.n)
                if watch.finished:
                    break
                time.sleep(pause)
    except KeyboardInterrupt:
        bar.close()
        raise JobsInterrupted(stop(submission, watch)) from None
    finally:
        bar.close()
    return _outcome(submission, watch)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM during the wait ends it like Ctrl-C (so the local jobs are ended too); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _done(submission: Submission) -> tuple[int, int]:
    """(mask-epochs done, masks stored) over the submission's runs, with the epochs of masks in training."""
    epochs_done, masks = 0, 0
    for run, config in zip(submission.runs, submission.configs):
        n = stored(run, config.masks)
        masks += n
        epochs_done += n * config.epochs
    for i in range(len(submission.job_ids)):
        try:
            state = json.loads(progress_path(submission.runs[0], i).read_text())
            epochs_done += sum(int(v) for v in state.get("training", {}).values())
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    return epochs_done, masks


def _summary(watch: Watch) -> str:
    counts: dict[str, int] = {}
    for task in watch.tasks:
        key = task.state + (f" ({task.detail})" if task.state == "PENDING" and task.detail else "")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in counts.items())


def _outcome(submission: Submission, watch: Watch) -> list[dict]:
    count = len(watch.tasks)
    failed = [t for t in watch.tasks if t.failure]
    if failed:
        first = failed[0]
        planned, done = _task_masks(submission, first.index)
        others = f" ({len(failed) - 1} more task(s) ended too: {' '.join(t.job_id for t in failed[1:6])})" \
            if len(failed) > 1 else ""
        text = (f"{first.label(submission.executor, count)} {first.failure}; its log: {first.log}; {done} of its "
                f"{planned} masks are stored{others}: rerun the same command to resume")
        if first.crashed and not str(first.failure).startswith(("submitit.core.utils.UncompletedJobError",
                                                           "UncompletedJobError")):
            raise RuntimeError(text)
        raise JobFailed(text)
    results = [t.result or {} for t in watch.tasks]
    errors = [r for r in results if r.get("error")]
    if errors:
        raise UserError(f"shard job {errors[0]['shard']}: {errors[0]['error']}")
    submission.results = results
    return results


def _task_masks(submission: Submission, index: int) -> tuple[int, int]:
    mine = task_masks(submission.configs, index, len(submission.job_ids))
    planned = sum(len(ids) for _, ids in mine)
    done = sum(stored(submission.runs[r], ids=ids) for r, ids in mine)
    return planned, done


def stop(submission: Submission, watch: Watch | None = None) -> str:
    """After an interrupt: end every local job (SIGINT, then SIGKILL after STOP_WAIT_S, their task processes
    too); SLURM tasks keep running. Returns the line that says so."""
    run = submission.runs[0]
    if submission.executor == "slurm":
        array = sorted({j.split("_")[0] for j in submission.job_ids})
        return (f"the {len(submission.job_ids)} SLURM task(s) keep running ({ids_text(submission.job_ids)}): rerun the "
                f"same command to wait for them again; `masklab jobs {run}` shows them, `masklab jobs {run} "
                f"--cancel` (or `scancel {' '.join(array)}`) cancels them")
    pids = end_local_jobs(submission)
    return (f"ended the {len(pids)} local shard job(s) (pids {' '.join(map(str, pids))}); the finished masks are "
            "kept: rerun the same command to resume")


def end_local_jobs(submission: Submission) -> list[int]:
    """End every local job of the submission: SIGKILL to its task processes (the children of submitit's
    controllers, and the pids their progress files name; a mask is stored whole or not at all, so a killed
    task loses only the stack in training), after which each controller ends by itself; a controller still
    there after STOP_WAIT_S is killed too. (SIGINT would make each controller print a traceback, and the
    tasks ignore SIGTERM.) Returns the controllers' pids."""
    controllers = [int(j) for j in submission.job_ids if j.isdigit()]
    folder = submission.record.folder
    live = [(job, pid) for job, pid in zip(submission.jobs, controllers) if _running(job, pid, folder)]
    tasks = {pid for i in range(len(submission.job_ids)) if (pid := _task_pid(submission, i)) is not None}
    tasks |= {child for _, pid in live for child in _children(pid)}
    for pid in tasks:
        if _task_alive(pid):
            _kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and any(_running(job, pid, folder) for job, pid in live):
        for _, pid in live:  # a task that was still starting when we looked
            for child in _children(pid):
                _kill(child, signal.SIGKILL)
        time.sleep(0.1)
    for job, pid in live:
        if _running(job, pid, folder):
            _kill(pid, signal.SIGKILL)
    for job in submission.jobs:  # reap our children
        process = getattr(job, "_process", None)
        if process is not None:
            try:
                process.wait(timeout=STOP_WAIT_S)
            except Exception:
                pass
    return controllers


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc; none where there is no /proc)."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _running(job, pid: int, folder: str) -> bool:
    process = getattr(job, "_process", None)
    if process is not None:
        return process.poll() is None
    return _local_alive(pid, folder)


def _task_pid(submission: Submission, index: int) -> int | None:
    """The pid of task `index`'s own process (from its progress file), or None."""
    try:
        return int(json.loads(progress_path(submission.runs[0], index).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _task_alive(pid: int) -> bool:
    """Whether `pid` is a live submitit task process (python -m submitit.core._submit)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"submitit.core._submit" in f.read()
    except OSError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


# ---- masklab jobs RUN ------------------------------------------------------------------------------------
def job_table(run: str | os.PathLike, runs_dir: str | os.PathLike | None = None):
    """The shard jobs recorded in a run, one row per task: task, job_id, state, detail (why it pends or how
    it ended), masks_stored, masks_planned (of its shards, over every run of the submission), threads, host,
    log. An empty DataFrame when the run records no submission."""
    path = resolve_run(run, runs_dir)
    columns = ["task", "job_id", "state", "detail", "masks_stored", "masks_planned", "threads", "host", "log"]
    record = read_record(path)
    if record is None or not record.job_ids:
        return pd.DataFrame(columns=columns)
    runs = [path.parent / name for name in record.runs]
    submission = Submission.from_record(record, runs)
    watch = Watch(submission)
    watch.poll()
    rows = []
    for task in watch.tasks:
        planned, done = _task_masks(submission, task.index)
        try:
            progress = json.loads(progress_path(runs[0], task.index).read_text())
        except (OSError, ValueError):
            progress = {}
        state = "DONE" if task.result is not None and not task.crashed else task.state
        rows.append({"task": task.index, "job_id": task.job_id, "state": state,
                     "detail": task.failure if task.crashed else task.detail, "masks_stored": done,
                     "masks_planned": planned, "threads": progress.get("threads"), "host": progress.get("host"),
                     "log": os.fspath(task.log) if task.log else None})
    return pd.DataFrame(rows, columns=columns)


def cancel_jobs(run: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> list[str]:
    """Cancel the shard jobs recorded in a run that still run (scancel, or SIGINT then SIGKILL for local
    processes); returns the ids cancelled."""
    path = resolve_run(run, runs_dir)
    record = read_record(path)
    if record is None or not record.job_ids:
        raise UserError(f"run {path} records no shard jobs (they are recorded by `generate --jobs N`)")
    runs = [path.parent / name for name in record.runs]
    if record.executor == "slurm":
        live = [j for j, s in task_states(record.job_ids).items() if s.active]
        cancel(live)
        return live
    if record.host != socket.gethostname():
        raise UserError(f"the local shard jobs of run {path} run on {record.host}: cancel them there")
    submission = Submission.from_record(record, runs)
    live = [j for j in record.job_ids if j.isdigit() and _local_alive(int(j), record.folder)]
    end_local_jobs(submission)
    return live

