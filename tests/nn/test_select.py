import pytest
import torch

from masklab.keep import n_keep
from masklab.nn.select import topk_mask


@pytest.mark.parametrize("shape", [(1,), (7,), (10, 3), (64, 3, 3, 3), (300, 784), (5, 5, 1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.95, 0.99])
def test_exact_count_and_top_values(shape, sparsity):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=g).abs()
    n = values.numel()
    k = n_keep(n, sparsity)
    mask = topk_mask(values, k)
    assert mask.shape == values.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == k
    if 0 < k < n:  # everything kept is >= everything dropped
        assert values[mask].min() >= values[~mask].max()


def test_ties_broken_by_lower_index_and_exact():
    values = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 3.0])
    mask = topk_mask(values, 3)  # 3.0 plus the first two of the four 2.0s
    assert mask.tolist() == [False, True, True, False, False, False, True]
    assert topk_mask(torch.zeros(10), 4).tolist() == [True] * 4 + [False] * 6


def test_edge_counts():
    v = torch.rand(5, 5)
    assert topk_mask(v, 25).all() and not topk_mask(v, 0).any()


def test_n_keep_matches_reference_rounding():
    # counts worked out by hand: the removed count int(sparsity * n) truncates the float product
    assert n_keep(1728, 0.95) == 87  # 0.95 * 1728 = 1641.6 -> 1641 removed
    assert n_keep(2560, 0.5) == 1280
    assert n_keep(10, 0.0) == 10
    assert n_keep(1, 0.99) == 1  # 0.99 -> 0 removed: a one-weight layer keeps its weight
    assert n_keep(7, 0.9) == 1  # 6.3 -> 6 removed
    # the float product falls just below the integer: 0.29 * 100 = 28.999999999999996 -> 28 removed, not 29
    assert n_keep(100, 0.29) == 72
    assert n_keep(100, 0.57) == 44  # 56.99999999999999 -> 56 removed
    assert n_keep(300 * 784, 0.99) == 2352  # 232848 removed


def sorted_topk(values: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: the first k of a stable sort by value, descending (ties: lower index first)."""
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[order] = True
    return mask


@pytest.mark.parametrize("n", [4096, 5000, 70_001, 300_000])
@pytest.mark.parametrize("sparsity", [0.01, 0.5, 0.9, 0.999])
def test_radix_select_equals_the_device_path_and_the_definition(n, sparsity):
    from masklab.nn.select import topk_rows_device

    g = torch.Generator().manual_seed(n)
    scores = torch.randn(n, generator=g) * 0.01
    scores[: n // 10] = scores[n // 5: n // 5 + n // 10]  # plant many exact ties (and sign flips)
    scores[n // 3: n // 3 + 50] *= -1
    k = n_keep(n, sparsity)
    fast = topk_mask(scores, k, absolute=True)
    assert int(fast.sum()) == k
    assert torch.equal(fast, topk_rows_device(scores.abs()[None], k)[0])
    assert torch.equal(fast, sorted_topk(scores.abs(), k))
    signed = topk_mask(scores, k)  # signed ranking too
    assert torch.equal(signed, topk_rows_device(scores[None], k)[0])
    assert torch.equal(signed, sorted_topk(scores, k))


def test_radix_select_all_equal_values_keeps_first_k():
    values = torch.full((10_000,), 0.25)
    assert topk_mask(values, 123, absolute=True).nonzero().reshape(-1).tolist() == list(range(123))


def _expected_rows(scores, weight, k, biprop):
    rows = []
    for r in range(scores.shape[0]):
        mask = topk_mask(scores[r], k, absolute=True)
        w = weight if weight.dim() == scores.dim() - 1 else weight[r]
        rows.append(mask.float() if biprop else w * mask)
    return torch.stack(rows)


@pytest.mark.parametrize("n,ties", [(1000, False), (50_000, False), (3000, True), (70_000, True)])
@pytest.mark.parametrize("biprop", [False, True])
@pytest.mark.parametrize("per_row_weights", [False, True])
def test_select_rows_is_exact_topk_as_scores_move(n, ties, biprop, per_row_weights):
    """The bracket kept between calls only changes the speed: every call gives exactly topk_mask's
    selection, through small steps (bracket hits), jumps (misses) and heavy ties (crowded brackets)."""
    from masklab.nn.select import SelectState, select_rows

    g = torch.Generator().manual_seed(n)
    K, k = 3, n // 3
    scores = torch.randint(-20, 20, (K, n), generator=g).float() if ties else torch.randn(K, n, generator=g)
    weight = torch.randn((K, n) if per_row_weights else (n,), generator=g)
    state, out = SelectState(K, n), torch.empty(K, n)
    for step in range(25):
        select_rows(scores, weight, k, biprop, out, state)
        assert torch.equal(out, _expected_rows(scores, weight, k, biprop)), step
        if ties:
            scores = scores + (torch.rand(K, n, generator=g) < 0.01).float()
        else:
            scores = scores + (0.5 if step % 7 == 6 else 1e-3) * torch.randn(K, n, generator=g)
    assert (state.rows[:, 0] >= 0).all()


def test_select_rows_counts_per_layer_at_every_sparsity():
    from masklab.nn.select import select_rows

    g = torch.Generator().manual_seed(0)
    scores, weight = torch.randn(2, 5000, generator=g), torch.randn(5000, generator=g).abs() + 0.1
    out = torch.empty(2, 5000)
    for sparsity in (0.0, 0.5, 0.9, 0.99, 0.9998):
        k = n_keep(5000, sparsity)
        select_rows(scores, weight, k, False, out)
        assert (out != 0).sum(1).tolist() == [k, k]
