"""Fixtures shared by the whole suite: the digits data, tiny trained runs made once per session, and
read-only directories that hold for root too; the `slow` lists; and the suite's one rule about devices.

Devices: tests marked `cuda` need a CUDA GPU (skipped cleanly without one); every other test sees no GPU,
whatever the machine. The exactness tests (same bits whatever the stack, thread count, shard or resume; golden
bits) are claims about the CPU path, and `--device auto`, masklab's default, would move them to CUDA on a GPU
machine, where a mask's bits depend on cuDNN's and cuBLAS's algorithms: so outside `cuda` tests
`torch.cuda.is_available()` answers False, and subprocesses they start inherit CUDA_VISIBLE_DEVICES="". What
CUDA must do is tested by the `cuda` tests (tests/test_cuda.py), and every CUDA branch runs on CPU tensors
through `masklab.nn.device_path.emulate_device` (tests/nn/test_device_path.py).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import masklab
from masklab.data import load_dataset

# The tiny run most store and analysis tests need: 3 digits masks of the mlp at width 0.25, two epochs, with scores.
TINY_RUN = {"width": 0.25, "epochs": 2, "masks": 3, "keep_scores": True}

# A suite started in the background by a script (`cmd &`) inherits SIGINT ignored, and so would every process a
# test starts (exec keeps an ignored signal, and Python keeps it ignored): the tests that send Ctrl-C to a
# masklab process would go unheard. A handler here makes the children start with SIGINT at its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, digits) -> Iterator[Callable[..., masklab.Run]]:
    """`tiny_runs(**changes)`: the run of TINY_RUN with `changes`, trained once per session and shared by every
    test that asks for the same changes. Shared: read it, never write it (copy it first, e.g. with
    shutil.copytree, to change it)."""
    root = tmp_path_factory.mktemp("shared-runs")
    made: dict[tuple, masklab.Run] = {}

    def make(**changes) -> masklab.Run:
        key = tuple(sorted(changes.items()))
        if key not in made:
            # each in a runs directory of its own: a test may list the runs beside its run
            made[key] = masklab.generate(runs_dir=root / f"runs{len(made)}", data=digits, quiet=True,
                                         **{**TINY_RUN, **changes})
        return made[key]

    yield make
    # a test that analyzed a shared run made every later test of that worker see its analysis (the order of
    # tests differs between one process and pytest-xdist's workers): name the run it left written
    written = sorted(str(p.parent) for p in root.glob("runs*/*/analysis"))
    assert not written, f"a test wrote analysis/ into the shared runs {written}: copy a run before analyzing it"


@pytest.fixture(scope="session")
def tiny_run(tiny_runs) -> masklab.Run:
    """The run of TINY_RUN (shared: read it, never write it)."""
    return tiny_runs()


@pytest.fixture
def read_only(monkeypatch) -> Callable[[Path], None]:
    """`read_only(directory)` makes `directory` read-only for this process, root included: opening a file under
    it for writing, creating one or making a directory fails with EACCES, as chmod 0o555 does for anyone but root
    (root, with CAP_DAC_OVERRIDE, writes anyway, and CI runs as root). Undone when the test ends."""
    roots: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def where(path, dir_fd) -> str:
        path = os.fspath(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.abspath(path)

    def refuse(path, dir_fd) -> None:
        full = where(path, dir_fd)
        if any(full == root or full.startswith(root + os.sep) for root in roots):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def open_(path, flags, *args, dir_fd=None, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path, dir_fd)
        return real_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

    def mkdir_(path, *args, dir_fd=None, **kwargs):
        refuse(path, dir_fd)
        return real_mkdir(path, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir_)
    return lambda directory: roots.append(os.path.abspath(directory))


# `make test-fast` (pytest -m "not slow") leaves these out: the modules and tests that train for longest (each
# well over a second on 2 idle cores; together about three quarters of `make test`), besides the tests marked
# @pytest.mark.slow where they are defined. Paths are relative to tests/.
SLOW_MODULES = ("train/test_same_bits.py", "scale/test_shards.py", "store/test_crash.py", "test_golden_bits.py",
                "test_notebook.py", "test_report.py", "analysis/test_interpolation.py", "analysis/test_real_masks.py",
                "train/test_stacked.py", "test_gpu_check.py", "scale/test_slurm.py", "analysis/test_dask.py")
SLOW_TESTS = ("test_limits.py::test_the_estimate_covers_the_measured_peak",
              "analysis/test_tiles.py::test_many_small_tiles_and_a_memory_mapped_result",
              "analysis/test_cluster_structure.py::test_p_values_of_random_masks_are_roughly_uniform_and_never_below_the_floor",
              "scale/test_jobs.py::test_sigterm_ends_every_local_job",
              "scale/test_jobs.py::test_a_killed_local_task_is_one_line_and_a_rerun_resumes",
              "scale/test_jobs.py::test_ctrl_c_at_a_terminal_ends_every_local_job_in_one_line",
              "nn/test_models.py::test_resnet18_forward_and_nonaffine_bn",
              "test_sweep.py::test_sweep_on_digits_completes_and_resumes_without_training",
              "interop/test_import_hidden_networks.py::"
              "test_a_hidden_networks_fc_checkpoint_on_fashion_mnist_is_lenet_300_100")


def pytest_collection_modifyitems(config, items) -> None:
    tests = Path(__file__).parent
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here)") if not torch.cuda.is_available() else None
    for item in items:
        module = Path(item.path).relative_to(tests).as_posix()
        if module in SLOW_MODULES or f"{module}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if no_gpu is not None and "cuda" in item.keywords:
            item.add_marker(no_gpu)
    # The slurm tests first: they mostly wait on the cluster, and under pytest-xdist (`make test`, a file per
    # worker) their file then runs on one worker while the others take the rest, instead of waiting at the end.
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("slurm") is None)


@pytest.fixture(autouse=True)
def _no_gpu_unless_marked_cuda(request, monkeypatch) -> None:
    """Outside `cuda` tests, no GPU (see the module docstring)."""
    if request.node.get_closest_marker("cuda") is not None:
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
