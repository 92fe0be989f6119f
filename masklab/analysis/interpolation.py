"""Interpolation between two masks of one run: loss and accuracy along a path, barriers, barrier matrices.

Two masks `a` and `b` of one run (per-layer bool masks `m_a`, `m_b` with equal per-layer counts) are joined
by a path of `points` points (30 by default, both ends included, `t = j / (points - 1)` for point j); at
every point the subnetwork is evaluated on a fixed evaluation set. Paths:

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

Evaluation: mean cross-entropy, accuracy and error (1 - accuracy) on the test split when it has at most
`eval_samples` samples (default 2000; None: always the whole split), else on a fixed subset of
`eval_samples` test samples (seed 0, the same for every pair and every `random_state`), in batches of 1000
as `masklab.train.evaluate` does, so that on the whole test split the ends reproduce each mask's recorded
test loss and accuracy exactly. Models with BatchNorm (resnet18) get their running statistics recomputed
at every point (reset, cumulative average over `bn_samples` = 1024 fixed, non-augmented training samples in
batches of the run's batch size, train mode, no gradient); models without BatchNorm are left alone.
With `recompute_bn=False` the model's statistics are used as they are, at every point: for a stored run
those stored with mask `a` if the run keeps them, else freshly initialised ones (mean 0, variance 1).

Barriers (`barrier`): loss barrier `max_t L(t) - ((1 - t) L(0) + t L(1))` and error barrier
`max_t E(t) - (E(0) + E(1)) / 2`. `barrier_matrix` samples distinct pairs and `barrier_correlation`
correlates their barriers with Hamming distance.

The model is built once per call and only its pinned masks (and, for own-weight runs, its weights) change
from point to point.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.errors import UserError

PATHS = ("soft", "hamming", "score")
ORDERS = ("random", "score")
DEFAULT_POINTS = 30
DEFAULT_EVAL_SAMPLES = 2000
DEFAULT_BN_SAMPLES = 1024
EVAL_SEED = 0  # the evaluation subset never depends on random_state: every pair is measured on the same samples
EVAL_BATCH = 1000  # as masklab.train.evaluate.evaluate, so that the ends reproduce the recorded figures exactly
SERIAL_EVAL_WORK = 1 << 28  # samples x masked weights of one evaluation below which it runs on one torch thread

CURVE_COLUMNS = ["mask_a", "mask_b", "path", "order", "point", "t", "hamming_to_a", "hamming_to_b", "loss", "acc",
                 "error"]


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


def _check_args(path: str, points: int, orders: int, order: str) -> None:
    if path not in PATHS:
        raise UserError(f"interpolation path {path!r} is unknown; choose one of {', '.join(PATHS)}")
    if order not in ORDERS:
        raise UserError(f"interpolation order {order!r} is unknown; choose one of {', '.join(ORDERS)}")
    if not isinstance(points, (int, np.integer)) or isinstance(points, bool) or points < 2:
        raise UserError(f"points = {points!r} is invalid: a path needs at least 2 points (its ends)")
    if not isinstance(orders, (int, np.integer)) or isinstance(orders, bool) or orders < 1:
        raise UserError(f"orders = {orders!r} is invalid: use an integer >= 1")
    if orders > 1 and (path != "hamming" or order != "random"):
        raise UserError(f"orders = {orders} needs path 'hamming' with order 'random' (the {path} path"
                        f"{' in score order' if path == 'hamming' else ''} is a single path); use orders=1")


def _check_pair(a: Subnet, b: Subnet, shapes: list[tuple[int, ...]]) -> None:
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
    _check_args(path, points, 1, order)
    if base_weights is None:
        base_weights = a.weights if a.weights is not None else b.weights
        if base_weights is None:
            base_weights = [torch.zeros(m.shape) for m in a.masks]  # unused: both ends share the weights
    _check_pair(a, b, [tuple(m.shape) for m in base_weights])
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
    d = sum(int((x != y).sum()) for x, y in zip(a.masks, b.masks))
    for j in range(points):
        t = j / (points - 1)
        masks, weights = [], []
        for k in range(len(fa)):
            m = (1.0 - t) * fa[k] + t * fb[k]
            masks.append(m)
            if differ[k]:
                p = (1.0 - t) * (wa[k] * fa[k]) + t * (wb[k] * fb[k])
                weights.append(torch.where((wa[k] == wb[k]) | (m == 0), wa[k], p / m))
            else:
                weights.append(None)
        yield PathPoint(j, t, masks, weights, t * d, (1.0 - t) * d)


def _distances(masks, a, b) -> tuple[int, int]:
    return (sum(int((m != x).sum()) for m, x in zip(masks, a.masks)),
            sum(int((m != y).sum()) for m, y in zip(masks, b.masks)))


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
        masks, weights = [], []
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
        masks, weights = [], []
        for k, ma in enumerate(a.masks):
            keep = _top_k((1.0 - t) * za[k] + t * zb[k], (1.0 - t) * ma_np[k] + t * mb_np[k], int(ma.sum()))
            m = torch.from_numpy(keep).view_as(ma).to(ma.device)
            masks.append(m)
            weights.append(switch.weights(k, j, points, m, ma, b.masks[k], wa[k], wb[k]) if differ[k] else None)
        to_a, to_b = _distances(masks, a, b)
        yield PathPoint(j, t, masks, weights, to_a, to_b)


# ---- evaluation sets ----------------------------------------------------------------------------------------
def evaluation_batches(dataset, eval_samples: int | None = DEFAULT_EVAL_SAMPLES, device="cpu",
                       seed: int = EVAL_SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed evaluation set: the whole test split when it has at most `eval_samples` samples (or when
    `eval_samples` is None), else `eval_samples` test samples picked by `seed` (kept in test-split order);
    normalised, in batches of 1000, on `device`."""
    if eval_samples is not None and (not isinstance(eval_samples, (int, np.integer)) or eval_samples < 1):
        raise UserError(f"eval_samples = {eval_samples!r} is invalid: use an integer >= 1 or None (the whole "
                        "test split)")
    if eval_samples is None or eval_samples >= dataset.n_test:
        return list(dataset.test_batches(EVAL_BATCH, device=device))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.sort(torch.randperm(dataset.n_test, generator=gen)[:int(eval_samples)]).values
    return [(dataset.normalize(dataset.x_test[idx[s:s + EVAL_BATCH]], device),
             dataset.y_test[idx[s:s + EVAL_BATCH]].to(device)) for s in range(0, len(idx), EVAL_BATCH)]


def batchnorm_batches(dataset, bn_samples: int = DEFAULT_BN_SAMPLES, batch_size: int = 128, device="cpu",
                      seed: int = EVAL_SEED) -> list[torch.Tensor]:
    """`bn_samples` fixed training samples (not augmented), in batches of `batch_size`, for recomputing
    BatchNorm statistics."""
    if not isinstance(bn_samples, (int, np.integer)) or bn_samples < 1:
        raise UserError(f"bn_samples = {bn_samples!r} is invalid: use an integer >= 1")
    x, _ = dataset.eval_subset(int(bn_samples), seed, device)
    return [x[s:s + batch_size] for s in range(0, len(x), batch_size)]


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor]) -> bool:
    """Reset every BatchNorm's running statistics and recompute them as the cumulative average over
    `batches` (train mode, no gradient). Returns False (and does nothing) for a model without BatchNorm."""
    bns = batchnorm_modules(model)
    if not bns:
        return False
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return True


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with torch limited to `threads` intra-op threads (None: as it is), then restore."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(previous)


# ---- the core: one model, many paths ------------------------------------------------------------------------
class PathEvaluator:
    """Evaluates paths between masks on one model (built once): at each point it re-pins the layers' masks
    (and sets the weights of layers whose ends differ), recomputes BatchNorm statistics when `bn_batches`
    is given and the model has BatchNorm, and evaluates on `eval_batches`.

    The model must have the run's layers (e.g. `masklab.train.make_model(config, dataset)`); its masked
    layers' weights are the shared weights of ends that carry none. Its state (weights, pins, BatchNorm
    statistics) is restored after every path.
    """

    def __init__(self, model: nn.Module, eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 bn_batches: Sequence[torch.Tensor] | None = None):
        from masklab.nn.layers import masked_layers

        self.model = model
        self.layers = [layer for _, layer in masked_layers(model)]
        if not self.layers:
            raise UserError("the model has no masked layers to interpolate")
        self.eval_batches = list(eval_batches)
        self.bn_batches = list(bn_batches) if bn_batches is not None and batchnorm_modules(model) else None
        self.device = self.layers[0].weight.device
        # one evaluation of a small model is a few milliseconds: torch's second thread then costs more than it
        # gives (on a busy 2-core machine 2-6x slower than one thread), so small work runs on one thread
        samples = sum(len(y) for _, y in self.eval_batches) + sum(len(x) for x in self.bn_batches or [])
        work = samples * sum(layer.weight.numel() for layer in self.layers)
        self.threads = 1 if self.device.type == "cpu" and work < SERIAL_EVAL_WORK else None

    def evaluate(self) -> tuple[float, float]:
        from masklab.train.evaluate import evaluate_batches

        if self.bn_batches is not None:
            recompute_batchnorm(self.model, self.bn_batches)
        return evaluate_batches(self.model, self.eval_batches)

    @torch.no_grad()
    def curve(self, a: Subnet, b: Subnet, path: str = "soft", points: int = DEFAULT_POINTS, orders: int = 1,
              order: str = "random", random_state: int = 0, ids: tuple = (None, None),
              progress: bool = False) -> pd.DataFrame:
        """Loss and accuracy along the path(s) from `a` to `b`: one row per point (and order), columns
        `CURVE_COLUMNS`. `progress`: a progress line (tqdm, on stderr) counting the points evaluated."""
        from tqdm.auto import tqdm

        _check_args(path, points, orders, order)
        a, b = a.to(self.device), b.to(self.device)
        base = [layer.weight.detach().clone() for layer in self.layers]
        _check_pair(a, b, [tuple(w.shape) for w in base])
        pins = [layer.pinned for layer in self.layers]
        buffers = {name: buf.clone() for name, buf in self.model.named_buffers()}
        n_bits = sum(m.numel() for m in a.masks)
        rows = []
        bar = tqdm(total=orders * points, disable=not progress, unit="point", leave=False,
                   desc=f"{path} path {ids[0]}-{ids[1]}" if ids[0] is not None else f"{path} path")
        limit = torch_threads(self.threads)
        limit.__enter__()
        try:
            for k in range(orders):
                self._set_weights(a.weights if a.weights is not None else base)
                for p in path_points(a, b, path, points, order=order, order_index=k, random_state=random_state,
                                     base_weights=base):
                    for layer, mask, weight in zip(self.layers, p.masks, p.weights):
                        if weight is not None:
                            layer.weight.copy_(weight)
                        layer.pin(mask)
                    loss, acc = self.evaluate()
                    rows.append({"mask_a": ids[0], "mask_b": ids[1], "path": path, "order": k, "point": p.point,
                                 "t": p.t, "hamming_to_a": p.to_a / n_bits, "hamming_to_b": p.to_b / n_bits,
                                 "loss": loss, "acc": acc, "error": 1.0 - acc})
                    bar.update(1)
        finally:
            bar.close()
            limit.__exit__(None, None, None)
            self._set_weights(base)
            for layer, pin in zip(self.layers, pins):
                layer.pin(pin)
            for name, buf in self.model.named_buffers():
                buf.copy_(buffers[name])
        return pd.DataFrame(rows, columns=CURVE_COLUMNS)

    def _set_weights(self, weights: list[torch.Tensor]) -> None:
        for layer, w in zip(self.layers, weights):
            if layer.weight.data_ptr() != w.data_ptr() and not torch.equal(layer.weight, w):
                layer.weight.copy_(w)
                layer.invalidate()


# ---- sources of masks: a stored run, or masks trained in memory ---------------------------------------------
class MaskSource:
    """The masks of one run as the interpolation needs them: `config`, `ids`, `dataset()`, `model(device)`
    (the run's model, shared weights in its layers) and `subnet(i)`."""

    config = None
    ids: list[int] = []

    def dataset(self):
        raise NotImplementedError

    def model(self, device="cpu") -> nn.Module:
        raise NotImplementedError

    def subnet(self, i: int) -> Subnet:
        raise NotImplementedError

    def own_weights(self) -> bool:
        """Whether each mask has its own weights (recycling or dense), so they travel with the masks."""
        return self.config.recycle != "none" or self.config.method == "dense"


class RunSource(MaskSource):
    """A stored run (`masklab.open_run`)."""

    def __init__(self, run):
        self.run = run
        self.config = run.config
        self.ids = list(run.ids)

    def dataset(self):
        return self.run.dataset()

    def model(self, device="cpu", i: int | None = None) -> nn.Module:
        return self.run.model(self.ids[0] if i is None else i, device)

    def own_weights(self) -> bool:
        """Recycling, dense, or an import of files with different weights (`Run.per_mask_weights`)."""
        return self.run.per_mask_weights

    def subnet(self, i: int) -> Subnet:
        from masklab.nn.layers import masked_layers

        run = self.run
        weights = [layer.weight.detach().clone() for _, layer in masked_layers(run.model(i))] \
            if self.own_weights() else None
        scores = run.scores(i) if run.has_extra(i, "scores") else None
        return Subnet.of(run.mask_layers(i), weights, scores)


class TrainedSource(MaskSource):
    """Masks trained in memory with `masklab.train.train_mask` (a list of `TrainedMask`)."""

    def __init__(self, config, trained: Sequence, dataset=None):
        self.config = config
        self.trained = {int(t.index): t for t in trained}
        self.ids = list(self.trained)
        self._dataset = dataset

    def dataset(self):
        if self._dataset is None:
            from masklab.data import load_config_dataset

            self._dataset = load_config_dataset(self.config)
        return self._dataset

    def _get(self, i: int):
        if i not in self.trained:
            raise UserError(f"no trained mask {i}; the masks are {sorted(self.trained)}")
        return self.trained[i]

    def model(self, device="cpu", i: int | None = None) -> nn.Module:
        from masklab.train.trainer import make_model

        t = self._get(self.ids[0] if i is None else i)
        return make_model(self.config, self.dataset(), t.score_seed).to(device).eval()

    def subnet(self, i: int) -> Subnet:
        from masklab.train.recycling import rebuild_weights

        t, cfg = self._get(i), self.config
        weights = None
        if t.weights is not None:
            weights = t.weights
        elif t.src is not None or t.draw is not None:
            weights = [rebuild_weights(tuple(shape), k, t.weight_seed, cfg.resolved("weight_init"),
                                       cfg.resolved("scale_fan"), cfg.keep,
                                       src=None if t.src is None else torch.from_numpy(np.asarray(t.src[k])),
                                       draw=None if t.draw is None else torch.from_numpy(np.asarray(t.draw[k])))
                       for k, shape in enumerate(t.layer_shapes)]
        return Subnet.of(t.masks, weights, t.scores)


def from_trained(config, trained: Sequence, dataset=None) -> TrainedSource:
    """Wrap masks trained with `train_mask(config, i, dataset=...)` so that `interpolate` and
    `barrier_matrix` take them like a run (mask ids = the training indices)."""
    return TrainedSource(config, trained, dataset)


def as_source(run) -> MaskSource:
    """A MaskSource for a stored Run (or a path / run id), or a MaskSource itself."""
    if isinstance(run, MaskSource):
        return run
    from masklab.store.run import Run, open_run

    if isinstance(run, Run):
        return RunSource(run)
    if isinstance(run, str) or hasattr(run, "__fspath__"):
        return RunSource(open_run(run))
    raise UserError(f"expected a run (masklab.open_run) or masks from `from_trained`, got {type(run).__name__}")


def _evaluator(source: MaskSource, model_id: int, eval_samples, bn_samples: int, recompute_bn: bool,
               device) -> PathEvaluator:
    from masklab.train.trainer import resolve_device

    device = resolve_device(str(device))
    dataset = source.dataset()
    model = source.model(device, model_id)
    bn = None
    if recompute_bn and batchnorm_modules(model):
        bn = batchnorm_batches(dataset, bn_samples, int(source.config.batch_size), device)
    return PathEvaluator(model, evaluation_batches(dataset, eval_samples, device), bn)


# ---- public API -----------------------------------------------------------------------------------------------
def interpolate(run, a: int, b: int, path: str = "soft", *, points: int = DEFAULT_POINTS, orders: int = 1,
                order: str = "random", eval_samples: int | None = DEFAULT_EVAL_SAMPLES,
                bn_samples: int = DEFAULT_BN_SAMPLES, recompute_bn: bool = True, random_state: int = 0,
                device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Loss, accuracy and error along the `path` ("soft", "hamming" or "score") from mask `a` to mask `b` of
    `run` (a Run, a run path, or `from_trained(...)`): one row per point (and per order for
    `path="hamming", orders=k`), columns mask_a, mask_b, path, order, point, t, hamming_to_a and
    hamming_to_b (normalised by the number of bits), loss, acc, error. See the module docstring for the
    exact paths, the evaluation set and the BatchNorm handling. `progress`: a progress line (on stderr)
    counting the points evaluated."""
    _check_args(path, points, orders, order)
    source = as_source(run)
    sa, sb = source.subnet(int(a)), source.subnet(int(b))
    evaluator = _evaluator(source, int(a), eval_samples, bn_samples, recompute_bn, device)
    return evaluator.curve(sa, sb, path, points, orders, order, random_state, ids=(int(a), int(b)),
                           progress=progress)


def _barrier_one(curve: pd.DataFrame) -> dict:
    c = curve.sort_values(["t", "point"] if "point" in curve.columns else ["t"], kind="stable")
    t = c["t"].to_numpy(dtype=float)
    loss = c["loss"].to_numpy(dtype=float)
    error = c["error"].to_numpy(dtype=float) if "error" in c.columns else 1.0 - c["acc"].to_numpy(dtype=float)
    t0, t1 = t[0], t[-1]
    s = (t - t0) / (t1 - t0) if t1 > t0 else np.zeros_like(t)
    excess = loss - ((1.0 - s) * loss[0] + s * loss[-1])
    i, e = int(np.argmax(excess)), int(np.argmax(error))
    return {"loss_barrier": float(excess[i]), "error_barrier": float(error[e] - 0.5 * (error[0] + error[-1])),
            "t_loss_barrier": float(t[i]), "t_error_barrier": float(t[e]),
            "loss_a": float(loss[0]), "loss_b": float(loss[-1]), "error_a": float(error[0]),
            "error_b": float(error[-1]), "max_loss": float(loss.max()), "max_error": float(error.max())}


def barrier(curve: pd.DataFrame) -> pd.Series | pd.DataFrame:
    """Barriers of an interpolation curve: `loss_barrier = max_t L(t) - ((1 - t) L(0) + t L(1))` and
    `error_barrier = max_t E(t) - (E(0) + E(1)) / 2` (t rescaled to [0, 1] between the first and last
    point), with where they peak and the end values. A Series for a single curve; a DataFrame with one row
    per (mask_a, mask_b, path, order) when `curve` holds several."""
    if len(curve) == 0:
        raise UserError("the curve is empty: nothing to compute a barrier from")
    keys = [k for k in ("mask_a", "mask_b", "path", "order") if k in curve.columns]
    groups = list(curve.groupby(keys, sort=False, dropna=False)) if keys else [((), curve)]
    if len(groups) == 1:
        return pd.Series(_barrier_one(curve))
    rows = [{**dict(zip(keys, key if isinstance(key, tuple) else (key,))), **_barrier_one(g)} for key, g in groups]
    return pd.DataFrame(rows)


def sample_pairs(ids: Sequence[int], pairs: int | None, random_state: int = 0) -> list[tuple[int, int]]:
    """`pairs` distinct unordered pairs (a < b) of `ids`, sampled without replacement by `random_state`
    (all pairs, in order, when `pairs` is None or at least their number)."""
    ids = sorted(int(i) for i in ids)
    n = len(ids)
    total = n * (n - 1) // 2
    if total == 0:
        raise UserError(f"a barrier matrix needs at least 2 masks; the run has {n}")
    if pairs is not None and (not isinstance(pairs, (int, np.integer)) or isinstance(pairs, bool) or pairs < 1):
        raise UserError(f"pairs = {pairs!r} is invalid: use an integer >= 1 (or None for all pairs)")
    if pairs is None or pairs >= total:
        return list(itertools.combinations(ids, 2))
    chosen = np.sort(np.random.default_rng(int(random_state)).choice(total, size=int(pairs), replace=False))
    # unrank: pair c is (i, j) with i the row whose block of n - 1 - i pairs holds c
    starts = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])
    rows = np.searchsorted(starts, chosen, side="right") - 1
    cols = rows + 1 + (chosen - starts[rows])
    return [(ids[i], ids[j]) for i, j in zip(rows.tolist(), cols.tolist())]


def barrier_matrix(run, pairs: int | None = 10, path: str = "soft", *, points: int = DEFAULT_POINTS,
                   orders: int = 1, order: str = "random", eval_samples: int | None = DEFAULT_EVAL_SAMPLES,
                   bn_samples: int = DEFAULT_BN_SAMPLES, recompute_bn: bool = True, random_state: int = 0,
                   device: str = "cpu", progress: bool = False,
                   return_curves: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Barriers of `pairs` distinct mask pairs (sampled by `random_state`; None: all pairs) along `path`:
    a long DataFrame with one row per pair (and order): mask_a, mask_b, path, order, hamming (bits),
    hamming_norm, loss_barrier, error_barrier and the end values. With `return_curves`, also the
    concatenated curves. The model and the evaluation set are built once."""
    _check_args(path, points, orders, order)
    source = as_source(run)
    chosen = sample_pairs(source.ids, pairs, random_state)
    evaluator = _evaluator(source, chosen[0][0], eval_samples, bn_samples, recompute_bn, device)
    cache: dict[int, Subnet] = {}  # the few most recently used ends (pairs come sorted, so `a` repeats)

    def get(i: int) -> Subnet:
        subnet = cache.pop(i) if i in cache else source.subnet(i)
        cache[i] = subnet
        if len(cache) > 4:
            cache.pop(next(iter(cache)))
        return subnet

    from tqdm.auto import tqdm

    rows, curves = [], []
    with torch_threads(evaluator.threads):
        for i, j in tqdm(chosen, disable=not progress, desc=f"{path} barriers", unit="pair"):
            sa, sb = get(i), get(j)
            d = sum(int((x != y).sum()) for x, y in zip(sa.masks, sb.masks))
            n_bits = sum(m.numel() for m in sa.masks)
            curve = evaluator.curve(sa, sb, path, points, orders, order, random_state, ids=(i, j))
            for k, g in curve.groupby("order", sort=True):
                rows.append({"mask_a": i, "mask_b": j, "path": path, "order": int(k), "hamming": d,
                             "hamming_norm": d / n_bits, **_barrier_one(g)})
            if return_curves:
                curves.append(curve)
    out = pd.DataFrame(rows)
    if return_curves:
        return out, pd.concat(curves, ignore_index=True)
    return out


def barrier_correlation(df: pd.DataFrame, against: str = "hamming_norm", *,
                        min_pairs: int = MIN_CORRELATION_PAIRS) -> pd.DataFrame:
    """Pearson and Spearman correlation of each barrier (loss_barrier, error_barrier) with Hamming distance
    over the rows of a `barrier_matrix` (per path when it holds several): columns path, barrier, against,
    n, pearson_r, pearson_p, spearman_rho, spearman_p. NaN (with the n) where fewer than `min_pairs` rows
    (default 10, `masklab.analysis.thresholds`: from 3 pairs every ordering gives rho = +-1) or a constant
    column."""
    if against not in df.columns:
        raise UserError(f"the barrier table has no column {against!r}; pass one of {', '.join(df.columns)}")
    groups = df.groupby("path", sort=False) if "path" in df.columns else [(None, df)]
    rows = []
    for path, g in groups:
        x = g[against].to_numpy(dtype=float)
        for name in ("loss_barrier", "error_barrier"):
            if name not in g.columns:
                continue
            y = g[name].to_numpy(dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            row = {"path": path, "barrier": name, "against": against, "n": int(ok.sum()), "pearson_r": np.nan,
                   "pearson_p": np.nan, "spearman_rho": np.nan, "spearman_p": np.nan}
            if ok.sum() >= max(3, int(min_pairs)) and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                from scipy import stats

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r, p = stats.pearsonr(x[ok], y[ok])
                    rho, sp = stats.spearmanr(x[ok], y[ok])
                row.update(pearson_r=float(r), pearson_p=float(p), spearman_rho=float(rho), spearman_p=float(sp))
            rows.append(row)
    return pd.DataFrame(rows, columns=["path", "barrier", "against", "n", "pearson_r", "pearson_p", "spearman_rho",
                                       "spearman_p"])


__all__ = ["CURVE_COLUMNS", "PATHS", "MaskSource", "PathEvaluator", "PathPoint", "RunSource", "Subnet",
           "TrainedSource", "as_source", "barrier", "barrier_correlation", "barrier_matrix", "batchnorm_batches",
           "evaluation_batches", "from_trained", "interpolate", "path_points", "recompute_batchnorm",
           "sample_pairs"]
