"""Barrier pairs as submitit jobs: N local processes or one SLURM job array (`analyze --jobs N --executor ...`).

`SubmititEngine(jobs, executor)` is an engine for `masklab.analysis.paths.jobs.run_pairs`: it deals the pending
pairs out to `jobs` submitit jobs (pair k to job k % jobs, so every job gets near and far pairs alike) and
waits for them, counting the result files as they appear. Each job runs `evaluate_pairs` on its share: the
result of each pair is stored the moment it is evaluated, so a job that is killed or preempted (requeued by
submitit's checkpointing) or a rerun of the same analysis evaluates only the pairs still missing. Nothing here
schedules: submitit runs the jobs, the result folder is the only shared state. Logs go under
``<result folder>/submitit/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import submitit
import torch

from masklab.analysis.paths.jobs import BarrierTask, Pair, Progress, evaluate_pairs, pending_pairs
from masklab.errors import UserError
from masklab.scale.executors import EXECUTORS, MAX_ARRAY_TASKS, POLL_SECONDS, SlurmOptions, max_local_jobs


class PairJob(submitit.helpers.Checkpointable):
    """What one job runs: `evaluate_pairs` on its pairs, with `threads` torch threads. Checkpointable: a
    preempted job is requeued with the same call, which skips the pairs already stored."""

    def __call__(self, task: BarrierTask, pairs: list[Pair], threads: int | None = None) -> int:
        if threads:
            torch.set_num_threads(threads)
        return evaluate_pairs(task, pairs)


class SubmititEngine:
    """Evaluate pending pairs as `jobs` submitit jobs (`executor` "local": processes on this machine; "slurm":
    one job array with the resources of `slurm`)."""

    def __init__(self, jobs: int, executor: str = "local", slurm: SlurmOptions | None = None):
        if executor not in EXECUTORS:
            raise UserError(f"--executor {executor!r} is unknown; choose local or slurm")
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise UserError(f"--jobs {jobs!r} is invalid: use an integer >= 1")
        if executor == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--executor slurm: no sbatch found on this machine (SLURM is not installed or not on "
                            "PATH); use --executor local, or run on a SLURM login node")
        self.jobs, self.executor, self.slurm = jobs, executor, slurm

    def describe(self) -> str:
        return f"as {self.jobs} submitit job(s) ({self.executor})"

    def __call__(self, task: BarrierTask, pairs: Sequence[Pair], progress: Progress | None = None) -> None:
        if not pairs:
            return
        # at most one job per pair, and (the same caps as `generate --jobs`) one local process per core or
        # one SLURM array's tasks
        jobs = min(self.jobs, len(pairs), max_local_jobs() if self.executor == "local" else MAX_ARRAY_TASKS)
        shares = [list(pairs[k::jobs]) for k in range(jobs)]
        folder = Path(task.folder) / "submitit"
        ex: submitit.SlurmExecutor | submitit.LocalExecutor
        threads = None
        if self.executor == "slurm":
            ex = submitit.SlurmExecutor(folder=folder)
            ex.update_parameters(**(self.slurm or SlurmOptions()).parameters("masklab-barriers"))
        else:
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=60 * 24 * 30)
            threads = max(1, max_local_jobs() // jobs)
        submitted = ex.map_array(PairJob(), [task] * jobs, shares, [threads] * jobs)
        done = 0
        while not all(job.done() for job in submitted):
            now = len(pairs) - len(pending_pairs(task, pairs))
            if progress is not None and now > done:
                progress(now - done)
            done = now
            time.sleep(POLL_SECONDS)
        for job in submitted:
            if job.exception() is not None:
                raise RuntimeError(f"barrier job {job.job_id} failed (its log: {job.paths.stderr}); rerun the same "
                                   "analysis to evaluate the pairs still missing: "
                                   f"{str(job.exception()).strip().splitlines()[-1]}")
        if progress is not None:
            progress(len(pairs) - done)


__all__ = ["PairJob", "SubmititEngine"]
