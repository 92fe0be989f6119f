"""Same run, same bits: a mask's bits, scores, recycling maps, gains, BatchNorm statistics and recorded
figures depend on its own seeds only: not on the stack size, its neighbours in the stack, the thread
count, or a kill and resume (CPU)."""

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
import torch

import masklab
from masklab.config import RunConfig
from masklab.data import IDX_FILES, load_dataset, read_idx
from masklab.train import plan as plan_module
from masklab.train.stacked import auto_stack
from masklab.train.trainer import train_masks

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # test_golden_bits.fingerprint
FASHION = "/usr/share/datasets/fashion-mnist"


def differences(a, b) -> list[str]:
    """Names of everything that differs between two TrainedMasks of the same mask (empty: identical)."""
    out = []
    for name in ("masks", "scores", "src", "draw", "weights"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and not all(np.array_equal(p, q) for p, q in zip(x, y))):
            out.append(name)
    if a.alphas != b.alphas:
        out.append("alphas")
    for key in ("test_acc", "test_loss", "train_loss", "train_acc", "best_test_acc", "best_epoch", "recycled"):
        if a.metrics[key] != b.metrics[key]:
            out.append(key)
    if not a.history.equals(b.history):
        out.append("history")
    out += [f"buffer {k}" for k in a.buffers if not np.array_equal(a.buffers[k], b.buffers[k])]
    return out


CASES = {
    "edge-popup": (RunConfig(device="cpu", epochs=3, width=0.5), "digits", {}),
    "biprop+iwr": (RunConfig(device="cpu", epochs=3, method="biprop", recycle="iwr", recycle_every=1), "digits", {}),
    "iterand, own data seeds": (RunConfig(device="cpu", epochs=3, recycle="iterand", vary_data_seed=True,
                                          width=0.5), "digits", {}),
    "conv2 biprop": (RunConfig(device="cpu", dataset="synthetic", input_shape="3x8x8", model="conv2", width=0.25,
                               epochs=3, method="biprop", recycle="iwr", recycle_every=1), "synthetic",
                     {"input_shape": (3, 8, 8)}),
    "dense": (RunConfig(device="cpu", epochs=2, method="dense", width=0.5, vary_data_seed=True), "digits", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stack_size_and_neighbours_do_not_change_a_mask(case):
    config, name, kw = CASES[case]
    data = load_dataset(name, **kw)
    alone = {i: train_masks(config, [i], dataset=data)[0] for i in (0, 2)}
    for stack in ([0, 1, 2], [2, 0], [5, 2, 0, 3]):
        for result in train_masks(config, stack, dataset=data):
            if result.index in alone:
                assert differences(alone[result.index], result) == [], (case, stack, result.index)
    if config.recycle == "iwr":  # the maps compared above are not trivially the identity
        assert any((m != np.arange(m.size)).any() for m in alone[0].src)
    if config.method != "dense":
        assert alone[0].trained_with["stack"] == 1
        assert result.trained_with == {**result.trained_with, "stack": 4, "position": 3}


@pytest.mark.parametrize("case", ["biprop+iwr", "conv2 biprop", "dense"])
def test_thread_count_does_not_change_a_mask(case):
    config, name, kw = CASES[case]
    data = load_dataset(name, **kw)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = train_masks(config, [0, 1], dataset=data)
        torch.set_num_threads(2)
        two = train_masks(config, [1, 0], dataset=data)
    finally:
        torch.set_num_threads(old)
    assert one[0].trained_with["threads"] == 1 and two[0].trained_with["threads"] == 2
    assert differences(one[0], two[1]) == [] and differences(one[1], two[0]) == []


@pytest.mark.parametrize("case", ["biprop+iwr", "conv2 biprop", "iterand, own data seeds"])
def test_measured_threads_and_stack_sizes_switch_mid_run_and_do_not_change_a_mask(case, monkeypatch):
    """`--stack auto` on CPU: blocks of steps run as sub-stacks of 3 or 1 masks on 1 or 2 threads, or as
    sub-stacks of 2 and 1 side by side on 2 threads, as measured (here switched every other block); every mask
    equals the mask trained alone on one thread."""
    config, name, kw = CASES[case]
    config = config.replace(epochs=4)
    data = load_dataset(name, **kw)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fixed = [train_masks(config, [i], dataset=data)[0] for i in range(3)]
        torch.set_num_threads(2)
        monkeypatch.setattr(plan_module.StepPlan, "PROBE_EVERY", 2)  # switch often
        monkeypatch.setattr(plan_module.StepPlan, "BLOCK_SECONDS", 0.0)  # blocks of one step
        seen = []
        real = plan_module.StepPlan.next
        monkeypatch.setattr(plan_module.StepPlan, "next", lambda self: seen.append(real(self)) or seen[-1])
        tuned = train_masks(config, [0, 1, 2], dataset=data, stacks=(3, 1))
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(old)
    assert {(c.stack, c.threads, c.side) for c in seen} == {(3, 1, False), (3, 2, False), (1, 1, False),
                                                            (1, 2, False), (2, 2, True)}
    switches = sum(a != b for a, b in zip(seen, seen[1:]))
    assert switches > 10, switches
    assert tuned[0].trained_with["substacks"] == [1, 2, 3] and tuned[0].trained_with["threads"] == 2
    assert [differences(a, b) for a, b in zip(fixed, tuned)] == [[], [], []]


def test_step_plan_takes_the_fastest_and_probes_the_others():
    plan = plan_module.StepPlan(8, threads=(1, 2), stacks=(8, 1))
    first = plan.next()
    assert first == plan_module.Choice(8, 1)
    plan.record(first, 1.0)  # the warm-up block pays one-time costs: not counted
    times = {(8, 1): 0.004, (8, 2): 0.002, (1, 1): 0.006, (1, 2): 0.005}
    for _ in range(4):  # each candidate once
        choice = plan.next()
        plan.record(choice, times[(choice.stack, choice.threads)])
    assert set(plan.seconds) == set(plan.candidates) and plan.best() == plan_module.Choice(8, 2)
    choices = []
    for _ in range(3 * plan.PROBE_EVERY):
        choice = plan.next()
        choices.append(choice)
        plan.record(choice, times[(choice.stack, choice.threads)])
    assert choices.count(plan_module.Choice(8, 2)) == len(choices) - 3  # one probe every PROBE_EVERY blocks
    times[(8, 2)] = 0.05  # the machine got busy: two threads are slow now
    for _ in range(3 * plan.PROBE_EVERY):
        choice = plan.next()
        plan.record(choice, times[(choice.stack, choice.threads)])
    assert plan.best() == plan_module.Choice(8, 1)
    assert plan_module.StepPlan(3, threads=(1,)).candidates == [plan_module.Choice(3, 1)]
    assert plan_module.StepPlan(3, threads=(1,), side=True).candidates == [plan_module.Choice(3, 1)]  # no 2nd thread
    assert plan_module.StepPlan(5, threads=(1, 2), side=True).candidates[-1] == plan_module.Choice(3, 2, side=True)
    assert plan_module.StepPlan(1, threads=(1, 2), side=True).candidates == [plan_module.Choice(1, 1),
                                                                              plan_module.Choice(1, 2)]
    # more threads than masks (a 16-core node, K = 8): one mask per sub-stack, 8 of them side by side
    assert plan_module.StepPlan(8, threads=(1, 16), side=True).candidates[-1] == plan_module.Choice(1, 16, side=True)


def test_batchnorm_statistics_do_not_depend_on_the_stack():
    """ResNet-18's BatchNorm: statistics per mask, equal alone and stacked (torch's own CPU BatchNorm
    reduces differently by channel count and, for 1 x 1 maps, by thread count)."""
    data = load_dataset("synthetic", input_shape=(3, 8, 8))
    config = RunConfig(device="cpu", dataset="synthetic", input_shape="3x8x8", model="resnet18", width=0.125, epochs=1,
                       batch_size=256)
    alone = train_masks(config, [1], dataset=data)[0]
    stacked = train_masks(config, [0, 1], dataset=data)
    assert alone.buffers and differences(alone, stacked[1]) == []
    assert not np.array_equal(stacked[0].buffers["bn1.running_mean"], stacked[1].buffers["bn1.running_mean"])


def test_auto_stack_follows_the_measured_rule():
    cpu = torch.device("cpu")
    digits = load_dataset("digits")
    assert auto_stack(RunConfig(device="cpu"), digits, cpu, 16) == 8
    assert auto_stack(RunConfig(device="cpu"), digits, cpu, 3) == 3
    assert auto_stack(RunConfig(device="cpu", method="dense"), digits, cpu, 16) == 1
    cifar = load_dataset("synthetic", input_shape=(3, 32, 32))
    assert auto_stack(RunConfig(device="cpu", dataset="synthetic", model="conv4"), cifar, cpu, 16) == 1


# ---- the whole chain on real data: generate with stack 1 / 2 / 3 / auto, and a killed and resumed run ----
@pytest.fixture(scope="module")
def small_fashion(tmp_path_factory) -> Path:
    """The first 6,000 training and 1,000 test images of Fashion-MNIST, as IDX files (the real format)."""
    if not os.path.isdir(FASHION):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("fashion")
    for name, count in zip(IDX_FILES, (6000, 6000, 1000, 1000)):
        source = Path(FASHION) / f"{name}.gz"
        array = read_idx(source, 0x803 if "images" in name else 0x801)[:count]
        header = (0x803 if array.ndim == 3 else 0x801).to_bytes(4, "big") + b"".join(
            int(d).to_bytes(4, "big") for d in array.shape)
        (root / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return root


def fingerprint(run) -> dict:
    """Everything about a run's masks that must not depend on how it was trained."""
    table = run.table.drop(columns=["seconds", "finished"], errors="ignore").reset_index(drop=True)
    out = {"table": table, "bits": np.asarray(run.masks.bits).copy()}
    for i in run.ids:
        out[f"scores {i}"] = np.concatenate([s.reshape(-1) for s in run.scores(i)])
        src = run.index_map(i, "src")
        out[f"src {i}"] = None if src is None else np.concatenate(src)
        out[f"history {i}"] = run.history(i)
    return out


def assert_same_runs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        elif a[key] is None:
            assert b[key] is None, key
        else:
            assert a[key].equals(b[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("method", [{"method": "edge-popup"}, {"method": "biprop", "recycle": "iwr",
                                                                 "recycle_every": 1}])
def test_generate_gives_the_same_run_for_every_stack_and_after_a_kill(small_fashion, tmp_path, method):
    config = RunConfig(device="cpu", dataset="fashion-mnist", data_root=str(small_fashion), model="lenet-300-100",
                       epochs=3, masks=3, keep_scores=True, **method)
    data = load_dataset("fashion-mnist", small_fashion)
    runs = {}
    for stack in (1, 2, 3, 0):
        run = masklab.generate(config.replace(stack=stack), runs_dir=tmp_path / f"stack{stack}", data=data)
        runs[stack] = fingerprint(run)
        assert run.id == config.run_id  # the stack is not part of the run's identity
    for stack in (2, 3, 0):
        assert_same_runs(runs[1], runs[stack])

    # SIGKILL once the first mask is stored (stack 1), then resume with another stack size
    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "masklab", "generate", "--config", str(tmp_path / "stack1" / config.run_id /
                                                                         "config.toml"),
            "--runs-dir", str(killed), "--stack", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / config.run_id / "masks" / "000000.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()
    resumed = masklab.generate(config.replace(stack=2), runs_dir=killed, data=data, resume=True)
    assert resumed.complete
    assert_same_runs(runs[1], fingerprint(resumed))


# ---- the same bits in processes started with one and with two threads -------------------------------------
THREAD_CASES = {  # small layers: MKL split the reductions of 10- and 16-wide products across threads
    "mlp dense, 16 wide": {"method": "dense", "width": 0.0625},
    "mlp dense, 10 wide": {"method": "dense", "width": 0.0390625},
    "mlp edge-popup, 16 wide, stack 1": {"width": 0.0625, "stack": 1},
    "mlp biprop, 10 wide, stack 2": {"method": "biprop", "width": 0.0390625, "stack": 2},
    "conv2 edge-popup": {"dataset": "synthetic", "input_shape": "3x8x8", "model": "conv2", "width": 0.125},
}
_FINGERPRINTS = """
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
import masklab
from test_golden_bits import fingerprint
cases = json.loads(sys.argv[2])
out = {}
for name, fields in cases.items():
    with tempfile.TemporaryDirectory() as runs:
        fields = {"dataset": "digits", "model": "mlp", "masks": 2, "epochs": 3, "batch_size": 64,
                  "keep_scores": True, "device": "cpu", **fields}
        out[name] = fingerprint(masklab.generate(**fields, runs_dir=runs))
print(json.dumps(out))
"""


def test_processes_with_one_and_two_threads_make_the_same_runs():
    """Golden fingerprints of small runs (dense included; 16- and 10-wide layers) in processes started with
    OMP_NUM_THREADS=1 and =2: in the second the trainer also switches thread counts between epochs."""
    import json

    results = {}
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", _FINGERPRINTS, str(REPO / "tests"), json.dumps(THREAD_CASES)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results[threads] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["1"] == results["2"]


# ---- checkpoints: a mask continued from the end of any epoch is the mask trained without a stop ------------
@pytest.mark.parametrize("case", list(CASES))
def test_a_mask_continued_from_a_checkpoint_is_the_uninterrupted_mask(case):
    """Every epoch's checkpoints (through their stored form, `to_arrays`), continued in another stack: the
    same masks, scores, maps, gains, BatchNorm statistics, history and figures as without a stop."""
    from masklab.train.trainer import Checkpoint

    config, name, kw = CASES[case]
    config = config.replace(epochs=4, snapshot_every=2)
    data = load_dataset(name, **kw)
    saved: list[list] = []
    whole = train_masks(config, [0, 1, 2], dataset=data, on_checkpoint=saved.append)
    by_epoch: dict[int, dict] = {}  # (dense networks train one after another: their checkpoints come in turn)
    for c in (c for checkpoints in saved for c in checkpoints):
        by_epoch.setdefault(c.epoch, {})[c.index] = Checkpoint.from_arrays(c.to_arrays())
    assert sorted(by_epoch) == [0, 1, 2] and all(sorted(v) == [0, 1, 2] for v in by_epoch.values())  # not the last
    for epoch, stored in by_epoch.items():
        again = train_masks(config, [2, 0], dataset=data, resume=[stored[2], stored[0]])
        assert differences(whole[2], again[0]) == [] and differences(whole[0], again[1]) == [], (case, epoch)
        assert again[0].snapshots and all(np.array_equal(p, q) for (_, a), (_, b) in
                                           zip(whole[2].snapshots, again[0].snapshots) for p, q in zip(a, b))


def _checkpoint_epoch(run_dir: Path) -> int:
    """The furthest epoch any checkpoint of the run holds (-1: none)."""
    import json

    best = -1
    for path in (run_dir / "checkpoints").glob("*.npz") if (run_dir / "checkpoints").is_dir() else []:
        try:
            with np.load(path) as z:
                best = max(best, int(json.loads(bytes(z["meta"]).decode())["epoch"]))
        except (OSError, ValueError, KeyError):
            pass  # replaced while read
    return best


KILL_POINTS = {  # when to stop the run: (what is on disk by then, whether a mask in flight has a checkpoint)
    "first checkpoint": (lambda run: _checkpoint_epoch(run) >= 0, True),
    "epoch 4 checkpoint": (lambda run: _checkpoint_epoch(run) >= 3, True),
    "first mask stored": (lambda run: (run / "masks" / "000000.json").exists(), False),
}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_the_same_command_again_continues_a_stopped_run_with_the_same_bits(tmp_path, sig, point):
    """`masklab generate` stopped by Ctrl-C or SIGKILL, then the identical command again: it continues (no
    --resume), the masks in flight from their last finished epoch, and the run equals one never stopped."""
    from test_golden_bits import fingerprint as golden_fingerprint

    fields = {"dataset": "digits", "model": "mlp", "masks": 3, "epochs": 8, "stack": 2, "keep_scores": True,
              "recycle": "iwr", "recycle_every": 2}
    reference = golden_fingerprint(masklab.generate(**fields, runs_dir=tmp_path / "reference"))
    config = RunConfig(**fields)
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "masklab", "generate", "--dataset", "digits", "--masks", "3", "--epochs", "8",
            "--stack", "2", "--keep-scores", "--recycle", "iwr", "--recycle-every", "2", "--runs-dir", str(runs)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reached, in_flight = KILL_POINTS[point]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not reached(runs / config.run_id) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the point to stop it at"
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0].decode()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to continue" in out, out[-2000:]
    left = _checkpoint_epoch(runs / config.run_id)
    assert (left >= 0) == in_flight or not in_flight
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    if left >= 0:
        assert "from their checkpoints" in again.stdout, again.stdout
    run = masklab.Run(runs / config.run_id)
    assert run.complete and not (run.path / "checkpoints").exists()
    assert golden_fingerprint(run) == reference
