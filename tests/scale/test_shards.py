"""Sharded generation: `--shard I/N` processes writing one run at once, `--jobs N` through submitit's real
LocalExecutor, and the SLURM job array checked without a cluster. Every split gives the same run, bit for
bit, as one process makes (tiny digits runs; lenet-300-100 on a slice of Fashion-MNIST)."""

from __future__ import annotations

import gzip
import os
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
from masklab.data import IDX_FILES, read_idx
from masklab.scale.executors import SlurmOptions, sbatch_script
from masklab.store.lock import RunLock
from masklab.store.run import Run
from masklab.store.shards import parse_shard, shard_masks

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[2]
FASHION = "/usr/share/datasets/fashion-mnist"
TINY = ["--masks", "6", "--epochs", "2", "--width", "0.25", "--stack", "1"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "masklab", *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def same_run(a: Run, b: Run) -> None:
    """Same id, bits, scores, maps and table (seconds and timestamps aside)."""
    assert a.id == b.id and a.ids == b.ids
    assert np.array_equal(np.asarray(a.masks.bits), np.asarray(b.masks.bits))
    drop = ["seconds", "finished"]
    assert a.table.drop(columns=drop).equals(b.table.drop(columns=drop))
    for i in a.ids:
        assert a.history(i).equals(b.history(i))


def test_shard_ids_are_interleaved():
    assert parse_shard("1/3") == (1, 3) and parse_shard((0, 1)) == (0, 1)
    assert shard_masks(8, 1, 3) == [1, 4, 7]
    assert sorted(sum((shard_masks(10, i, 4) for i in range(4)), [])) == list(range(10))
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(masklab.UserError, match="shard"):
            parse_shard(bad)


def test_shard_jobs_cover_every_shard_once_and_stay_balanced():
    from masklab.scale.executors import job_shard

    runs, jobs = 10, 2
    for run in range(runs):
        assert sorted(job_shard(j, run, jobs) for j in range(jobs)) == list(range(jobs))
    # ten runs of 3 masks each: shard 0 holds 2 masks, shard 1 holds 1; the jobs share them 15 / 15
    loads = [sum(len(shard_masks(3, job_shard(j, r, jobs), jobs)) for r in range(runs)) for j in range(jobs)]
    assert loads == [15, 15]


def test_two_shard_processes_at_once_make_the_one_process_run(tmp_path):
    one = masklab.generate(runs_dir=tmp_path / "one", **RunConfig(masks=6, epochs=2, width=0.25).to_dict(
        non_default=True))
    runs = tmp_path / "sharded"
    procs = [_cli("generate", *TINY, "--runs-dir", str(runs), "--shard", f"{i}/2", "--quiet") for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0].strip() == outs[1][0].strip() == str(runs / one.id)
    sharded = Run(runs / one.id)
    same_run(one, sharded)
    assert {sharded.record(i)["trained_with"]["stack"] for i in sharded.ids} == {1}


def test_a_second_process_of_the_same_shard_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["generate", *TINY, "--runs-dir", str(runs), "--shard", "0/2", "--quiet"]) == 0
    path = Path(capsys.readouterr().out.strip())
    with RunLock(path / "locks" / "shard-1-of-2", what=f"shard 1/2 of run {path}"):  # shard 1 is running
        assert main(["generate", *TINY, "--runs-dir", str(runs), "--shard", "1/2", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"shard 1/2 of run {path} is being written by another process" in err
        assert main(["generate", *TINY, "--runs-dir", str(runs), "--shard", "0/2", "--quiet"]) == 0  # others go on
    with RunLock(path / "lock", shared=True):  # a shard holds the run: a whole-run writer must wait
        assert main(["generate", *TINY, "--runs-dir", str(runs), "--resume", "--quiet"]) == 2
        assert "is being written by shard processes" in capsys.readouterr().err
    assert main(["generate", *TINY, "--runs-dir", str(runs), "--shard", "1/2", "--quiet"]) == 0
    assert Run(path).complete


def test_a_killed_shard_rerun_loses_and_duplicates_nothing(tmp_path):
    config = RunConfig(masks=6, epochs=4, width=0.25)
    one = masklab.generate(runs_dir=tmp_path / "one", **config.to_dict(non_default=True))
    runs = tmp_path / "sharded"
    args = ["--masks", "6", "--epochs", "4", "--width", "0.25", "--stack", "1", "--runs-dir", str(runs), "--quiet"]
    proc = _cli("generate", *args, "--shard", "0/2")
    first = runs / one.id / "masks" / "000000.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert main(["generate", *args, "--shard", "1/2"]) == 0  # the other shard, meanwhile
    assert main(["generate", *args, "--shard", "0/2", "--resume"]) == 0  # the killed one, rerun
    sharded = Run(runs / one.id)
    same_run(one, sharded)
    assert sorted(p.name for p in (runs / one.id / "masks").iterdir()) == sorted(
        f"{i:06d}.{ext}" for i in range(6) for ext in ("json", "mask"))


@pytest.fixture(scope="module")
def small_fashion(tmp_path_factory) -> Path:
    if not os.path.isdir(FASHION):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("fashion")
    for name, count in zip(IDX_FILES, (3000, 3000, 500, 500)):
        array = read_idx(Path(FASHION) / f"{name}.gz", 0x803 if "images" in name else 0x801)[:count]
        header = (0x803 if array.ndim == 3 else 0x801).to_bytes(4, "big") + b"".join(
            int(d).to_bytes(4, "big") for d in array.shape)
        (root / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return root


@pytest.mark.slow
def test_jobs_through_submitit_make_the_one_process_run_and_resume_after_a_kill(tmp_path, small_fashion, capsys):
    args = ["--dataset", "fashion-mnist", "--data-root", str(small_fashion), "--model", "lenet-300-100",
            "--masks", "4", "--epochs", "3", "--method", "biprop", "--recycle", "iwr", "--recycle-every", "1"]
    assert main(["generate", *args, "--runs-dir", str(tmp_path / "one"), "--quiet"]) == 0
    one = Run(capsys.readouterr().out.strip())
    runs = tmp_path / "jobs"
    # submit without waiting, kill one job's process once a mask is stored, then rerun the same command
    assert main(["generate", *args, "--runs-dir", str(runs), "--jobs", "2", "--no-wait", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(runs / one.id) and out[0].startswith("jobs: ")
    pids = [int(j) for j in out[0].split()[1:]]  # a local job's id is its process id
    deadline = time.monotonic() + 240
    while not any((runs / one.id / "masks").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pids[0], signal.SIGKILL)
    for pid in pids:  # let the other job finish (the jobs are this process's children: reap them)
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                break
            time.sleep(0.1)
    assert main(["generate", *args, "--runs-dir", str(runs), "--jobs", "2", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(runs / one.id)
    same_run(one, Run(runs / one.id))
    assert (runs / one.id / "submitit").is_dir()  # submitit's logs live under the run


def test_slurm_without_slurm_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert main(["generate", *TINY, "--runs-dir", str(tmp_path / "runs"), "--jobs", "4", "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sbatch found" in err and "use --executor local" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def test_the_job_array_carries_its_size_resources_and_setup(tmp_path):
    options = SlurmOptions(partition="gpu", time=30, gpus_per_task=1, cpus_per_task=4, mem="16GB",
                           array_parallelism=2, setup=("module load cuda", "source .venv/bin/activate"))
    script = sbatch_script(options, 4, tmp_path / "submitit", job_name="masklab-test")
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB", "#SBATCH --job-name=masklab-test",
                 "module load cuda", "source .venv/bin/activate"):
        assert line in script, line
    assert script.index("module load cuda") < script.index("srun")  # setup runs before the task


def test_slurm_options_come_from_the_config_table_and_the_flags(tmp_path):
    import argparse

    from masklab.cli.options import slurm_options

    config = tmp_path / "run.toml"
    config.write_text('masks = 8\n\n[slurm]\npartition = "gpu"\ntime = 120\nsetup = ["module load cuda"]\n')
    args = argparse.Namespace(config=str(config), slurm_partition=None, slurm_time=30, slurm_gpus_per_task=1,
                              slurm_cpus_per_task=None, slurm_mem=None, slurm_array_parallelism=None,
                              slurm_setup=None)
    options = slurm_options(args)
    assert options == SlurmOptions(partition="gpu", time=30, gpus_per_task=1, setup=("module load cuda",))
    assert masklab.config.read_config(config).masks == 8  # the table does not disturb the run's keys
    config.write_text('[slurm]\npartitoin = "gpu"\n')
    with pytest.raises(masklab.UserError, match="unknown key 'partitoin'"):
        slurm_options(args)


def test_sweep_jobs_give_the_same_table(tmp_path):
    from masklab.sweep import sweep

    base = RunConfig(epochs=1, width=0.25)
    kw = dict(methods=("edge-popup", "biprop"), sparsities=(0.5,), seeds=3)
    here = sweep(base, runs_dir=tmp_path / "here", **kw)
    there = sweep(base, runs_dir=tmp_path / "there", jobs=2, **kw)
    assert here.drop(columns=["runs"]).equals(there.drop(columns=["runs"]))


def test_local_shard_jobs_share_the_gpus_round_robin(monkeypatch):
    """Each local shard job sees one GPU (its CUDA_VISIBLE_DEVICES): jobs are dealt over the node's GPUs, also
    when there are more jobs than GPUs (before, every job then ran on GPU 0)."""
    import torch

    from masklab.scale import executors

    assert executors.gpu_slots(3, 4, ["auto"]) == [0, 1, 2]
    assert executors.gpu_slots(5, 2, ["cuda"]) == [0, 1, 0, 1, 0]
    assert executors.gpu_slots(3, 0, ["auto"]) == [None] * 3  # no GPU
    assert executors.gpu_slots(3, 2, ["cpu"]) == [None] * 3  # the runs train on the CPU
    assert executors.gpu_slots(2, 2, ["cuda:1"]) == [None] * 2  # a named GPU keeps the node's numbering
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert executors._local_gpus([RunConfig(device="auto")] * 2, 3) == [0, 1, 0]
    assert executors._local_gpus([RunConfig(device="cpu")], 3) == [None] * 3
