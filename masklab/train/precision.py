"""How a step computes, set on purpose and recorded with every mask; which masks may share a run.

`--precision` chooses what a CUDA step computes in:

- "fp32" (the default): float32 throughout, TF32 off for matrix products and for cuDNN's convolutions
  (torch's own default leaves it on for convolutions). With the deterministic settings below, the same
  seeds give the same masks run after run on one GPU model and one software stack.
- "tf32": TF32 products and convolutions (10-bit mantissa inputs, float32 sums): faster on Ampere and
  later GPUs, masks no longer those of fp32 (each mask records it).
- "bf16": the forward pass under bfloat16 autocast (products and convolutions in bfloat16, losses and
  BatchNorm in float32); scores, their gradients and the optimiser stay float32.

Whatever the precision, a CUDA step runs with `torch.backends.cudnn.deterministic = True`,
`cudnn.benchmark = False` (no timing-driven choice of algorithm) and
`torch.use_deterministic_algorithms(True)`; deterministic cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` = ":4096:8"
or ":16:8", which `import masklab` sets unless the environment has a value. The settings hold while masks
train (`cuda_settings`) and are restored after.

The CPU path computes in float32 only, exactly (see `masklab.nn.exact`): there "tf32" and "bf16" are
refused rather than ignored.

Every mask records the device it trained on and how (`device_record`, in `trained_with`): its device kind
("cpu" or "cuda"), the GPU's name, the precision, the torch / CUDA / cuDNN versions and the flags as they
stood. A run's masks must agree on the kind, the GPU model and the precision, or a run would silently mix
masks whose bits come from different arithmetic: `check_same_compute` refuses a resume or a shard that
would, unless the user asks for it (`--allow-device-change`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from masklab.config import PRECISIONS
from masklab.errors import UserError
from masklab.nn.device_path import cpu_path

# The values of CUBLAS_WORKSPACE_CONFIG under which cuBLAS is deterministic (CUDA's documentation).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")
CUBLAS_DEFAULT = ":4096:8"
# What decides a mask's bits beyond its seeds: a run's masks must agree on these (see check_same_compute).
COMPUTE_FIELDS = ("device_kind", "gpu", "precision")


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a precision the device cannot give: the CPU computes in fp32 only."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and cpu_path(device):
        raise UserError(f"--precision {precision} is for CUDA devices, but this run trains on "
                        f"{torch.device(device).type}, which computes in fp32 only (exactly); drop --precision, "
                        "or use --device cuda")


def check_cublas_workspace(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a CUBLAS_WORKSPACE_CONFIG under which cuBLAS is not deterministic (torch would fail in the
    first product instead, with a longer message)."""
    value = environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value is not None and value not in CUBLAS_DETERMINISTIC:
        raise UserError(f"CUBLAS_WORKSPACE_CONFIG={value!r} makes cuBLAS non-deterministic; unset it (masklab then "
                        f"sets {CUBLAS_DEFAULT}) or set it to {' or '.join(CUBLAS_DETERMINISTIC)}")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype of the forward pass's autocast (None: no autocast)."""
    return torch.bfloat16 if precision == "bf16" else None


@contextmanager
def cuda_settings(precision: str) -> Iterator[None]:
    """Set what decides a CUDA step's numbers for the block (see the module docstring), and restore it."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    tf32 = precision == "tf32"
    matmul.allow_tf32 = tf32
    cudnn.allow_tf32 = tf32
    cudnn.deterministic = True
    cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = before[:4]
        torch.use_deterministic_algorithms(before[4], warn_only=before[5])


@contextmanager
def step_settings(precision: str, device: torch.device) -> Iterator[None]:
    """`cuda_settings` on CUDA (after checking CUBLAS_WORKSPACE_CONFIG); nothing on the CPU."""
    check_precision(precision, device)
    if device.type != "cuda":
        yield
        return
    check_cublas_workspace()
    with cuda_settings(precision):
        yield


@contextmanager
def evaluation_settings(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """On CUDA, `cuda_settings(precision)` for the block, so that a stored mask evaluated there (`Run.evaluate`,
    `Run.model`, `interpolate`) computes as its training did and reproduces its recorded figures (those were
    computed without autocast, so "bf16" evaluates in float32 like them); nothing elsewhere."""
    if torch.device(device).type != "cuda":
        yield
        return
    with cuda_settings(precision if precision in PRECISIONS else "fp32"):
        yield


def device_record(device: torch.device, precision: str) -> dict:
    """How masks train on `device` as the flags stand now (call it inside `step_settings`): for `trained_with`.

    Examples
    --------
    >>> record = device_record(torch.device("cpu"), "fp32")
    >>> record["device_kind"], record["precision"], record["gpu"]
    ('cpu', 'fp32', None)
    """
    record: dict = {"device_kind": device.type, "gpu": None, "precision": precision, "torch": torch.__version__}
    if device.type == "cuda":
        cudnn = torch.backends.cudnn
        record.update({
            "gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
            "cudnn": cudnn.version() if cudnn.is_available() else None,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(cudnn.allow_tf32),
            "cudnn_deterministic": bool(cudnn.deterministic), "cudnn_benchmark": bool(cudnn.benchmark),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        })
    return record


def mask_compute(record: Mapping) -> dict:
    """What a stored mask's record says of `COMPUTE_FIELDS` (records written before they were recorded: the
    device kind from the record's `device`, the rest unknown and left out)."""
    trained_with = record.get("trained_with") or {}
    if "device_kind" in trained_with:
        return {k: trained_with.get(k) for k in COMPUTE_FIELDS}
    device = record.get("device")
    return {"device_kind": str(device).split(":")[0]} if device else {}


def describe(compute: Mapping) -> str:
    """'cuda (NVIDIA H100 80GB HBM3, fp32)', 'cpu (fp32)': a compute for a message."""
    details = [str(compute[k]) for k in ("gpu", "precision") if compute.get(k)]
    return f"{compute.get('device_kind', '?')}" + (f" ({', '.join(details)})" if details else "")


def check_same_compute(records: Iterable[Mapping], mine: Mapping, run: str, allow: bool = False) -> None:
    """Refuse to add masks computed as `mine` (a `device_record`) to a run whose stored `records` were
    computed otherwise (another device kind, GPU model or precision): their bits would come from other
    arithmetic. `allow` (`--allow-device-change`) lets the run mix them; each mask records its own."""
    if allow:
        return
    for record in records:
        theirs = mask_compute(record)
        differ = [k for k in COMPUTE_FIELDS if k in theirs and theirs[k] != mine.get(k)]
        if differ:
            raise UserError(f"run {run} holds masks trained on {describe(theirs)} (mask {record.get('mask_id')}); "
                            f"this process trains on {describe(mine)}, so the run would mix masks whose bits "
                            "come from different arithmetic; train on the same kind of device and --precision, "
                            "or pass --allow-device-change to mix them (each mask records its own)")
