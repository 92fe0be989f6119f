"""Shards submitted through submitit: N local processes, or one SLURM job array.

`submit_shards(configs, runs_dir, jobs)` starts `jobs` submitit jobs; job I trains one shard of N of every
run in `configs` (shard (I + r) % N of the r-th: one run for `generate --jobs N`, every cell for
`sweep --jobs N`), each through `masklab.generation.generate(..., shard=(I, N), resume=True)`. Nothing here
schedules: submitit runs the jobs (`LocalExecutor`: processes on this machine, threads split between them,
one GPU each where there are enough; `SlurmExecutor`: one job array, requeued on preemption or timeout
through submitit's checkpointing), and the run directory is the only shared state, so rerunning the same
command resumes whatever a killed job left undone. The submission is recorded in every run it writes
(`jobs.json`, masklab.scale.jobs): rerunning the command while the jobs still run waits for them instead of
submitting more, and `masklab jobs RUN` shows or cancels them. submitit's logs go under `<run>/submitit/`.

The wait (masklab.scale.jobs.wait_for) ends on every way a task can end, each reported in one line: its
result, a terminal SLURM state (CANCELLED, PREEMPTED, TIMEOUT, NODE_FAIL, ...), a state SLURM no longer
knows for UNKNOWN_LIMIT_S, or a controller silent for CONTROLLER_LIMIT_S.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.files import atomic_write
from masklab.scale import jobs as J
from masklab.scale.jobs import job_shard, task_masks
from masklab.scale.slurm import check_controller, first_error, time_left_s

EXECUTORS = ("local", "slurm")
POLL_SECONDS = 1.0  # how often a plain wait on submitit jobs looks (scale/pair_jobs.py)
# SLURM sends the early signal (`--signal=USR2@D`) up to 60 s before D seconds are left ("the resolution of
# event handling", sbatch(1)); the task needs a few seconds to stop and requeue itself (nothing to save: the
# run directory holds every finished mask), so D is 5% of the limit, at least 15 s and at most 120 s.
SIGNAL_RESOLUTION_S = 60
MIN_SIGNAL_DELAY_S, MAX_SIGNAL_DELAY_S = 15, 120
# a task must start (imports, data: ~30 s on a busy node) and store a stack before its signal can come
# (limit - delay - resolution): below 2 minutes the signal could come before the first mask
MIN_TIME_MINUTES = 2
MAX_ARRAY_TASKS = 100_000  # beyond SLURM's largest MaxArraySize (4,000,001 ids but 1,000,001 tasks by default)
# sbatch options that masklab (through submitit) writes itself: --slurm-extra may not set them
OWN_OPTIONS = frozenset({"array", "output", "error", "signal", "job-name", "open-mode", "wckey", "time", "partition",
                         "gpus-per-task", "cpus-per-task", "mem", "account", "qos", "constraint", "gres"})


def signal_delay_s(minutes: int) -> int:
    """Seconds before the time limit at which SLURM signals a task to requeue itself (see the module's notes)."""
    return int(min(MAX_SIGNAL_DELAY_S, max(MIN_SIGNAL_DELAY_S, round(0.05 * 60 * minutes))))


@dataclass(frozen=True)
class SlurmOptions:
    """The job array's resources (`--slurm-*` flags, or a `[slurm]` table in the TOML config)."""

    partition: str | None = None
    time: int = 60  # minutes per task; a task that runs out is requeued and resumes
    gpus_per_task: int = 0
    cpus_per_task: int | None = None  # also the task's torch and numba threads
    mem: str | None = None  # e.g. "16GB"
    array_parallelism: int = 256  # tasks of the array running at once
    setup: tuple[str, ...] = ()  # shell lines run before the task, e.g. "module load cuda"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str | None = None  # e.g. "gpu:a100:1"
    extra: tuple[str, ...] = ()  # any other sbatch option, "KEY=VALUE" (e.g. "mail-type=END") or "KEY"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "[slurm]") -> SlurmOptions:
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UserError(f"{source}: unknown key {key!r}; known keys: {', '.join(known)}")
            if value is None:
                continue
            if name in ("setup", "extra"):
                example = '["module load cuda"]' if name == "setup" else '["mail-type=END"]'
                if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise UserError(f"{source}: {key} must be a list of non-empty strings, e.g. {key} = {example}")
                value = tuple(value)
                if name == "extra":
                    for item in value:
                        _extra_option(item, source)
            elif name in ("time", "gpus_per_task", "cpus_per_task", "array_parallelism"):
                low = {"gpus_per_task": 0, "time": MIN_TIME_MINUTES}.get(name, 1)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    why = (f" (SLURM signals a task up to {SIGNAL_RESOLUTION_S} s before its early warning; a task "
                           "needs time to start and store one stack before it)") if name == "time" else ""
                    raise UserError(f"{source}: {key} = {value!r} must be an integer >= {low}{why}")
            elif not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
                raise UserError(f"{source}: {key} = {value!r} must be a non-empty string without spaces")
            kwargs[name] = value
        return cls(**kwargs)

    @property
    def signal_delay_s(self) -> int:
        return signal_delay_s(self.time)

    def parameters(self, job_name: str) -> dict[str, Any]:
        """submitit SlurmExecutor parameters for this array."""
        params: dict[str, Any] = {"job_name": job_name, "time": self.time, "array_parallelism": self.array_parallelism,
                                  "signal_delay_s": self.signal_delay_s}
        for name in ("partition", "cpus_per_task", "mem", "account", "qos", "constraint", "gres"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.gpus_per_task:
            params["gpus_per_task"] = self.gpus_per_task
        if self.setup:
            params["setup"] = list(self.setup)
        if self.extra:
            params["additional_parameters"] = dict(_extra_option(item, "--slurm-extra") for item in self.extra)
        return params


def _extra_option(item: str, source: str) -> tuple[str, Any]:
    """("mail-type", "END") from "mail-type=END"; (KEY, True) from a bare flag. Refuses what masklab sets."""
    key, sep, value = item.partition("=")
    key = key.strip().lstrip("-")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", key) or (sep and not value.strip()):
        raise UserError(f"{source}: {item!r} is not an sbatch option: write KEY=VALUE, e.g. mail-type=END (the long "
                        "option's name without --)")
    if key.replace("_", "-") in OWN_OPTIONS:
        flag = f"--slurm-{key}" if key in ("partition", "time", "mem", "account", "qos", "constraint", "gres") \
            else "--jobs / the other --slurm-* options"
        raise UserError(f"{source}: {key} is set by masklab itself; use {flag}")
    return key, (value.strip() if sep else True)


def sbatch_script(options: SlurmOptions, shards: int, folder: str | os.PathLike, job_name: str = "masklab") -> str:
    """The sbatch file submitit writes for a job array of `shards` tasks (to check the array's size,
    resources and setup lines without a cluster)."""
    # submitit, torch and generation are imported where they run: every command loads this module (cli/options:
    # SlurmOptions), and submitit alone costs more than the CLI's start (0.37 s against 0.23 s, shared machine)
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command="python -u -m submitit.core._submit", folder=str(folder),
                               map_count=shards, **options.parameters(job_name))


def max_local_jobs() -> int:
    """The most local shard processes `--jobs` starts: one per core this process may use (its CPU affinity,
    which taskset, cpusets and SLURM set; else every core): more only slow each other down, and each holds a
    copy of the data and a model (a `--jobs 100000` once started hundreds and exhausted the machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity where there is no sched_getaffinity (macOS, Windows)
        cores = os.cpu_count() or 1
    return max(1, cores)


class ShardJob:
    """What one submitit job runs: one shard of `count` of every run config given, in order: of the r-th run,
    shard (index + r) % count, so that every shard of every run is trained by exactly one job and the jobs'
    loads stay balanced when a run's masks do not divide evenly.

    Checkpointable (submitit's protocol, `checkpoint`): on preemption or near its time limit the task is
    requeued with the same call, which resumes from the run directories. A task that reaches its time limit
    without storing one mask since it started is not requeued again (it would never finish): it ends with a
    one-line error saying the limit is too short for one stack. It reports its progress (pid, host,
    threads, epochs of the masks in training) in `progress`, for the submitting process's status view."""

    def __call__(self, configs: list[dict], runs_dir: str, index: int, count: int, threads: int | None = None,
                 gpu: int | None = None, progress: str | None = None, allow_device_change: bool = False) -> dict:
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        import torch  # (after CUDA_VISIBLE_DEVICES is set; see sbatch_script)

        from masklab.generation import generate

        threads = threads or _slurm_cpus()
        if threads:
            torch.set_num_threads(threads)
            _numba_threads(threads)
        parsed = [RunConfig.from_dict(values, source="shard job") for values in configs]
        self._runs = [Path(runs_dir) / c.run_id for c in parsed]
        self._mine = task_masks(parsed, index, count)
        self._started = time.time()
        self._stored_at_start = self._stored()
        report = _Progress(progress, index, threads or torch.get_num_threads())
        report.write()
        done: list[str] = []
        try:
            for r, config in enumerate(parsed):
                shard = (job_shard(index, r, count), count)
                run = generate(config, runs_dir=runs_dir, resume=True, shard=shard,
                               allow_device_change=allow_device_change,
                               on_epoch=functools.partial(report.epoch, config.run_id))
                done.append(str(run.path))
        except UserError as e:  # reported by the submitting process as one line
            return {"shard": index, "error": " ".join(str(e).split()), "done": done, "threads": report.threads}
        finally:
            report.close()
        return {"shard": index, "error": None, "done": done, "threads": report.threads}

    def _stored(self) -> int:
        total = 0
        for r, ids in getattr(self, "_mine", []):
            total += sum(1 for i in ids if (self._runs[r] / "masks" / f"{i:06d}.json").exists())
        return total

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on the early signal (preemption, or the time limit near): the same call,
        resubmitted; none when the time limit came before this task stored a mask (see the class notes)."""
        from submitit.helpers import DelayedSubmission  # (see sbatch_script)

        if self._stored() == self._stored_at_start and _at_time_limit():
            minutes = round((time.time() - self._started) / 60, 1)
            raise UserError(f"the time limit came after {minutes:g} minutes, before this task stored a mask: it is "
                            "too short to train one stack; raise --slurm-time (or lower --stack), then rerun the "
                            "same command to resume")
        return DelayedSubmission(self, *args, **kwargs)


def _slurm_cpus() -> int | None:
    """The CPUs SLURM gave this task (--cpus-per-task), or None outside SLURM."""
    text = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def _numba_threads(threads: int) -> None:
    """numba's kernels (score SGD, distances) get the task's threads too (at most numba's pool size)."""
    try:
        import numba  # (the task's own import: training loads numba there anyway; see sbatch_script)
    except ImportError:
        return
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def _at_time_limit() -> bool:
    """Whether this task's early signal is its time limit's (not a preemption's): SLURM says little time
    is left (at most the signal's delay plus its resolution, with 30 s of slack)."""
    job = os.environ.get("SLURM_JOB_ID")
    delay = int(os.environ.get("MASKLAB_SIGNAL_DELAY_S", MAX_SIGNAL_DELAY_S))
    left = time_left_s(job) if job else None
    return left is not None and left <= delay + SIGNAL_RESOLUTION_S + 30


class _Progress:
    """A task's progress file (`<run>/jobs/task-I.json`): who runs it and the epochs of its masks in
    training, rewritten (atomically, not durably: it is only shown) at most once a second."""

    def __init__(self, path: str | None, index: int, threads: int):
        self.path = Path(path) if path else None
        self.index, self.threads = index, threads
        self.training: dict[str, int] = {}  # "<run id>/<mask id>" -> epochs done, while in training
        self.state = {"task": index, "pid": os.getpid(), "host": socket.gethostname(), "threads": threads,
                      "started": time.time(), "training": self.training}
        self._last = 0.0

    def epoch(self, run_id: str, row: dict) -> None:
        key = f"{run_id}/{int(row.get('index', -1))}"
        epoch = int(row.get("epoch", 0)) + 1
        if epoch >= int(row.get("epochs", epoch + 1)):
            self.training.pop(key, None)  # finished: the record will count it
        else:
            self.training[key] = epoch
        if time.time() - self._last >= 1.0:
            self.write()

    def write(self) -> None:
        if self.path is None:
            return

        self._last = time.time()
        try:
            atomic_write(self.path, json.dumps(self.state).encode(), durable=False, in_run=True)
        except (OSError, UserError):
            pass  # progress is only shown; training goes on without it

    def close(self) -> None:
        self.training.clear()
        self.write()


def plan_jobs(jobs: int, configs: Sequence[RunConfig], executor: str, say: Callable[[str], None]) -> int:
    """`jobs`, capped at the most masks of a run (more jobs would train nothing) and, for local processes,
    at `max_local_jobs()`; a capped count is said."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs {jobs!r} is invalid: use an integer >= 1")
    most = max(c.masks for c in configs)
    limits = [(most, f"the run{'s' if len(configs) > 1 else ''} hold{'' if len(configs) > 1 else 's'} at most "
               f"{most} masks" if len(configs) > 1 else f"the run has {most} masks")]
    if executor == "local":
        limits.append((max_local_jobs(), f"at most one local process per core ({max_local_jobs()}); "
                       "use --executor slurm for more"))
    else:
        limits.append((MAX_ARRAY_TASKS, f"at most {MAX_ARRAY_TASKS:,} tasks in one job array"))
    cap, why = min(limits)
    if jobs > cap:
        say(f"--jobs {jobs} capped at {cap}: {why}")
        return cap
    return jobs


def submit_shards(configs: Sequence[RunConfig], runs_dir: str | os.PathLike, jobs: int, executor: str = "local",
                  *, slurm: SlurmOptions | None = None, wait: bool = True, quiet: bool = True,
                  log: Callable[[str], None] | None = None, allow_device_change: bool = False):
    """Create the runs of `configs` (if new) and submit `jobs` submitit jobs, job I training shard I/jobs of
    each (see `plan_jobs` for the cap); with `wait`, show progress until every job has ended (see
    masklab.scale.jobs.wait_for) and raise a one-line error naming the first task that failed.

    A rerun while the jobs recorded in the runs still run attaches to them (nothing is submitted); a rerun
    of complete runs submits nothing. If nothing could be submitted (sbatch refused: an unknown partition,
    resources the cluster lacks), the runs this call created are removed again. `allow_device_change`: see
    `masklab.generate`. Returns the masklab.scale.jobs.Submission."""
    from masklab.generation import create_run, discard_empty_run  # (torch: see sbatch_script)

    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r} is unknown; choose local or slurm")
    say = log or (lambda message: None)
    runs_dir = Path(os.path.abspath(runs_dir))  # the jobs may start in another directory (sbatch --chdir)
    jobs = plan_jobs(jobs, configs, executor, say)
    if executor == "slurm":
        check_controller()
    attached = J.attach(configs, runs_dir, jobs, executor)
    if attached is not None:
        say(f"the shard jobs of this run are still running ({J.ids_text(attached.record.job_ids)}): waiting for them "
            "instead of submitting more")
        if wait:
            J.wait_for(attached, quiet=quiet, log=say)
        return attached
    paths = [runs_dir / c.run_id for c in configs]
    new = [not os.path.lexists(p) for p in paths]
    runs = [create_run(config, runs_dir) for config in configs]  # checks everything before any job starts
    if all(J.stored(run, c.masks) == c.masks for run, c in zip(runs, configs)):
        say(f"{'every run is' if len(runs) > 1 else f'run {runs[0]} is'} complete: nothing to submit")
        return J.Submission.complete(runs, executor)
    folder = runs[0] / "submitit"
    try:
        J.make_folders(runs)
        submitted = _submit(configs, runs_dir, runs, jobs, executor, slurm or SlurmOptions(), folder,
                            allow_device_change)
    except BaseException:
        for path, made in zip(runs, new):
            if made:
                discard_empty_run(path)
        raise
    submission = J.Submission.new(submitted, runs, configs, executor, folder)
    J.write_record(submission)
    say(f"submitted {jobs} shard job(s) through submitit ({executor}): {J.ids_text(submission.record.job_ids)}; "
        f"logs in {folder}")
    if wait:
        J.wait_for(submission, quiet=quiet, log=say)
    return submission


def _submit(configs: Sequence[RunConfig], runs_dir: Path, runs: list[Path], jobs: int, executor: str,
            slurm: SlurmOptions, folder: Path, allow_device_change: bool = False) -> list:
    import submitit  # (see sbatch_script)

    ex: submitit.SlurmExecutor | submitit.LocalExecutor
    threads: list[int | None] = [None] * jobs
    gpus: list[int | None] = [None] * jobs
    if executor == "slurm":
        # requeues on timeout: a task that times out stores at least one mask per lifetime (else it stops,
        # see ShardJob), so it cannot time out more often than it has masks
        per_task = max(sum(len(ids) for _, ids in task_masks(configs, i, jobs)) for i in range(jobs))
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max(3, per_task))
        params = slurm.parameters(f"masklab-{runs[0].name}")
        params["setup"] = [f"export MASKLAB_SIGNAL_DELAY_S={slurm.signal_delay_s}", *params.get("setup", [])]
        ex.update_parameters(**params)
        threads = [slurm.cpus_per_task] * jobs
    else:
        if jobs > max_local_jobs():  # plan_jobs caps them; this guard holds whatever a caller planned
            raise RuntimeError(f"{jobs} local jobs exceed one per core ({max_local_jobs()}): plan them with "
                               "plan_jobs")
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=60 * 24 * 30)
        threads = [max(1, max_local_jobs() // jobs)] * jobs
        gpus = _local_gpus(configs, jobs)
    values = [config.to_dict() for config in configs]
    progress = [os.fspath(J.progress_path(runs[0], i)) for i in range(jobs)]
    try:
        with contextlib.redirect_stderr(io.StringIO()), _children_ignore_sigint(executor == "local"):
            # (submitit prints sbatch's refusal too: said once, below)
            return ex.map_array(ShardJob(), [values] * jobs, [os.fspath(runs_dir)] * jobs, list(range(jobs)),
                                [jobs] * jobs, threads, gpus, progress, [allow_device_change] * jobs)
    except Exception as e:  # sbatch refused (FailedJobError / FailedSubmissionError): its own words, once
        if executor != "slurm" or not _is_submission_error(e):
            raise
        raise UserError(f"sbatch refused the job array: {_sbatch_words(e)}; nothing was submitted") from None


@contextlib.contextmanager
def _children_ignore_sigint(local: bool):
    """Local jobs started inside ignore SIGINT: Ctrl-C at a terminal signals the whole foreground process group,
    and submitit's controllers would each print a traceback on the user's terminal; the submitting process
    alone takes it, and ends every job itself (masklab.scale.jobs.end_local_jobs). An ignored SIGINT is
    inherited through fork and exec, and Python keeps it ignored (it turns SIGINT into KeyboardInterrupt only
    where SIGINT was left at its default)."""
    import signal
    import threading

    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _is_submission_error(error: BaseException) -> bool:
    from submitit.core.utils import FailedJobError, FailedSubmissionError  # (see sbatch_script)

    return isinstance(error, (FailedJobError, FailedSubmissionError))


def _sbatch_words(error: BaseException) -> str:
    """sbatch's own message out of submitit's error (which repeats it, with the command and its output)."""
    text = str(error)
    said = re.findall(r"sbatch: error: (.+)", text)
    if said:
        seen: list[str] = []
        for line in said:  # submitit prints sbatch's stderr twice
            if line.strip() not in seen:
                seen.append(line.strip())
        return "; ".join(seen)
    return first_error(text) or " ".join(text.split())[:300]


def _local_gpus(configs: Sequence[RunConfig], jobs: int) -> list[int | None]:
    """The GPU of each local shard job (`gpu_slots` for this node's GPUs)."""
    devices = [c.device for c in configs]
    if all(d == "cpu" for d in devices):
        return [None] * jobs
    import torch  # (see sbatch_script)

    return gpu_slots(jobs, torch.cuda.device_count() if torch.cuda.is_available() else 0, devices)


def gpu_slots(jobs: int, gpus: int, devices: Sequence[str]) -> list[int | None]:
    """The GPU each of `jobs` local shard jobs is given (its CUDA_VISIBLE_DEVICES; None: left as it is), for
    runs asking for `devices` on a node with `gpus` GPUs: round robin over the GPUs when the runs train on
    "auto" or "cuda" (more jobs than GPUs share them evenly, rather than all piling onto GPU 0); None for
    every job when no run trains on CUDA, the node has none, or a run names its GPU ("cuda:N" must mean the
    node's N-th GPU, which a narrowed CUDA_VISIBLE_DEVICES would renumber).

    Examples
    --------
    >>> gpu_slots(5, 2, ["cuda"])
    [0, 1, 0, 1, 0]
    >>> gpu_slots(2, 4, ["cpu"]), gpu_slots(2, 0, ["auto"]), gpu_slots(2, 2, ["cuda:1"])
    ([None, None], [None, None], [None, None])
    """
    if gpus < 1 or all(d == "cpu" for d in devices) or any(d.startswith("cuda:") for d in devices):
        return [None] * jobs
    return [i % gpus for i in range(jobs)]


def setup_python_note(setup: Sequence[str]) -> str | None:
    """A warning when a --slurm-setup line seems meant to choose the Python: submitit runs the tasks with the
    submitting interpreter (sys.executable) whatever the setup lines activate."""
    for line in setup:
        words = shlex.split(line) if line.strip() else []
        if words[:1] in (["source"], ["."], ["conda"]) or any("activate" in w for w in words):
            return (f"note: --slurm-setup {line!r} does not choose the tasks' Python: submitit runs them with this "
                    f"one ({sys.executable}), which the compute nodes must reach at the same path")
    return None

