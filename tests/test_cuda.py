"""What the CUDA path must do, on a CUDA GPU. Every test here is marked `cuda` and skipped without one (see
tests/conftest.py); the same branches run on CPU tensors in tests/nn/test_device_path.py. Written before a GPU
was lent to the project: the first session with one runs them (bench/gpu_check.py runs them first).

What CUDA promises (docs/gpu.md): a mask's bits reproduce run after run on one GPU model, software stack and
--precision (deterministic algorithms); a stored mask, evaluated there again, gives its recorded figures
exactly; a stack of K masks gives each mask what it gives alone up to the rounding of the kernels cuBLAS and
cuDNN pick for the larger shapes, so bits may differ slightly (STACK_AGREEMENT).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import masklab
from masklab.analysis.interpolation import interpolate
from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.store.bits import MaskSet
from masklab.train.evaluate import evaluate
from masklab.train.trainer import _batches, build_training, train_mask, train_masks, train_step

pytestmark = pytest.mark.cuda

CONV = {"dataset": "synthetic", "input_shape": "3x16x16", "model": "conv2", "width": 0.25, "epochs": 2,
        "batch_size": 64, "device": "cuda"}
MLP = {"dataset": "digits", "model": "mlp", "width": 0.5, "epochs": 3, "batch_size": 64, "device": "cuda"}
# A stacked mask against the same mask trained alone, on CUDA, after these few epochs: the fraction of bits
# that agree, at least (a documented tolerance, not yet measured on a GPU: bench/gpu_check.py reports it).
STACK_AGREEMENT = 0.99
CASES = {"conv edge-popup": CONV, "conv biprop": {**CONV, "method": "biprop"},
         "conv dense": {**CONV, "method": "dense"},
         "mlp edge-popup+iwr": {**MLP, "recycle": "iwr", "recycle_every": 1},
         "mlp biprop+iterand": {**MLP, "method": "biprop", "recycle": "iterand"}}


@pytest.mark.parametrize("case", list(CASES))
def test_each_method_trains_on_cuda_and_records_how(case, tmp_path):
    run = masklab.generate(runs_dir=tmp_path, masks=2, stack=2, **CASES[case])
    name = torch.cuda.get_device_name()
    for i in run.ids:
        record = run.record(i)
        how = record["trained_with"]
        assert (how["device_kind"], how["gpu"], how["precision"]) == ("cuda", name, "fp32")
        assert how["cudnn_deterministic"] and how["deterministic_algorithms"] and not how["cudnn_benchmark"]
        assert not how["tf32_matmul"] and not how["tf32_cudnn"]
        assert how["cuda"] == torch.version.cuda and how["torch"] == torch.__version__
        assert np.isfinite(record["test_loss"]) and 0 <= record["test_acc"] <= 1
        assert [int(m.sum()) for m in run.mask_layers(i)] == list(run.layers["n_keep"])


@pytest.mark.parametrize("case", ["conv edge-popup", "conv biprop", "mlp biprop+iterand"])
def test_cuda_masks_reproduce_run_after_run(case, tmp_path):
    runs = [masklab.generate(runs_dir=tmp_path / str(n), masks=2, stack=2, **CASES[case]) for n in range(2)]
    np.testing.assert_array_equal(runs[0].masks.bits, runs[1].masks.bits)
    for column in ("test_acc", "test_loss", "train_loss"):
        assert list(runs[0].table[column]) == list(runs[1].table[column])


@pytest.mark.parametrize("case", ["conv edge-popup", "conv biprop", "mlp edge-popup+iwr"])
def test_a_stacked_mask_is_the_mask_trained_alone_up_to_rounding(case):
    config = RunConfig(**CASES[case])
    dataset = load_dataset(config.dataset, input_shape=(3, 16, 16) if config.dataset == "synthetic" else None)
    stacked = train_masks(config, [0, 1, 2, 3], dataset=dataset)
    for result in stacked:
        alone = train_mask(config, result.index, dataset=dataset)
        bits = np.concatenate([m.reshape(-1) for m in result.masks])
        alone_bits = np.concatenate([m.reshape(-1) for m in alone.masks])
        agree = float((bits == alone_bits).mean())
        assert agree >= STACK_AGREEMENT, (result.index, agree)
        assert abs(result.metrics["test_acc"] - alone.metrics["test_acc"]) <= 0.02


@pytest.mark.parametrize("case", ["conv edge-popup", "conv biprop", "mlp edge-popup+iwr"])
def test_stored_masks_reproduce_their_recorded_figures_on_cuda(case, tmp_path):
    run = masklab.generate(runs_dir=tmp_path, masks=2, stack=2, keep_scores=True, **CASES[case])
    table = run.table.set_index("mask_id")
    for i in run.ids:
        assert run.evaluate(i, device="cuda") == (table.test_loss[i], table.test_acc[i])
        model = run.model(i, device="cuda")
        assert next(model.parameters()).device.type == "cuda"
    curve = interpolate(run, 1, 0, "hamming", points=3, eval_samples=None, device="cuda")
    assert (curve.loss.iloc[0], curve.acc.iloc[0]) == (table.test_loss[1], table.test_acc[1])
    assert (curve.loss.iloc[-1], curve.acc.iloc[-1]) == (table.test_loss[0], table.test_acc[0])


def test_a_cuda_training_step_never_waits_for_the_host():
    config = RunConfig(**{**CONV, "method": "biprop"})
    dataset = load_dataset("synthetic", input_shape=(3, 16, 16))
    device = torch.device("cuda")
    model, _, optimizer = build_training(config, dataset, [0, 1], device)
    batches = list(_batches(dataset, config, [0, 0], 0, 2, device))[:3]
    train_step(model, optimizer, *batches[0])  # (first step: lazy initialisation may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches[1:]:
            train_step(model, optimizer, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_torch_distance_backend_equals_the_numba_kernel_on_cuda():
    rng = np.random.default_rng(0)
    sizes = [1, 63, 64, 65, 129, 1, 70_000]
    bits = rng.random((130, sum(sizes))) < 0.3
    masks, other = MaskSet.from_bool(bits[:100], sizes), MaskSet.from_bool(bits[100:], sizes)
    for b in (None, other):
        for per_layer in (True, False):
            cuda = masklab.intersections(masks, b, per_layer=per_layer, backend="torch").counts
            cpu = masklab.intersections(masks, b, per_layer=per_layer, backend="numba").counts
            np.testing.assert_array_equal(np.asarray(cuda), np.asarray(cpu))


def test_a_bf16_run_trains_and_says_so(tmp_path):
    run = masklab.generate(runs_dir=tmp_path, masks=2, stack=2, precision="bf16", **{**CONV, "method": "biprop"})
    assert {run.record(i)["trained_with"]["precision"] for i in run.ids} == {"bf16"}
    assert all(np.isfinite(run.table.test_loss))
    dataset = load_dataset("synthetic", input_shape=(3, 16, 16))
    loss, _ = evaluate(run.model(0, device="cuda"), dataset, "cuda")
    assert np.isfinite(loss)
