"""The device path (what CUDA runs) on CPU tensors, against the CPU path: the same selection (ties included),
the same convolutions, gains and BatchNorm up to rounding, the same first step; no host synchronisation in a
training step; none of the operations that have no deterministic CUDA kernel."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masklab.config import RunConfig
from masklab.data import load_dataset
from masklab.nn.device_path import cpu_path, emulate_device
from masklab.nn.exact import BatchNorm2d, biprop_alpha, masked_abs_sum
from masklab.nn.select import topk_mask, topk_rows_device
from masklab.nn.stacked import grouped_conv2d
from masklab.nn.straight_through import row_masks, topk_rows
from masklab.train.plan import StepPlan
from masklab.train.trainer import _batches, _inputs, _train_epoch, build_training, train_step

CONV = {"dataset": "synthetic", "input_shape": "3x8x8", "model": "conv2", "width": 0.125, "batch_size": 32}
MLP = {"dataset": "digits", "model": "mlp", "width": 0.5, "batch_size": 64}


def sorted_topk(row: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: the first k of a stable descending sort (ties: lower index first)."""
    mask = torch.zeros(row.numel(), dtype=torch.bool)
    mask[torch.sort(row, descending=True, stable=True).indices[:k]] = True
    return mask


def tied_rows(rows: int, n: int, seed: int) -> torch.Tensor:
    """Rows with every kind of tie: none, a few planted, values from a handful of levels, all equal, zeros."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, n, generator=g)
    values[1, : n // 3] = values[1, n // 2: n // 2 + n // 3]  # planted exact ties
    values[2] = torch.randint(0, 4, (n,), generator=g).float()  # four levels: ties at any threshold
    values[3] = 0.25  # all equal: the first k
    values[4, ::3] = 0.0  # many zeros (and -0.0 after abs)
    values[4, 1::7] = -0.0
    return values


@pytest.mark.parametrize("n", [7, 100, 4096, 20_000])
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.9, 0.999])
def test_device_selection_equals_the_cpu_path_and_the_definition(n, fraction):
    values = tied_rows(6, n, n).abs()
    k = max(1, min(n - 1, int(fraction * n)))
    device = topk_rows_device(values, k)
    assert device.dtype == torch.bool and device.shape == values.shape
    for r, row in enumerate(values):
        assert torch.equal(device[r], topk_mask(row, k)), r  # the numba radix path (n >= 4096) or torch's
        assert torch.equal(device[r], sorted_topk(row, k)), r
    assert (device.sum(1) == k).all()


def test_topk_rows_and_row_masks_take_the_device_path_under_emulation(monkeypatch):
    scores = tied_rows(6, 5000, 1)
    k = 1234
    cpu = row_masks(scores, k)
    calls = []
    real = topk_rows_device
    monkeypatch.setattr("masklab.nn.straight_through.topk_rows_device",
                        lambda values, k: calls.append(values.shape) or real(values, k))
    with emulate_device():
        assert not cpu_path(scores)
        device = row_masks(scores, k)
        assert torch.equal(topk_rows(scores, k, absolute=True), cpu)
    assert calls and torch.equal(device, cpu)
    assert cpu_path(scores)  # restored


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (2, 0, 1)])
def test_grouped_convolution_equals_one_convolution_per_mask(shared, stride, padding, kernel):
    g = torch.Generator().manual_seed(0)
    K, B, c_in, c_out = 3, 4, 5, 6
    w = torch.randn(K, c_out, c_in, kernel, kernel, generator=g)
    x = torch.randn(B, c_in if shared else K * c_in, 9, 9, generator=g)
    out = grouped_conv2d(x, w, stride, padding)
    parts = [x] * K if shared else list(x.split(c_in, 1))
    expected = torch.cat([F.conv2d(parts[k], w[k], None, stride, padding) for k in range(K)], 1)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_row_weights", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_device_biprop_gain_equals_the_cpu_path(per_row_weights, soft):
    g = torch.Generator().manual_seed(2)
    K, shape = 4, (16, 8, 3, 3)
    weight = torch.randn((K, *shape) if per_row_weights else shape, generator=g)
    mask = torch.rand(K, *shape, generator=g) if soft else (torch.rand(K, *shape, generator=g) < 0.3).float()
    count = None if soft else 300
    cpu_sum, cpu_alpha = masked_abs_sum(weight, mask), biprop_alpha(weight, mask, count)
    with emulate_device():
        device_sum, device_alpha = masked_abs_sum(weight, mask), biprop_alpha(weight, mask, count)
    torch.testing.assert_close(device_sum, cpu_sum, rtol=1e-12, atol=0)
    assert device_alpha.dtype == torch.float32 and device_alpha.device == mask.device
    torch.testing.assert_close(device_alpha, cpu_alpha, rtol=1e-6, atol=0)


def test_device_batchnorm_equals_the_cpu_path():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 12, 5, 5, generator=g, requires_grad=True)
    grad = torch.randn(16, 12, 5, 5, generator=g)
    outs = []
    for emulate in (False, True):
        bn = BatchNorm2d(12, affine=False)
        with emulate_device() if emulate else _nothing():
            out = bn(x)
            (dx,) = torch.autograd.grad(out, x, grad)
        outs.append((out.detach(), dx, bn.running_mean.clone(), bn.running_var.clone()))
    for cpu, device in zip(*outs):
        torch.testing.assert_close(device, cpu, rtol=1e-4, atol=1e-5)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", input_shape=(3, 8, 8))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _whole(batch):
    """A batch of all the stack's masks (their own batches side by side when data seeds differ)."""
    xs, y = batch
    return _inputs(xs, 0, y.shape[0]), y


def _steps(config, dataset, indices, steps, emulate):
    with emulate_device() if emulate else _nothing():
        model, layers, optimizer = build_training(config, dataset, indices, torch.device("cpu"))
        batches = _batches(dataset, config, [config.seeds(i)[2] for i in indices], 0, len(indices), "cpu")
        losses = [train_step(model, optimizer, *_whole(next(batches)))[0].detach() for _ in range(steps)]
        return losses, [layer.scores.detach().clone() for _, layer in layers], \
            [layer.masks().clone() for _, layer in layers]


@pytest.mark.parametrize("case", ["conv edge-popup", "conv biprop", "mlp edge-popup", "mlp biprop"])
def test_a_device_step_equals_the_cpu_step(case, synthetic, digits):
    """One step of two stacked masks on the device path (grouped convolution, torch's BatchNorm and SGD,
    the top-k threshold) gives the CPU path's losses and scores up to rounding, and the same masks."""
    kind, method = case.split()
    config = RunConfig(**(CONV if kind == "conv" else MLP), method=method)
    data = synthetic if kind == "conv" else digits
    cpu = _steps(config, data, [0, 1], 1, emulate=False)
    device = _steps(config, data, [0, 1], 1, emulate=True)
    torch.testing.assert_close(device[0][0], cpu[0][0], rtol=1e-5, atol=1e-6)
    for scores_device, scores_cpu in zip(device[1], cpu[1]):
        torch.testing.assert_close(scores_device, scores_cpu, rtol=1e-5, atol=1e-7)
    agree = np.mean([float((a == b).float().mean()) for a, b in zip(device[2], cpu[2])])
    assert agree > 0.999  # (a score within rounding of the threshold may flip; none did in these cases)


class Synced(AssertionError):
    pass


SYNCS = [(torch.Tensor, name) for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__",
                                           "__index__", "nonzero")] + [(torch, "nonzero")]


@pytest.fixture
def count_syncs(monkeypatch):
    """Every way Python code can make a CUDA step wait for the host, counted (and raised with `strict`)."""
    state = {"count": 0, "strict": False, "calls": []}

    def wrap(owner, name):
        real = getattr(owner, name)

        def synced(*args, **kwargs):
            state["count"] += 1
            state["calls"].append(name)
            if state["strict"]:
                raise Synced(f"{name} called inside a training step")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, synced)

    for owner, name in SYNCS:
        wrap(owner, name)
    return state


@pytest.mark.parametrize("case", ["conv edge-popup", "conv biprop", "mlp edge-popup", "mlp biprop",
                                  "conv biprop vary", "resnet18 edge-popup"])
def test_a_device_step_never_waits_for_the_host(case, synthetic, digits, count_syncs):
    kind, method, *vary = case.split()
    base = {"conv": CONV, "mlp": MLP, "resnet18": {**CONV, "model": "resnet18", "width": 0.0625}}[kind]
    config = RunConfig(**base, method=method, vary_data_seed=bool(vary))
    data = digits if kind == "mlp" else synthetic
    with emulate_device():
        model, _, optimizer = build_training(config, data, [0, 1], torch.device("cpu"))
        batches = list(itertools.islice(_batches(data, config, [config.seeds(i)[2] for i in (0, 1)], 0, 2, "cpu"), 3))
        count_syncs["strict"] = True
        for xs, y in batches:
            per_sample, logits = train_step(model, optimizer, _inputs(xs, 0, 2), y)
        count_syncs["strict"] = False
    assert count_syncs["count"] == 0, count_syncs["calls"]
    assert torch.isfinite(per_sample).all()


def test_an_epoch_copies_to_the_host_a_fixed_number_of_times(synthetic, count_syncs):
    """The losses and accuracies of an epoch reach the host once at its end, however many steps it has."""
    counts = []
    for batch_size in (256, 32):  # 4 steps, then 32
        config = RunConfig(**{**CONV, "batch_size": batch_size})
        with emulate_device():
            model, _, optimizer = build_training(config, synthetic, [0, 1], torch.device("cpu"))
            before = count_syncs["count"]
            result = _train_epoch(model, optimizer, None, synthetic, config, [0, 0], 0, 2, torch.device("cpu"),
                                  StepPlan(2))
        counts.append(count_syncs["count"] - before)
        assert len(result) == 2 and all(np.isfinite(loss) for loss, _ in result)
    assert counts[0] == counts[1] <= 4, counts


NO_DETERMINISTIC_CUDA_KERNEL = [  # torch.use_deterministic_algorithms raises on CUDA for these (its docstring)
    (F, "adaptive_avg_pool2d"), (F, "adaptive_avg_pool3d"), (F, "adaptive_max_pool2d"), (torch, "kthvalue"),
    (torch.Tensor, "kthvalue"), (torch, "median"), (torch.Tensor, "median"), (torch, "histc"), (torch, "bincount"),
    (torch.Tensor, "put_"), (F, "interpolate"), (F, "grid_sample"), (F, "ctc_loss"),
]


@pytest.mark.parametrize("case", ["conv2 edge-popup", "conv2 biprop", "resnet18 edge-popup", "resnet18 biprop"])
def test_the_device_path_uses_no_operation_without_a_deterministic_cuda_kernel(case, synthetic, monkeypatch):
    model_name, method = case.split()
    config = RunConfig(**{**CONV, "model": model_name, "width": 0.0625}, method=method)

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"{name} has no deterministic CUDA kernel")
        return call

    for owner, name in NO_DETERMINISTIC_CUDA_KERNEL:
        monkeypatch.setattr(owner, name, refuse(name))
    real_cumsum = torch.Tensor.cumsum

    def cumsum(self, *args, **kwargs):  # floating-point cumsum has none either
        dtype = kwargs.get("dtype") or (args[1] if len(args) > 1 else None) or self.dtype
        assert not dtype.is_floating_point, "floating-point cumsum has no deterministic CUDA kernel"
        return real_cumsum(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cumsum", cumsum)
    with emulate_device():
        model, layers, optimizer = build_training(config, synthetic, [0, 1], torch.device("cpu"))
        x, y = next(_batches(synthetic, config, [0, 0], 0, 2, "cpu"))
        for _ in range(2):
            train_step(model, optimizer, x, y)
        assert all(int(m.sum()) == layer.n_keep * 2 for m, (_, layer) in
                   zip([layer.masks() for _, layer in layers], layers))


@pytest.mark.parametrize("model_name", ["conv2", "mlp"])
def test_a_bf16_step_runs_on_the_device_path(model_name, synthetic, digits):
    """--precision bf16's autocast through the stacked layers' own autograd functions (CPU autocast stands in
    for CUDA's): finite losses, gradients on every score, exact mask counts."""
    config = RunConfig(**(CONV if model_name == "conv2" else MLP), method="biprop")
    data = synthetic if model_name == "conv2" else digits
    with emulate_device():
        model, layers, optimizer = build_training(config, data, [0, 1], torch.device("cpu"))
        before = [layer.scores.detach().clone() for _, layer in layers]
        x, y = next(_batches(data, config, [0, 0], 0, 2, "cpu"))
        per_sample, logits = train_step(model, optimizer, x, y, autocast=torch.bfloat16)
        assert logits.dtype == torch.bfloat16 and per_sample.dtype == torch.float32
        assert torch.isfinite(per_sample).all()
        for (_, layer), old in zip(layers, before):
            assert layer.scores.dtype == torch.float32 and not torch.equal(layer.scores, old)
            assert (layer.masks().flatten(1).sum(1) == layer.n_keep).all()


def test_stacked_layers_of_the_device_path_have_no_fused_state(synthetic):
    config = RunConfig(**CONV)
    with emulate_device():
        _, layers, optimizer = build_training(config, synthetic, [0, 1], torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD)
    assert not any(layer.fused for _, layer in layers)


@pytest.mark.parametrize("module", ["masklab.nn.device_path", "masklab.nn.select", "masklab.nn.stacked",
                                    "masklab.train.evaluate", "masklab.train.precision", "masklab.train.stacked",
                                    "masklab.scale.executors"])
def test_docstring_examples(module):
    import importlib

    failed, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failed == 0
