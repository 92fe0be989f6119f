"""How a step computes, set on purpose and recorded per mask; runs that would mix devices refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import masklab
from masklab.cli import main
from masklab.config import RunConfig
from masklab.errors import UserError
from masklab.store.run import Run
from masklab.train import precision as P
from masklab.train import trainer as trainer_module
from masklab.train.trainer import resolve_device, train_mask

TINY = {"masks": 2, "epochs": 1, "width": 0.25, "device": "cpu"}
H100 = "NVIDIA H100 80GB HBM3"


def test_tests_outside_cuda_see_no_gpu():
    """(tests/conftest.py) Exactness tests run on the CPU whatever the machine, and so do their subprocesses."""
    assert not torch.cuda.is_available()
    assert resolve_device("auto").type == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_the_cpu_refuses_other_precisions_with_one_line(precision, tmp_path, capsys):
    with pytest.raises(UserError, match=f"--precision {precision} is for CUDA devices"):
        P.check_precision(precision, "cpu")
    P.check_precision(precision, torch.device("cuda"))  # (only checked, nothing runs)
    P.check_precision("fp32", "cpu")
    assert main(["generate", "--masks", "1", "--epochs", "1", "--device", "cpu", "--precision", precision,
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision" in err and "fp32" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_precision_is_validated_and_does_not_change_the_run_id():
    assert RunConfig(precision="tf32").run_id == RunConfig().run_id
    with pytest.raises(UserError, match="precision"):
        RunConfig(precision="fp16").validate()




def _flags() -> dict:
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_settings_are_set_on_purpose_and_restored(precision):
    before = _flags()
    torch.backends.cudnn.benchmark = True  # what a user may have set
    try:
        with P.cuda_settings(precision):
            inside = _flags()
        assert inside == {"tf32_matmul": precision == "tf32", "tf32_cudnn": precision == "tf32",
                          "cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic_algorithms": True}
        assert _flags() == {**before, "cudnn_benchmark": True}
    finally:
        torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
    assert P.autocast_dtype(precision) == (torch.bfloat16 if precision == "bf16" else None)


def test_step_settings_change_nothing_on_the_cpu():
    before = _flags()
    with P.step_settings("fp32", torch.device("cpu")):
        assert _flags() == before


def test_cuda_records_the_gpu_the_versions_and_the_flags_as_set(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: H100)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    with P.cuda_settings("tf32"):
        record = P.device_record(torch.device("cuda"), "tf32")
    assert record == {"device_kind": "cuda", "gpu": H100, "precision": "tf32", "torch": torch.__version__,
                      "cuda": "12.8", "cudnn": 91002, "tf32_matmul": True, "tf32_cudnn": True,
                      "cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic_algorithms": True,
                      "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    assert P.describe(record) == f"cuda ({H100}, tf32)"


def test_cublas_workspace_must_be_deterministic():
    P.check_cublas_workspace({})
    P.check_cublas_workspace({"CUBLAS_WORKSPACE_CONFIG": ":16:8"})
    with pytest.raises(UserError, match="CUBLAS_WORKSPACE_CONFIG"):
        P.check_cublas_workspace({"CUBLAS_WORKSPACE_CONFIG": ":0:0"})


def test_import_masklab_sets_the_cublas_workspace_unless_set():
    code = "import os, masklab; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ":4096:8"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "CUBLAS_WORKSPACE_CONFIG": ":16:8"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ":16:8"


def test_each_mask_records_its_device_kind_and_precision():
    result = train_mask(RunConfig(epochs=1, width=0.25, device="cpu"))
    assert {k: result.trained_with[k] for k in ("device_kind", "gpu", "precision", "torch", "device")} == \
        {"device_kind": "cpu", "gpu": None, "precision": "fp32", "torch": torch.__version__, "device": "cpu"}


def test_same_compute_rule():
    cpu = {"device_kind": "cpu", "gpu": None, "precision": "fp32"}
    h100 = {"device_kind": "cuda", "gpu": H100, "precision": "fp32"}
    stored = [{"mask_id": 3, "trained_with": h100}]
    P.check_same_compute(stored, h100, "r")
    for mine in (cpu, {**h100, "gpu": "NVIDIA A100-SXM4-80GB"}, {**h100, "precision": "tf32"}):
        with pytest.raises(UserError, match="--allow-device-change"):
            P.check_same_compute(stored, mine, "r")
        P.check_same_compute(stored, mine, "r", allow=True)
    # records written before the kind was recorded: their `device` gives the kind, the rest is unknown
    old = [{"mask_id": 0, "device": "cuda:1", "trained_with": {"stack": 1}}]
    P.check_same_compute(old, h100, "r")
    with pytest.raises(UserError, match="trained on cuda"):
        P.check_same_compute(old, cpu, "r")
    P.check_same_compute([{"mask_id": 0, "device": "cpu"}], cpu, "r")


@pytest.fixture
def cuda_run(tmp_path, monkeypatch):
    """A run whose stored masks say they trained on an H100 (the trainer's record patched), of 4 planned masks."""
    real = trainer_module.device_record

    def on_h100(device, precision):
        return {**real(device, precision), "device_kind": "cuda", "gpu": H100}

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "device_record", on_h100)
        run = masklab.generate(runs_dir=tmp_path, **TINY)
    assert {run.record(i)["trained_with"]["gpu"] for i in run.ids} == {H100}
    return run


def test_a_resume_on_another_device_kind_is_refused_in_one_line(cuda_run, capsys):
    runs_dir = str(cuda_run.path.parent)
    with pytest.raises(UserError, match=f"trained on cuda \\({H100}, fp32\\).*this process trains on cpu"):
        masklab.generate(runs_dir=runs_dir, resume=True, **{**TINY, "masks": 3})
    assert main(["generate", "--resume", str(cuda_run.path), "--masks", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-device-change" in err
    assert len(Run(cuda_run.path)) == 2  # nothing was trained
    # asked for explicitly: trained, and the new mask says where
    assert main(["generate", "--resume", str(cuda_run.path), "--masks", "3", "--device", "cpu",
                 "--allow-device-change", "--quiet"]) == 0
    run = Run(cuda_run.path)
    assert len(run) == 3 and run.record(2)["trained_with"]["device_kind"] == "cpu"
    record = json.loads((cuda_run.path / "masks" / "000000.json").read_text())
    assert record["trained_with"]["gpu"] == H100  # the others keep theirs


def test_a_shard_on_another_device_kind_is_refused(cuda_run):
    runs_dir = str(cuda_run.path.parent)
    with pytest.raises(UserError, match="--allow-device-change"):
        masklab.generate(runs_dir=runs_dir, shard=(0, 2), resume=True, **{**TINY, "masks": 4})
    run = masklab.generate(runs_dir=runs_dir, shard=(0, 2), resume=True, allow_device_change=True,
                           **{**TINY, "masks": 4})
    assert sorted(run.ids) == [0, 1, 2]
