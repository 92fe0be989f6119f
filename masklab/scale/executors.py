"""Shards submitted through submitit: N local processes, or one SLURM job array.

`submit_shards(configs, runs_dir, jobs)` starts `jobs` submitit jobs; job I trains one shard of N of every
run in `configs` (shard (I + r) % N of the r-th: one run for `generate --jobs N`, every cell for
`sweep --jobs N`), each through
`masklab.generation.generate(..., shard=(I, N), resume=True)`. Nothing here schedules: submitit runs the
jobs (`LocalExecutor`: processes on this machine, threads split between them, one GPU each where there
are enough; `SlurmExecutor`: one job array, requeued on preemption or timeout through submitit's
checkpointing), and the run directory is the only shared state, so rerunning the same command resumes
whatever a killed job left undone. submitit's logs go under `<run>/submitit/`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from masklab.config import RunConfig
from masklab.errors import UserError

EXECUTORS = ("local", "slurm")
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class SlurmOptions:
    """The job array's resources (`--slurm-*` flags, or a `[slurm]` table in the TOML config)."""

    partition: str | None = None
    time: int = 60  # minutes per task; a task that runs out is requeued and resumes
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None  # e.g. "16GB"
    array_parallelism: int = 256  # tasks of the array running at once
    setup: tuple[str, ...] = ()  # shell lines run before the task, e.g. "module load cuda"

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
            if name == "setup":
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise UserError(f"{source}: setup must be a list of shell lines, e.g. setup = [\"module load "
                                    "cuda\"]")
                value = tuple(value)
            elif name in ("time", "gpus_per_task", "cpus_per_task", "array_parallelism"):
                if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "gpus_per_task"
                                                                                       else 1):
                    raise UserError(f"{source}: {key} = {value!r} must be an integer >= "
                                    f"{0 if name == 'gpus_per_task' else 1}")
            elif not isinstance(value, str) or not value:
                raise UserError(f"{source}: {key} = {value!r} must be a non-empty string")
            kwargs[name] = value
        return cls(**kwargs)

    def parameters(self, job_name: str) -> dict[str, Any]:
        """submitit SlurmExecutor parameters for this array."""
        params: dict[str, Any] = {"job_name": job_name, "time": self.time, "array_parallelism": self.array_parallelism,
                                  "signal_delay_s": 120}
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_task:
            params["gpus_per_task"] = self.gpus_per_task
        if self.cpus_per_task:
            params["cpus_per_task"] = self.cpus_per_task
        if self.mem:
            params["mem"] = self.mem
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def sbatch_script(options: SlurmOptions, shards: int, folder: str | os.PathLike, job_name: str = "masklab") -> str:
    """The sbatch file submitit writes for a job array of `shards` tasks (to check the array's size,
    resources and setup lines without a cluster)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command="python -u -m submitit.core._submit", folder=str(folder),
                               map_count=shards, **options.parameters(job_name))


def job_shard(job: int, run: int, jobs: int) -> int:
    """The shard of run number `run` that job `job` of `jobs` trains: dealt out rotated by the run's number,
    because with masks % jobs != 0 (3 masks, 2 jobs) job 0 would otherwise get the larger shard of every run."""
    return (job + run) % jobs


class ShardJob(submitit.helpers.Checkpointable):
    """What one submitit job runs: one shard of `count` of every run config given, in order: of the r-th run,
    shard (index + r) % count, so that every shard of every run is trained by exactly one job and the jobs'
    loads stay balanced when a run's masks do not divide evenly.

    Checkpointable: on preemption or timeout submitit requeues the same call, which resumes from the
    run directories."""

    def __call__(self, configs: list[dict], runs_dir: str, index: int, count: int, threads: int | None = None,
                 gpu: int | None = None, allow_device_change: bool = False) -> dict:
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        import torch

        from masklab.generation import generate

        if threads:
            torch.set_num_threads(threads)
        done: list[str] = []
        for r, values in enumerate(configs):
            config = RunConfig.from_dict(values, source="shard job")
            shard = (job_shard(index, r, count), count)
            try:
                run = generate(config, runs_dir=runs_dir, resume=True, shard=shard,
                               allow_device_change=allow_device_change)
            except UserError as e:  # reported by the submitting process as one line
                return {"shard": index, "error": str(e), "done": done}
            done.append(str(run.path))
        return {"shard": index, "error": None, "done": done}


def _count_records(paths: Sequence[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += sum(1 for name in os.listdir(path / "masks") if name.endswith(".json"))
        except OSError:
            pass
    return total


@dataclass
class Submission:
    """What `submit_shards` started: the submitit jobs, the runs they write, and (once waited) results."""

    jobs: list
    runs: list[Path]
    executor: str
    results: list[dict] = field(default_factory=list)

    @property
    def job_ids(self) -> list[str]:
        return [str(job.job_id) for job in self.jobs]


def submit_shards(configs: Sequence[RunConfig], runs_dir: str | os.PathLike, jobs: int, executor: str = "local",
                  *, slurm: SlurmOptions | None = None, wait: bool = True, quiet: bool = True,
                  log: Callable[[str], None] | None = None, allow_device_change: bool = False) -> Submission:
    """Create the runs of `configs` (if new) and submit `jobs` submitit jobs, job I training shard I/jobs of
    each; with `wait`, show progress (masks stored / planned, read from the run directories) until all jobs
    end, and raise UserError naming the first job that failed on bad input. `allow_device_change`: see
    `masklab.generate`."""
    from masklab.generation import create_run

    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r} is unknown; choose local or slurm")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs {jobs!r} is invalid: use an integer >= 1")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no sbatch found on this machine (SLURM is not installed or not on PATH); "
                        "use --executor local, or run on a SLURM login node")
    say = log or (lambda message: None)
    runs = [create_run(config, runs_dir) for config in configs]  # checks everything before any job starts
    folder = runs[0] / "submitit"
    ex: submitit.SlurmExecutor | submitit.LocalExecutor
    threads: int | None = None
    gpus: list[int | None] = [None] * jobs
    if executor == "slurm":
        ex = submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(**(slurm or SlurmOptions()).parameters(f"masklab-{runs[0].name}"))
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=60 * 24 * 30)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        gpus = _local_gpus(configs, jobs)
    values = [config.to_dict() for config in configs]
    submitted = ex.map_array(ShardJob(), [values] * jobs, [os.fspath(runs_dir)] * jobs, list(range(jobs)),
                             [jobs] * jobs, [threads] * jobs, gpus, [allow_device_change] * jobs)
    submission = Submission(submitted, runs, executor)
    say(f"submitted {jobs} shard job(s) through submitit ({executor}): {', '.join(submission.job_ids)}; "
        f"logs in {folder}")
    if wait:
        wait_for(submission, sum(c.masks for c in configs), quiet)
    return submission


def _local_gpus(configs: Sequence[RunConfig], jobs: int) -> list[int | None]:
    """The GPU of each local shard job (`gpu_slots` for this node's GPUs)."""
    devices = [c.device for c in configs]
    if all(d == "cpu" for d in devices):
        return [None] * jobs
    import torch

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


def wait_for(submission: Submission, total: int, quiet: bool = True) -> list[dict]:
    """Wait for every job, with a progress bar of masks stored / planned; the jobs' results. A job that
    failed on bad input raises UserError (its message); one that crashed raises submitit's error."""
    from tqdm import tqdm

    bar = tqdm(total=total, disable=quiet, unit="mask", desc="masks", dynamic_ncols=True)
    try:
        while not all(job.done() for job in submission.jobs):
            bar.update(_count_records(submission.runs) - bar.n)
            time.sleep(POLL_SECONDS)
        bar.update(_count_records(submission.runs) - bar.n)
    finally:
        bar.close()
    results = []
    for job in submission.jobs:
        if job.exception() is not None:
            raise RuntimeError(f"shard job {job.job_id} failed (its log: {job.paths.stderr}); rerun the same "
                               f"command to resume: {str(job.exception()).strip().splitlines()[-1]}")
        results.append(job.result())
    failed = [r for r in results if r.get("error")]
    if failed:
        raise UserError(f"shard {failed[0]['shard']}: {failed[0]['error']}")
    submission.results = results
    return results
