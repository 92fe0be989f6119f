"""What SLURM says about a job array's tasks, asked of its own commands (squeue, sacct, scontrol, scancel).

submitit submits the array and runs the tasks, but its view of a task is sacct's State alone: it counts
PREEMPTED (a task preempted with PreemptMode=CANCEL) and UNKNOWN (every state on a cluster without
accounting) as still running, and its watcher slows to one sacct call per 10 minutes; a wait built on it
never ends for a preempted or cancelled task, and cannot say why a task pends. Own code, then, for the
state only (not a scheduler): `squeue` first (the controller's view: every job it still holds, finished
ones for MinJobAge, with the reason a task pends), `sacct` for the tasks the controller has forgotten
(accounting), every call bounded by a timeout, so that no question to SLURM can hang a wait.
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass

from masklab.errors import UserError

CALL_TIMEOUT_S = 30  # one squeue / sacct / scancel call; a controller that takes longer counts as not answering
# SLURM's job states (squeue's %T), by whether a task can still run
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                    "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "RESV_DEL_HOLD"})
TERMINAL = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                      "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})
UNKNOWN = "UNKNOWN"
PENDING_REASONS = frozenset({"BeginTime", "Priority", "Resources", "Dependency", "JobArrayTaskLimit",
                             "ReqNodeNotAvail", "PartitionTimeLimit", "QOSMaxJobsPerUserLimit", "AssocGrpCpuLimit"})
# what each terminal state means, for the one line that reports a task that ended without its result
MEANING = {"CANCELLED": "was cancelled", "PREEMPTED": "was preempted and not requeued (its partition's "
           "PreemptMode cancels)", "TIMEOUT": "ran out of its time limit", "NODE_FAIL": "lost its node",
           "FAILED": "failed", "OUT_OF_MEMORY": "ran out of memory (raise --slurm-mem)",
           "BOOT_FAIL": "could not boot its node", "DEADLINE": "missed its deadline",
           "COMPLETED": "ended", "REVOKED": "was revoked", "SPECIAL_EXIT": "ended with a special exit"}


@dataclass(frozen=True)
class TaskState:
    """One task as SLURM sees it: `state` (squeue's word, e.g. PENDING, CANCELLED; UNKNOWN when neither
    squeue nor sacct knows it), `reason` (why it pends or ended, "" for None), `exit_code` ("0:9": signal
    9), `by` (who cancelled it), `source` ("squeue" or "sacct")."""

    state: str
    reason: str = ""
    exit_code: str = ""
    by: str = ""
    source: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def text(self) -> str:
        """e.g. "PENDING (Resources)", "CANCELLED (by root)", "FAILED (exit code 1)", "TIMEOUT (signal 9)"."""
        detail = self.detail()
        return self.state + (f" ({detail})" if detail else "")

    def detail(self) -> str:
        """Who cancelled it, why it pends or ended, its signal or exit code: "by root, signal 15"."""
        details = [f"by {self.by}"] if self.by else []
        # a finished job keeps the reason it last pended for (sacct shows "BeginTime" for a cancelled one)
        if self.reason and self.reason != "None" and (self.state == "PENDING" or self.reason not in PENDING_REASONS):
            details.append(self.reason)
        code, _, sig = self.exit_code.partition(":")
        if self.terminal and self.state != "COMPLETED":
            if sig and sig != "0":
                details.append(f"signal {sig}")
            elif code and code != "0":
                details.append(f"exit code {code}")
        return ", ".join(details)


class SlurmUnavailable(UserError):
    """The controller (or sacct's database) did not answer."""


def _run(argv: list[str], timeout: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SlurmUnavailable(f"{argv[0]} not found: SLURM's commands are not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"`{' '.join(argv[:2])}` did not answer within {timeout:g} s") from None


def first_error(text: str) -> str:
    """The first line of a SLURM command's stderr that says something ("sbatch: error: ..." without the
    prefix repeated), or the text itself."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return re.sub(r"^(\w+: )?error: ", "", line)
    return lines[0] if lines else ""


def check_controller() -> None:
    """Raise a one-line UserError unless `sbatch` is on PATH and the controller answers `scontrol ping`."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no sbatch found on this machine (SLURM is not installed or not on PATH); "
                        "use --executor local, or run on a SLURM login node")
    try:
        answer = _run(["scontrol", "ping"], timeout=CALL_TIMEOUT_S)
    except SlurmUnavailable as e:
        raise UserError(f"--executor slurm: the SLURM controller does not answer ({e}); check `scontrol ping`, "
                        "or use --executor local") from None
    if answer.returncode != 0 or "UP" not in answer.stdout:
        said = first_error(answer.stderr) or answer.stdout.strip()
        raise UserError(f"--executor slurm: the SLURM controller does not answer (`scontrol ping`: {said}); start "
                        "it or ask your administrators, or use --executor local")


def _user(uid: str) -> str:
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return uid


def _split_state(word: str) -> tuple[str, str]:
    """("CANCELLED", "root") from sacct's "CANCELLED by 0"; squeue's plain words pass through."""
    state, _, by = word.strip().partition(" by ")
    return state.rstrip("+"), (_user(by) if by else "")


def _expand(job_id: str) -> list[str]:
    """Task ids of an id as squeue/sacct print it: "12_3" -> ["12_3"]; "12_[0-2,5%4]" -> 12_0 .. 12_2, 12_5."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(%\d+)?\]", job_id)
    if not match:
        return [job_id]
    out: list[str] = []
    for part in match.group(2).split(","):
        low, _, high = part.partition("-")
        out.extend(f"{match.group(1)}_{i}" for i in range(int(low), int(high or low) + 1))
    return out


def task_states(job_ids: list[str]) -> dict[str, TaskState]:
    """The state of each task id ("12_0", or a plain job id); UNKNOWN for those neither squeue nor sacct
    knows. Raises SlurmUnavailable when squeue cannot reach the controller."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    states: dict[str, TaskState] = {}
    if arrays:
        answer = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%r"])
        if answer.returncode != 0 and "Invalid job id" not in answer.stderr:
            raise SlurmUnavailable(f"squeue: {first_error(answer.stderr) or 'failed'}")
        for line in answer.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                state, by = _split_state(parts[1])
                for task in _expand(parts[0]):
                    states[task] = TaskState(state, parts[2], by=by, source="squeue")
    # sacct for the tasks the controller has forgotten, and for who cancelled a task and its exit code
    missing = sorted({job_id.split("_")[0] for job_id in job_ids if job_id not in states or states[job_id].terminal})
    if missing and shutil.which("sacct"):
        try:
            accounted = _run(["sacct", "-X", "-n", "-P", "-j", ",".join(missing), "-o", "JobID,State,Reason,ExitCode"])
            lines = accounted.stdout.splitlines() if accounted.returncode == 0 else []
        except SlurmUnavailable:
            lines = []  # accounting is an extra: without it, the controller's view is all there is
        for line in lines:
            parts = line.strip().split("|")
            if len(parts) == 4:
                state, by = _split_state(parts[1])
                for task in _expand(parts[0]):
                    known = states.get(task)
                    if known is None:
                        states[task] = TaskState(state, parts[2], parts[3], by, source="sacct")
                    elif known.terminal and known.state == state:  # the controller's word, with sacct's details
                        states[task] = TaskState(state, known.reason, parts[3], by, source="squeue")
    return {job_id: states.get(job_id, TaskState(UNKNOWN)) for job_id in job_ids}


def time_left_s(job_id: str) -> float | None:
    """Seconds left before the time limit of a running job (squeue's %L), or None when SLURM does not say."""
    try:
        answer = _run(["squeue", "-h", "-j", job_id, "-o", "%L"], timeout=10)
    except SlurmUnavailable:
        return None
    text = answer.stdout.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if answer.returncode != 0 or not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def cancel(job_ids: list[str]) -> None:
    """scancel these tasks (or whole arrays); a one-line UserError when scancel refuses."""
    if not job_ids:
        return
    answer = _run(["scancel", *job_ids])
    if answer.returncode != 0:
        raise UserError(f"scancel {' '.join(job_ids)}: {first_error(answer.stderr) or 'failed'}")

