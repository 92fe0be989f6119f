"""Crash safety: `masklab generate` killed with SIGKILL at chosen and at random moments, then resumed; and
a second writer refused while one runs. Real processes, tiny digits runs.

The killed runs are processes forked from a multiprocessing fork server that has imported torch and masklab
once, so each costs a fraction of a second instead of the seconds of a cold start; the final resume and
the second-writer test run the real command line in fresh interpreters.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab import files as W
from masklab.cli import main
from masklab.store.lock import RunLock
from masklab.store.paths import RECORD_RE
from masklab.store.run import Run

REPO = Path(__file__).resolve().parents[2]
N = 8
ARGS = ["--masks", str(N), "--epochs", "3", "--width", "0.25", "--keep-scores", "--snapshot-every", "1", "--stack", "1"]
CONFIG = {"masks": N, "epochs": 3, "width": 0.25, "keep_scores": True, "snapshot_every": 1, "stack": 1}

# Runs `masklab generate ARGV`, SIGKILLing itself at a chosen moment: "replace:<suffix>" just before the
# temporary file of the target is renamed into place (written and fsynced, not yet visible), "fsync:<n>" at
# the n-th fsync (a file written but not yet synced or renamed); "none:" runs to the end.
DRIVER = """
import os, signal, sys
kind, target = KILL.split(":", 1)
real_replace, real_fsync, calls = os.replace, os.fsync, [0]
def replace(src, dst, *args, **kwargs):
    if kind == "replace" and str(dst).endswith(target):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
def fsync(fd):
    calls[0] += 1
    if kind == "fsync" and calls[0] == int(target):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
os.replace, os.fsync = replace, fsync
from masklab.cli import main
sys.exit(main(ARGV))
"""


def _env(**extra) -> dict:
    # one thread: the test machine runs other work; PYTHONPATH: the checkout, however masklab is installed
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def forkserver():
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the server when it starts
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "sklearn.datasets", "masklab.cli",
                                    "masklab.generation", "masklab.train.trainer", "masklab.data"])
        warm = ctx.Process(target=exec, args=("pass", {}))
        warm.start()
        warm.join(120)
        yield ctx
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _start(ctx, runs: Path, kill: str = "none:"):
    argv = ["generate", *ARGS, "--runs-dir", str(runs), "--quiet", "--resume"]
    proc = ctx.Process(target=exec, args=(DRIVER, {"__name__": "driver", "ARGV": argv, "KILL": kill}))
    proc.start()
    return proc


def _registered(path: Path) -> dict[int, tuple[bytes, bytes]]:
    """Finished masks: id -> (mask file bytes, record bytes)."""
    out = {}
    for p in sorted((path / "masks").glob("*.json")) if (path / "masks").is_dir() else []:
        m = RECORD_RE.fullmatch(p.name)
        if m:
            out[int(m.group(1))] = ((path / "masks" / f"{m.group(1)}.mask").read_bytes(), p.read_bytes())
    return out


def _wait_for(predicate, alive, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and alive():
        if time.monotonic() > deadline:
            raise TimeoutError("generate made no progress")
        time.sleep(0.01)


def test_sigkill_at_chosen_and_random_moments_then_resume(tmp_path, forkserver):
    runs = tmp_path / "runs"
    path = runs / masklab.RunConfig(**CONFIG).run_id
    rng = random.Random(1234)
    kept: dict[int, tuple[bytes, bytes]] = {}
    plans = ["replace:run.json",  # while creating the run directory
             "replace:000001.mask",  # mask 1's file written, not yet renamed into place
             "replace:masks/000002.json",  # mask 2's file in place, its record not yet
             "fsync:11",  # the 11th fsync: a file of a mask written, not yet synced
             "random", "random", "random"]  # during training or writing
    killed = 0
    for plan in plans:
        if plan == "random":
            proc = _start(forkserver, runs)
            done = len(_registered(path))
            _wait_for(lambda d=done: len(_registered(path)) > d, proc.is_alive)
            time.sleep(rng.uniform(0.0, 0.1))
            proc.kill()
        else:
            proc = _start(forkserver, runs, kill=plan)
        proc.join(120)
        assert proc.exitcode in (0, -signal.SIGKILL)
        killed += proc.exitcode == -signal.SIGKILL
        if plan == "replace:run.json":
            assert not path.exists() and list(runs.glob(".tmp-*"))  # nothing half-made is visible
            continue
        now = _registered(path)
        assert all(now[i] == kept[i] for i in kept), "a finished mask changed"
        kept = now
        assert not (Run(path).verify()["status"] == "problem").any()  # every registered mask is whole
    # every plan after the first resumed a killed run; a fast machine may finish all masks in the random ones
    assert killed >= 5 and 0 < len(kept) <= N

    # resume to the end with the real command line
    result = subprocess.run([sys.executable, "-m", "masklab", "generate", *ARGS, "--runs-dir", str(runs),
                             "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(path)
    if len(kept) < N:
        assert f"resuming: {len(kept)} masks stored, training {N - len(kept)} more" in result.stdout
    else:  # the random kills came too late to stop the last stack (fast machines, fused stacked training)
        assert f"is complete ({N} masks): nothing to train" in result.stdout
    run = Run(path)
    assert run.ids == list(range(N))
    assert sorted(int(RECORD_RE.fullmatch(p.name).group(1)) for p in (path / "masks").glob("*.json")) == \
        list(range(N))
    table = run.verify()  # extras per mask: history, scores, snapshots, predictions
    assert (table["status"] == "ok").all() and list(table["kind"].value_counts()[["mask", "extra"]]) == [N, 4 * N]
    final = _registered(path)
    assert all(final[i] == kept[i] for i in kept)
    assert not list(path.rglob(f"*{W.TMP_MARK}*")) and not list(runs.glob(".tmp-*"))

    # and the masks are exactly those of a run that was never interrupted (small steps train on one thread)
    clean = masklab.generate(runs_dir=tmp_path / "clean", **CONFIG)
    assert np.array_equal(np.asarray(run.masks.bits), np.asarray(clean.masks.bits))
    assert list(run.table["checksum"]) == list(clean.table["checksum"])


def test_a_second_writer_is_refused_and_a_killed_writer_leaves_no_lock(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--masks", "200", "--epochs", "2", "--width", "0.25"]
    path = runs / masklab.RunConfig(masks=200, epochs=2, width=0.25).run_id
    proc = subprocess.Popen([sys.executable, "-m", "masklab", "generate", *args, "--runs-dir", str(runs), "--quiet"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_registered(path)) >= 1, lambda: proc.poll() is None)
        assert proc.poll() is None, proc.communicate()[1]
        for extra in ([], ["--resume"]):
            assert main(["generate", *args, "--runs-dir", str(runs), "--quiet", *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("masklab: error: run ")
            assert f"is being written by another process (pid {proc.pid})" in err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        RunLock(path / "lock").acquire().release()  # the OS released the dead writer's lock
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("argv", [["generate", "--sparsity", "1.5"], ["show", "nope"]])
def test_console_errors_exit_2_with_one_line(tmp_path, argv):
    result = subprocess.run([sys.executable, "-m", "masklab", *argv, "--runs-dir", str(tmp_path / "runs")],
                            env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("masklab: error: ")
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
