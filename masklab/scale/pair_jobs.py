"""Barrier pairs as submitit jobs: N local processes or one SLURM job array (`analyze --jobs N --executor ...`).

`SubmititEngine(jobs, executor)` is an engine for `masklab.analysis.paths.jobs.run_pairs`: it deals the pending
pairs out to `jobs` submitit jobs (pair k to job k % jobs, so every job gets near and far pairs alike) and
waits for them with the shard jobs' wait (`masklab.scale.jobs.Watch`), counting the result files as they
appear. Each job runs `evaluate_pairs` on its share: the result of each pair is stored the moment it is
evaluated, so a job that is killed or preempted (requeued by submitit's checkpointing) or a rerun of the same
analysis evaluates only the pairs still missing. Nothing here
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
from masklab.scale.executors import EXECUTORS, MAX_ARRAY_TASKS, SlurmOptions, max_local_jobs
from masklab.scale.jobs import (
    POLL_S,
    JobFailed,
    JobRecord,
    JobsInterrupted,
    Submission,
    Watch,
    _sigterm_as_interrupt,
    end_local_jobs,
    ids_text,
)


class PairJob(submitit.helpers.Checkpointable):
    """What one job runs: `evaluate_pairs` on its pairs, with `threads` torch threads. Checkpointable: a
    preempted job is requeued with the same call, which skips the pairs already stored. Returns a dict (what
    the shared wait, `masklab.scale.jobs.Watch`, reads as a task's result): the pairs it evaluated."""

    def __call__(self, task: BarrierTask, pairs: list[Pair], threads: int | None = None) -> dict:
        if threads:
            torch.set_num_threads(threads)
        return {"evaluated": evaluate_pairs(task, pairs), "error": None}


class SubmititEngine:
    """Evaluate pending pairs as `jobs` submitit jobs (`executor` "local": processes on this machine; "slurm":
    one job array with the resources of `slurm`).

    The wait is the shard jobs' (`masklab.scale.jobs.Watch`): it ends on every way a task can end (its result;
    a local process killed or gone; a SLURM task cancelled, preempted past its requeue, out of time or memory,
    or forgotten), and a task that ended without its result is one line (`JobFailed`, exit 2) that says how it
    ended, where its log is, how many pairs are stored and that rerunning the same analysis evaluates only the
    pairs still missing. Ctrl-C (or SIGTERM) ends every local job this engine started (`end_local_jobs`);
    SLURM tasks keep running (`JobsInterrupted` says so)."""

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
        wait(submission(submitted, self.executor, folder, task), task, pairs, progress)


def submission(submitted: list, executor: str, folder: Path, task: BarrierTask) -> Submission:
    """The submitted jobs as a `Submission` the shared wait watches. Its one 'run' is the barrier folder, which
    holds no task progress files: the wait finds no training task's pid there to end."""
    record = JobRecord(executor, [str(job.job_id) for job in submitted], [Path(task.folder).name],
                       str(Path(task.folder).parent), str(folder), [])
    return Submission(record, [Path(task.folder)], [], list(submitted))


def wait(sub: Submission, task: BarrierTask, pairs: Sequence[Pair], progress: Progress | None = None, *,
         poll_s: float | None = None) -> None:
    """Wait for the jobs of `sub` (evaluating `pairs` of `task`), calling `progress(new pairs stored)` as the
    result files appear; see `SubmititEngine` for how it ends."""
    watch = Watch(sub)
    pause = poll_s if poll_s is not None else POLL_S.get(sub.executor, 1.0)
    done = 0

    def stored() -> int:
        return len(pairs) - len(pending_pairs(task, pairs))

    try:
        with _sigterm_as_interrupt():
            while True:
                watch.poll()
                now = stored()
                if progress is not None and now > done:
                    progress(now - done)
                done = max(done, now)
                if watch.finished:
                    break
                time.sleep(pause)
    except KeyboardInterrupt:
        if sub.executor == "slurm":
            raise JobsInterrupted(f"the {len(sub.job_ids)} SLURM barrier task(s) keep running "
                                  f"({ids_text(sub.job_ids)}); {stored()} of {len(pairs)} pairs are stored: rerun the "
                                  "same analysis to evaluate the pairs still missing (cancel them with scancel "
                                  f"{' '.join(sorted({j.split('_')[0] for j in sub.job_ids}))})") from None
        pids = end_local_jobs(sub)
        raise JobsInterrupted(f"ended the {len(pids)} local barrier job(s) (pids {' '.join(map(str, pids))}); "
                              f"{stored()} of {len(pairs)} pairs are stored: rerun the same analysis to evaluate "
                              "the pairs still missing") from None
    failed = [t for t in watch.tasks if t.failure]
    if failed:
        first = failed[0]
        others = f" ({len(failed) - 1} more task(s) ended too)" if len(failed) > 1 else ""
        text = (f"barrier {first.label(sub.executor, len(watch.tasks))} {first.failure}; its log: {first.log}; "
                f"{stored()} of {len(pairs)} pairs are stored{others}: rerun the same analysis to evaluate the "
                "pairs still missing")
        if first.crashed:
            raise RuntimeError(text)
        raise JobFailed(text)
    if progress is not None and stored() > done:
        progress(stored() - done)


__all__ = ["PairJob", "SubmititEngine", "submission", "wait"]
