"""HDBSCAN on a precomputed distance matrix, in numpy and plain Python.

HDBSCAN (Campello, Moulavi & Sander 2013, "Density-based clustering based on hierarchical density
estimates"), in McInnes & Healy's accelerated form (2017) as scikit-learn implements it
(``sklearn/cluster/_hdbscan``: ``hdbscan.py``, ``_reachability.pyx``, ``_linkage.pyx``, ``_tree.pyx``).
`hdbscan_labels` returns exactly the labels of
``sklearn.cluster.HDBSCAN(metric="precomputed", min_cluster_size=m, min_samples=s).fit_predict(matrix)``
for a dense matrix, with scikit-learn's other defaults (``cluster_selection_method="eom"``,
``allow_single_cluster=False``, ``cluster_selection_epsilon=0.0``, ``alpha=1.0``, ``max_cluster_size=None``).

It exists because ``masklab analyze`` must start fast: importing scikit-learn's HDBSCAN costs about 0.5 s
(``sklearn.cluster`` pulls in ``scipy.stats`` and more), far more than clustering a few thousand masks here.

The steps follow scikit-learn's step by step, in the same order, so that ties and floating-point sums come
out the same:

1. core distance of each point: the ``min_samples - 1``-th smallest entry (0-based) of its row, the zero
   distance to itself included (``np.partition``);
2. mutual reachability ``max(core_i, core_j, d_ij)``;
3. minimum spanning tree by the dense Prim's of ``_linkage.pyx`` (start at point 0, the first minimum wins);
4. edges sorted by ``np.argsort`` with numpy's default, unstable kind (the call scikit-learn makes: equal
   weights keep the order that very call gives them);
5. single-linkage tree by union-find; condensed tree (clusters under ``min_cluster_size`` points fall out as
   points, at lambda = 1 / distance, infinite for a zero distance); stabilities, summed row by row;
6. excess-of-mass selection (never the root) and labels: the selected clusters numbered by their condensed-tree
   id, every point outside them noise (-1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["hdbscan_labels"]

_INF = float("inf")
# scikit-learn's MST_edge_dtype
_MST_EDGE = np.dtype([("current_node", np.int64), ("next_node", np.int64), ("distance", np.float64)])


def hdbscan_labels(matrix: np.ndarray, min_cluster_size: int = 5, min_samples: int | None = None) -> np.ndarray:
    """HDBSCAN cluster labels of the points of a dense, symmetric distance matrix.

    Parameters
    ----------
    matrix : ndarray of shape (n, n)
        Pairwise distances (symmetric, zero diagonal, no NaN), n >= 2.
    min_cluster_size : int
        The fewest points a cluster may have (at least 2).
    min_samples : int, optional
        Neighbourhood size of the core distance, the point itself included (1..n). Default: `min_cluster_size`.

    Returns
    -------
    ndarray of int64, shape (n,)
        Labels 0..k-1 numbered as scikit-learn numbers them; -1 marks noise.

    Examples
    --------
    >>> points = np.array([0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2, 5.3, 20.0])
    >>> d = np.abs(points[:, None] - points[None, :])
    >>> hdbscan_labels(d, min_cluster_size=3).tolist()
    [0, 0, 0, 0, 1, 1, 1, 1, -1]
    """
    d = np.asarray(matrix, dtype=np.float64)
    samples = int(min_cluster_size) if min_samples is None else int(min_samples)
    _check(d, int(min_cluster_size), samples)
    edges = _prim_mst(d, _core_distances(d, samples))
    edges = edges[_sort_order(edges)]
    tree = _single_linkage(edges["current_node"], edges["next_node"], edges["distance"])
    condensed = _condense_tree(tree, int(min_cluster_size))
    selected = _select_eom(condensed, _stabilities(condensed))
    return _labels(condensed, selected, len(d))


def _check(d: np.ndarray, min_cluster_size: int, min_samples: int) -> None:
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"expected a square distance matrix, got shape {d.shape}")
    if d.shape[0] < 2:
        raise ValueError("HDBSCAN needs at least 2 points")
    if np.isnan(d).any():
        raise ValueError("the distance matrix has NaN entries")
    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size = {min_cluster_size}: it must be at least 2")
    if not 1 <= min_samples <= d.shape[0]:
        raise ValueError(f"min_samples = {min_samples}: it must be between 1 and the number of points")


def _core_distances(d: np.ndarray, min_samples: int) -> np.ndarray:
    """The ``min_samples - 1``-th smallest distance (0-based) in each row, the point's own 0 included."""
    k = min_samples - 1
    return np.ascontiguousarray(np.partition(d, k, axis=1)[:, k])


def _prim_mst(d: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Minimum spanning tree of the mutual reachability graph, edges in the order Prim's adds them
    (`mst_from_mutual_reachability`, one vector update per step), as a record array like scikit-learn's."""
    n = len(d)
    mst = np.empty(n - 1, dtype=_MST_EDGE)
    sources, targets, weights = mst["current_node"], mst["next_node"], mst["distance"]
    remaining = np.arange(n, dtype=np.int64)
    reach = np.full(n, np.inf)
    current = 0
    for i in range(n - 1):
        keep = remaining != current
        remaining = remaining[keep]
        row = np.maximum(np.maximum(d[current, remaining], core[remaining]), core[current])
        reach = np.minimum(reach[keep], row)
        best = int(np.argmin(reach))
        sources[i], targets[i], weights[i] = current, remaining[best], reach[best]
        current = int(remaining[best])
    return mst


def _sort_order(mst: np.ndarray) -> np.ndarray:
    """The order of the edges by weight that scikit-learn's `_process_mst` uses: ``np.argsort`` of the
    record array's distance field with numpy's default, unstable kind. Equal weights (common with integer or
    Hamming distances) must come out in that same order, or the tree and its labels can differ; a stable
    sort would not reproduce it."""
    return np.argsort(mst["distance"])


def _single_linkage(sources: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[list, list, list, list]:
    """Single-linkage tree (left, right, distance, size per merge; merge i makes node n + i) of the sorted
    edges, as `make_single_linkage` builds it."""
    n = len(sources) + 1
    parent = [-1] * (2 * n - 1)
    size = [1] * n + [0] * (n - 1)
    left, right, sizes = [], [], []
    for i, (a, b) in enumerate(zip(sources.tolist(), targets.tolist())):
        ra, rb = _find(parent, a), _find(parent, b)
        new = n + i
        parent[ra] = parent[rb] = new
        size[new] = size[ra] + size[rb]
        left.append(ra)
        right.append(rb)
        sizes.append(size[new])
    return left, right, weights.tolist(), sizes


def _find(parent: list[int], x: int) -> int:
    """Root of `x`, compressing the path."""
    root = x
    while parent[root] != -1:
        root = parent[root]
    while x != root:
        parent[x], x = root, parent[x]
    return root


def _bfs(left: list[int], right: list[int], n: int, root: int) -> list[int]:
    """Nodes of the subtree under `root`, breadth first, left child before right (`bfs_from_hierarchy`)."""
    out: list[int] = []
    queue = [root]
    while queue:
        out.extend(queue)
        queue = [child for node in queue if node >= n for child in (left[node - n], right[node - n])]
    return out


class _Condensed:
    """Rows (parent, child, lambda, size) of the condensed tree, in the order `_condense_tree` appends them."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.child: list[int] = []
        self.lam: list[float] = []
        self.size: list[int] = []

    def add(self, parent: int, child: int, lam: float, size: int) -> None:
        self.parent.append(parent)
        self.child.append(child)
        self.lam.append(lam)
        self.size.append(size)


def _condense_tree(tree: tuple[list, list, list, list], min_cluster_size: int) -> _Condensed:
    """Condensed tree: walking down from the root, a side with fewer than `min_cluster_size` points falls out
    as single points; two large sides become new clusters (numbered n + 1, n + 2, ... in order of birth)."""
    left, right, value, sizes = tree
    n = len(left) + 1
    root = 2 * (n - 1)
    out = _Condensed()
    relabel = [0] * (root + 1)
    relabel[root] = n
    next_label = n + 1
    ignore = [False] * (root + 1)

    def count(node: int) -> int:
        return sizes[node - n] if node >= n else 1

    def fall_out(parent: int, sub_root: int, lam: float) -> None:
        for sub in _bfs(left, right, n, sub_root):
            if sub < n:
                out.add(parent, sub, lam, 1)
            ignore[sub] = True

    for node in _bfs(left, right, n, root):
        if ignore[node] or node < n:
            continue
        i = node - n
        a, b, distance = left[i], right[i], value[i]
        lam = 1.0 / distance if distance > 0.0 else _INF
        count_a, count_b = count(a), count(b)
        if count_a >= min_cluster_size and count_b >= min_cluster_size:
            for side, side_count in ((a, count_a), (b, count_b)):
                relabel[side] = next_label
                next_label += 1
                out.add(relabel[node], relabel[side], lam, side_count)
        elif count_a < min_cluster_size and count_b < min_cluster_size:
            fall_out(relabel[node], a, lam)
            fall_out(relabel[node], b, lam)
        elif count_a < min_cluster_size:
            relabel[b] = relabel[node]
            fall_out(relabel[node], a, lam)
        else:
            relabel[a] = relabel[node]
            fall_out(relabel[node], b, lam)
    return out


def _stabilities(tree: _Condensed) -> dict[int, float]:
    """Stability of each cluster: the sum over its rows of (lambda - its birth lambda) * size, in row order
    (``inf - inf`` gives NaN, as in scikit-learn)."""
    root = min(tree.parent)
    births = dict(zip(tree.child, tree.lam))
    births[root] = 0.0
    result = [0.0] * (max(tree.parent) - root + 1)
    for parent, lam, size in zip(tree.parent, tree.lam, tree.size):
        result[parent - root] += (lam - births[parent]) * size
    return {root + i: s for i, s in enumerate(result)}


def _select_eom(tree: _Condensed, stability: dict[int, float]) -> list[int]:
    """Clusters chosen by excess of mass, the root excluded: bottom up, a cluster is kept when its own
    stability is at least the sum of its children's (whose selections it then overrides)."""
    children: dict[int, list[int]] = {}
    for parent, child, size in zip(tree.parent, tree.child, tree.size):
        if size > 1:
            children.setdefault(parent, []).append(child)
    nodes = sorted(stability, reverse=True)[:-1]
    is_cluster = dict.fromkeys(nodes, True)
    for node in nodes:
        below = children.get(node, [])
        subtree = sum((stability[c] for c in below), 0.0)
        if subtree > stability[node]:
            is_cluster[node] = False
            stability[node] = subtree
        else:
            stack = list(below)
            while stack:
                sub = stack.pop()
                is_cluster[sub] = False
                stack.extend(children.get(sub, []))
    return sorted(c for c, kept in is_cluster.items() if kept)


def _labels(tree: _Condensed, selected: list[int], n: int) -> np.ndarray:
    """Label of each point: that of the nearest selected cluster above it, -1 when there is none. (A parent's
    row always precedes its children's, so one pass down the rows propagates the labels.)"""
    label = {c: i for i, c in enumerate(selected)}
    node_label = {min(tree.parent): -1}
    out = np.full(n, -1, dtype=np.int64)
    for parent, child in zip(tree.parent, tree.child):
        lab = label.get(child, node_label[parent])
        if child < n:
            out[child] = lab
        else:
            node_label[child] = lab
    return out
