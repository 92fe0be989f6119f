"""Path geometry: the points of a path between two masks of one run, as per-layer masks and weights.

Two masks `a` and `b` of one run (per-layer bool masks `m_a`, `m_b` with equal per-layer counts) are joined
by a path of `points` points (30 by default, both ends included, `t = j / (points - 1)` for point j).
Paths:

- **soft**: the real-valued mask `m(t) = (1 - t) m_a + t m_b`; an Edge-Popup layer computes with
  `W * m(t)`, i.e. the exact linear interpolation of the two subnetworks' effective weights (weight-space
  linear mode connectivity). A Biprop layer computes with `sign(W) * alpha(t) * m(t)` where the gain is
  recomputed at every point, `alpha(t) = sum(|W| m(t)) / sum(m(t))` (`MaskedLayer.pin`), which at the ends
  is each mask's own gain. Its Hamming distances to the ends are the L1 distances of `m(t)`:
  `t * d(a, b)` and `(1 - t) * d(a, b)`.
- **hamming**: a path of binary masks that keeps every layer's kept count. In each layer the bits of
  `a \\ b` are removed and those of `b \\ a` added in pairs (the two sets have the same size `n_l` since
  the counts are equal); point j has done `s = round(j * n_l / (points - 1))` swaps in every layer (halves
  round up), so the ends are exactly `a` and `b` and the distance to `a` never decreases, to `b` never
  increases, and their sum is `d(a, b)` at every point. The swap order:
  `order="random"`: both sets in a seeded random order, `orders=k` gives k independent paths (order
  0..k-1, generator `numpy.random.default_rng([random_state, order])`); `order="score"` (needs stored
  scores, one path): the bits of `a \\ b` leave weakest first (ascending `|s_a|`: the bits `a` itself
  values least go first) and the bits of `b \\ a` enter strongest first (descending `|s_b|`), ties by
  position. The reversed path (from b to a) is the same path read backwards.
- **score**: per layer, standardise each end's score magnitudes, `z = (|s| - mean |s|) / std |s|` (the
  mask is the top-k of `|s|`, so magnitudes are what is standardised; interpolating signed scores would
  drop bits both masks keep whenever their signs disagree), and keep the `n_keep` largest of
  `(1 - t) z_a + t z_b`. Ties at the threshold go to the bits of the nearer end (`(1 - t) m_a + t m_b`
  larger), then to the lower position, so the ends are exactly `a` and `b` even from float16 scores.
  Needs stored scores (`--keep-scores`). The distances to both ends are reported (they need not add up
  to `d(a, b)`: the path may keep bits neither end keeps).

Weights of runs whose masks have their own weights (IWR, IteRand, dense): every bit carries the weight of
the end it comes from. On binary paths (hamming, score) a kept bit of `a \\ b` uses `W_a`, a kept bit of
`b \\ a` uses `W_b`; a kept bit at a position where the two ends' weights differ and that is kept by both
ends (or, on the score path, by neither) switches from `W_a` to `W_b` along the path: in each layer the
positions where `W_a != W_b` are put in a seeded random order and point j has switched the first
`round(j * c_l / (points - 1))` of them. On the soft path the masked weights are interpolated:
`P(t) = (1 - t) W_a m_a + t W_b m_b` with `m(t)` as above; an Edge-Popup layer computes with `P(t)`
(`= (1 - t) W_a m_a + t W_b m_b` exactly as a formula) and a Biprop layer with `sign(P(t)) * alpha(t) * m(t)`,
`alpha(t) = sum |P(t)| / sum m(t)`; with shared weights both reduce to the definitions above. (In the layer:
weight `P(t) / m(t)` where `m(t) > 0` and the weights differ, pinned mask `m(t)`.)

Nothing here evaluates anything: `masklab.analysis.paths.evaluation` runs a model along these points.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from masklab.analysis.thresholds import MAX_ORDERS, MAX_POINTS
from masklab.errors import UserError

PATHS = ("soft", "hamming", "score")
ORDERS = ("random", "score")
DEFAULT_POINTS = 30


# ---- endpoints ----------------------------------------------------------------------------------------------
@dataclass
class Subnet:
    """One end of a path: per-layer bool masks (layer shapes), optionally the mask's own per-layer weights
    (IWR / IteRand / dense; None: the model's shared weights) and its scores (for the score path and the
    score order)."""

    masks: list[torch.Tensor]
    weights: list[torch.Tensor] | None = None
    scores: list[torch.Tensor] | None = None

    @classmethod
    def of(cls, masks: Sequence, weights: Sequence | None = None, scores: Sequence | None = None) -> Subnet:
        """From numpy arrays or tensors (copied to CPU tensors: bool masks, float32 weights and scores)."""
        def tensors(xs, dtype):
            if xs is None:
                return None
            return [(x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).to(dtype).clone()
                    for x in xs]

        return cls(tensors(masks, torch.bool), tensors(weights, torch.float32), tensors(scores, torch.float32))

    def to(self, device) -> Subnet:
        def move(xs):
            return None if xs is None else [x.to(device) for x in xs]

        return Subnet(move(self.masks), move(self.weights), move(self.scores))


@dataclass
class PathPoint:
    """One point of a path: per-layer masks (bool, or float on the soft path), per-layer weights (None for a
    layer whose weights do not change along the path: the ends share them), and the Hamming distances
    (in bits; L1 on the soft path) to both ends."""

    point: int
    t: float
    masks: list[torch.Tensor]
    weights: list[torch.Tensor | None]
    to_a: float
    to_b: float


def check_args(path: str, points: int, orders: int, order: str) -> None:
    """UserError for an unknown path or order, fewer than 2 points, or several orders of a single path."""
    if path not in PATHS:
        raise UserError(f"interpolation path {path!r} is unknown; choose one of {', '.join(PATHS)}")
    if order not in ORDERS:
        raise UserError(f"interpolation order {order!r} is unknown; choose one of {', '.join(ORDERS)}")
    if not isinstance(points, (int, np.integer)) or isinstance(points, bool) or points < 2:
        raise UserError(f"points = {points!r} is invalid: a path needs at least 2 points (its ends)")
    if points > MAX_POINTS:
        raise UserError(f"points = {points:,} is more than the limit of {MAX_POINTS:,} (each point evaluates the "
                        "network on the test split); use fewer points")
    if not isinstance(orders, (int, np.integer)) or isinstance(orders, bool) or orders < 1:
        raise UserError(f"orders = {orders!r} is invalid: use an integer >= 1")
    if orders > MAX_ORDERS:
        raise UserError(f"orders = {orders:,} is more than the limit of {MAX_ORDERS:,} (each order is a path of "
                        "its own); use fewer orders")
    if orders > 1 and (path != "hamming" or order != "random"):
        raise UserError(f"orders = {orders} needs path 'hamming' with order 'random' (the {path} path"
                        f"{' in score order' if path == 'hamming' else ''} is a single path); use orders=1")


def check_pair(a: Subnet, b: Subnet, shapes: list[tuple[int, ...]]) -> None:
    """UserError unless both ends have the model's layer shapes and equal per-layer kept counts."""
    for name, s in (("a", a), ("b", b)):
        if len(s.masks) != len(shapes) or any(tuple(m.shape) != sh for m, sh in zip(s.masks, shapes)):
            raise UserError(f"mask {name} has layers {[tuple(m.shape) for m in s.masks]} but the model has {shapes}")
    for k, (ma, mb) in enumerate(zip(a.masks, b.masks)):
        if int(ma.sum()) != int(mb.sum()):
            raise UserError(f"the two masks keep {int(ma.sum())} and {int(mb.sum())} weights in layer {k}; "
                            "interpolation needs masks of one run (equal per-layer counts)")


def _need_scores(a: Subnet, b: Subnet, what: str) -> None:
    if a.scores is None or b.scores is None:
        raise UserError(f"the {what} needs both masks' scores, which this run does not keep; generate the run "
                        "with --keep-scores (keep_scores = true)")


def _round_share(j: int, n: int, points: int) -> int:
    """round(j * n / (points - 1)) with halves rounded up, in exact integer arithmetic."""
    return (2 * j * n + (points - 1)) // (2 * (points - 1))


def _ends_weights(a: Subnet, b: Subnet, base: list[torch.Tensor]) -> tuple[list, list, list[bool]]:
    wa = a.weights if a.weights is not None else base
    wb = b.weights if b.weights is not None else base
    differ = [not torch.equal(x, y) for x, y in zip(wa, wb)]
    return wa, wb, differ


class _Switcher:
    """The seeded order in which positions whose weights differ between the ends switch from W_a to W_b."""

    def __init__(self, wa, wb, differ, rng: np.random.Generator):
        self.order = [rng.permutation(torch.nonzero((x != y).reshape(-1)).reshape(-1).cpu().numpy()) if d else None
                      for x, y, d in zip(wa, wb, differ)]

    def weights(self, k: int, j: int, points: int, mask, ma, mb, wa, wb) -> torch.Tensor:
        """Layer k's weights at point j for the binary mask `mask`: a-only bits W_a, b-only bits W_b, the rest
        W_b where switched."""
        order = self.order[k]
        assert order is not None, "weights() is only asked for layers whose ends' weights differ"
        switched = torch.zeros(ma.numel(), dtype=torch.bool, device=ma.device)
        c = _round_share(j, len(order), points)
        if c:
            switched[torch.from_numpy(order[:c]).to(ma.device)] = True
        switched = switched.view_as(ma)
        use_b = (mb & ~ma) | (switched & ~(ma & ~mb))
        return torch.where(use_b, wb, wa)


def path_points(a: Subnet, b: Subnet, path: str = "soft", points: int = DEFAULT_POINTS, *, order: str = "random",
                order_index: int = 0, random_state: int = 0,
                base_weights: list[torch.Tensor] | None = None) -> Iterator[PathPoint]:
    """The points of one path from `a` to `b` (see the module docstring). `base_weights`: the shared weights
    of ends that carry none (needed only when exactly one end has its own weights)."""
    check_args(path, points, 1, order)
    if base_weights is None:
        base_weights = a.weights if a.weights is not None else b.weights
        if base_weights is None:
            base_weights = [torch.zeros(m.shape) for m in a.masks]  # unused: both ends share the weights
    check_pair(a, b, [tuple(m.shape) for m in base_weights])
    wa, wb, differ = _ends_weights(a, b, base_weights)
    if path == "soft":
        yield from _soft(a, b, wa, wb, differ, points)
    elif path == "hamming":
        yield from _hamming(a, b, wa, wb, differ, points, order, order_index, random_state)
    else:
        yield from _score(a, b, wa, wb, differ, points, random_state)


def _soft(a, b, wa, wb, differ, points) -> Iterator[PathPoint]:
    fa = [m.float() for m in a.masks]
    fb = [m.float() for m in b.masks]
    d = distance(a.masks, b.masks)
    for j in range(points):
        t = j / (points - 1)
        masks: list[torch.Tensor] = []
        weights: list[torch.Tensor | None] = []
        for k in range(len(fa)):
            m = (1.0 - t) * fa[k] + t * fb[k]
            masks.append(m)
            if differ[k]:
                p = (1.0 - t) * (wa[k] * fa[k]) + t * (wb[k] * fb[k])
                weights.append(torch.where((wa[k] == wb[k]) | (m == 0), wa[k], p / m))
            else:
                weights.append(None)
        yield PathPoint(j, t, masks, weights, t * d, (1.0 - t) * d)


def distance(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> int:
    """Hamming distance (bits) between two per-layer masks."""
    return sum(int((x != y).sum()) for x, y in zip(a, b))


def _distances(masks, a, b) -> tuple[int, int]:
    return distance(masks, a.masks), distance(masks, b.masks)


def _hamming(a, b, wa, wb, differ, points, order, order_index, random_state) -> Iterator[PathPoint]:
    if order == "score":
        _need_scores(a, b, "score order")
    rng = np.random.default_rng([int(random_state), int(order_index)])
    outs, ins = [], []
    for k, (ma, mb) in enumerate(zip(a.masks, b.masks)):
        out = torch.nonzero((ma & ~mb).reshape(-1)).reshape(-1).cpu()
        inn = torch.nonzero((mb & ~ma).reshape(-1)).reshape(-1).cpu()
        if order == "random":
            out = out[torch.from_numpy(rng.permutation(len(out)))]
            inn = inn[torch.from_numpy(rng.permutation(len(inn)))]
        else:
            sa = a.scores[k].reshape(-1).abs().cpu()[out]
            sb = b.scores[k].reshape(-1).abs().cpu()[inn]
            out = out[torch.argsort(sa, stable=True)]
            inn = inn[torch.argsort(-sb, stable=True)]
        outs.append(out.to(ma.device))
        ins.append(inn.to(ma.device))
    switch = _Switcher(wa, wb, differ, rng)
    for j in range(points):
        masks: list[torch.Tensor] = []
        weights: list[torch.Tensor | None] = []
        for k, ma in enumerate(a.masks):
            s = _round_share(j, len(outs[k]), points)
            m = ma.clone().reshape(-1)
            m[outs[k][:s]] = False
            m[ins[k][:s]] = True
            m = m.view_as(ma)
            masks.append(m)
            weights.append(switch.weights(k, j, points, m, ma, b.masks[k], wa[k], wb[k]) if differ[k] else None)
        to_a, to_b = _distances(masks, a, b)
        yield PathPoint(j, j / (points - 1), masks, weights, to_a, to_b)


def _standardised(scores: torch.Tensor) -> np.ndarray:
    x = np.abs(scores.detach().cpu().numpy().astype(np.float64).reshape(-1))
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def _top_k(key: np.ndarray, tiebreak: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k largest `key`; ties at the threshold by larger `tiebreak`, then lower position."""
    n = key.size
    if k >= n:
        return np.ones(n, dtype=bool)
    if k <= 0:
        return np.zeros(n, dtype=bool)
    threshold = np.partition(key, n - k)[n - k]
    keep = key > threshold
    need = k - int(keep.sum())
    ties = np.flatnonzero(key == threshold)
    keep[ties[np.argsort(-tiebreak[ties], kind="stable")[:need]]] = True
    return keep


def _score(a, b, wa, wb, differ, points, random_state) -> Iterator[PathPoint]:
    _need_scores(a, b, "score path")
    za = [_standardised(s) for s in a.scores]
    zb = [_standardised(s) for s in b.scores]
    ma_np = [m.reshape(-1).cpu().numpy().astype(np.float64) for m in a.masks]
    mb_np = [m.reshape(-1).cpu().numpy().astype(np.float64) for m in b.masks]
    switch = _Switcher(wa, wb, differ, np.random.default_rng([int(random_state), 0]))
    for j in range(points):
        t = j / (points - 1)
        masks: list[torch.Tensor] = []
        weights: list[torch.Tensor | None] = []
        for k, ma in enumerate(a.masks):
            keep = _top_k((1.0 - t) * za[k] + t * zb[k], (1.0 - t) * ma_np[k] + t * mb_np[k], int(ma.sum()))
            m = torch.from_numpy(keep).view_as(ma).to(ma.device)
            masks.append(m)
            weights.append(switch.weights(k, j, points, m, ma, b.masks[k], wa[k], wb[k]) if differ[k] else None)
        to_a, to_b = _distances(masks, a, b)
        yield PathPoint(j, t, masks, weights, to_a, to_b)


__all__ = ["DEFAULT_POINTS", "ORDERS", "PATHS", "PathPoint", "Subnet", "check_args", "check_pair", "distance",
           "path_points"]
