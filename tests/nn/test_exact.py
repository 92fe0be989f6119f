"""masklab.nn.exact.per_mask_bmm: a stack's products spread over threads, each mask's product the one-thread
product it is alone (the same bits as torch.bmm on one thread)."""

from __future__ import annotations

import threading

import pytest
import torch

from masklab.nn import exact
from masklab.nn.exact import blas_one_thread, per_mask_bmm, set_threads


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    with blas_one_thread():
        set_threads(2)
        try:
            yield
        finally:
            set_threads(old)


def one_thread_bmm(a, b):
    """The reference: torch.bmm with torch and MKL on one thread, mask by mask (a stack of one each)."""
    old = torch.get_num_threads()
    with blas_one_thread():
        set_threads(1)
        try:
            return torch.cat([torch.bmm(a[k:k + 1], b[k:k + 1]) for k in range(a.shape[0])])
        finally:
            set_threads(old)


def workers_used(monkeypatch) -> list[str]:
    names: list[str] = []
    run = exact._bmm_one_thread

    def recorded(a, b, out):
        names.append(threading.current_thread().name)
        run(a, b, out)

    monkeypatch.setattr(exact, "_bmm_one_thread", recorded)
    return names


@pytest.mark.parametrize("K", [2, 3, 5, 8])
@pytest.mark.parametrize("shape", [(128, 784, 300), (300, 128, 784), (128, 100, 300), (10, 128, 100)])
def test_split_products_are_the_one_thread_products(K, shape, two_threads, monkeypatch):
    monkeypatch.setattr(exact, "SPLIT_MACS", 0)
    names = workers_used(monkeypatch)
    rows, inner, cols = shape
    gen = torch.Generator().manual_seed(K * 1000 + rows)
    x = torch.randn(rows, inner, generator=gen)
    a = x.expand(K, rows, inner)  # a shared input, as the first layer's
    b = torch.randn(K, cols, inner, generator=gen).transpose(1, 2)  # the weights, transposed as in the forward
    expected = one_thread_bmm(a, b)
    got = per_mask_bmm(a, b)
    assert names and all(name.startswith("masklab-bmm") for name in names)  # it did split
    assert torch.equal(got, expected)
    out = torch.full((K, rows, cols), float("nan"))
    assert per_mask_bmm(a, b, out=out) is out
    assert torch.equal(out, expected)


def test_no_split_on_one_thread_outside_blas_one_thread_or_under_autocast(monkeypatch):
    monkeypatch.setattr(exact, "SPLIT_MACS", 0)
    names = workers_used(monkeypatch)
    a, b = torch.randn(4, 8, 16), torch.randn(4, 16, 8)
    old = torch.get_num_threads()
    try:
        set_threads(2)
        per_mask_bmm(a, b)  # MKL free to thread: no guarantee to keep, so nothing is split
        with blas_one_thread():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert per_mask_bmm(a, b).dtype == torch.bfloat16  # autocast's cast, in this thread
            set_threads(1)
            per_mask_bmm(a, b)
    finally:
        set_threads(old)
    assert names == []


def test_small_products_stay_in_the_calling_thread(two_threads, monkeypatch):
    names = workers_used(monkeypatch)
    a, b = torch.randn(8, 128, 100), torch.randn(8, 100, 10)  # lenet-300-100's last layer: 1e6 MACs
    assert torch.equal(per_mask_bmm(a, b), one_thread_bmm(a, b))
    assert names == []


def test_a_forked_child_makes_its_own_threads(two_threads, monkeypatch):
    import multiprocessing

    monkeypatch.setattr(exact, "SPLIT_MACS", 0)
    per_mask_bmm(torch.randn(4, 32, 64), torch.randn(4, 64, 16))  # the pool exists before the fork
    assert "pool" in exact._state
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    # the child only looks: torch itself hangs in a child forked after its OpenMP threads ran
    child = context.Process(target=lambda: queue.put("pool" in exact._state))
    child.start()
    inherited = queue.get(timeout=60)
    child.join(timeout=60)
    assert inherited is False  # the inherited pool has no threads: a submit to it would never run


# ---- map_one_thread ---------------------------------------------------------------------------------------
def test_map_one_thread_shares_the_items_out_in_order_each_call_on_one_thread(two_threads):
    seen = []

    def square(v):
        seen.append((v, threading.current_thread().name, torch.get_num_threads()))
        return v * v

    assert exact.map_one_thread(square, list(range(7))) == [v * v for v in range(7)]
    by_item = {v: (name, threads) for v, name, threads in seen}
    assert {threads for _, threads in by_item.values()} == {1}  # torch on one thread inside every call
    callers = [name for name, _ in by_item.values()]
    assert callers.count(threading.current_thread().name) == 3  # the caller's block: items 0..2 of 7 on 2 threads
    assert sum(name.startswith("masklab-bmm") for name in callers) == 4
    assert torch.get_num_threads() == 2  # restored


def test_map_one_thread_is_the_loop_outside_blas_one_thread_and_on_one_thread():
    names = []
    exact.map_one_thread(lambda v: names.append(threading.current_thread().name), [1, 2, 3])
    assert set(names) == {threading.current_thread().name}


def test_map_one_thread_raises_the_error_of_a_call_and_restores_the_thread_count(two_threads):
    def fails_late(v):
        if v == 3:
            raise ValueError("item 3")
        return v

    with pytest.raises(ValueError, match="item 3"):
        exact.map_one_thread(fails_late, [0, 1, 2, 3])
    assert torch.get_num_threads() == 2


def test_map_one_thread_gives_the_one_thread_numbers(two_threads):
    """Products made side by side, one per thread: the bits of the same products made one after another on
    one thread."""
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(128, 784, generator=gen), torch.randn(784, 300, generator=gen)) for _ in range(4)]
    side_by_side = exact.map_one_thread(lambda p: p[0] @ p[1], pairs)
    alone = [one_thread_bmm(a[None], b[None])[0] for a, b in pairs]
    assert all(torch.equal(x, y) for x, y in zip(side_by_side, alone))
