"""Weight clustering: one-dimensional k-means on weight rows, numpy only; decides, edits nothing.

Each row (an output channel, or a whole weight for per-layer clusters) gets ``clusters`` shared
values. Centroids start as TFMOT's four initialisations describe them, then Lloyd's iterations
move each centroid to the (importance-weighted) mean of its members:

- ``linear``: evenly spaced between the row's smallest and largest weight;
- ``random``: uniform between them (seeded);
- ``density``: at evenly spaced quantiles, so that dense regions of the distribution get more;
- ``kmeans++``: the first at a random weight, each next one at a weight drawn with probability
  proportional to its squared distance to the nearest centroid chosen so far (seeded).

With ``keep_zeros`` the zeros of a pruned row stay exactly zero and are one of the row's values:
the others share ``clusters - 1`` centroids, so no row has more than ``clusters`` distinct values.

:func:`cluster_scaled` gives every row the same codebook times its own scale: the rows' values
divided by their largest magnitude are clustered together, and the codebook's two ends are made
opposite (``-M`` and ``M``), so each row's largest weight is exactly its scale times ``M``.
Per-channel int8 then stores the same few integers in every row (see
:func:`edgeopt.quantization.structure.proportional_scales`), which is what a byte-wise compressor
such as gzip can use; independent rows each get different integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CLUSTER_INITS

#: Lloyd's iterations at most (1-D k-means on a few hundred values converges in far fewer).
ITERATIONS = 50


@dataclass(frozen=True)
class Clusters:
    """Rows (R x D) as ``centroids`` (R x K) and each weight's ``assignment`` (R x D indices).
    With zeros kept, index 0 of every row is the centroid fixed at 0 (``fixed_zero``)."""

    centroids: np.ndarray
    assignment: np.ndarray
    fixed_zero: bool
    #: entropy-constrained: ``rate * bits`` each index adds to a weight's error (K), see :mod:`.rate`
    penalty: np.ndarray | None = None

    def values(self) -> np.ndarray:
        return np.take_along_axis(self.centroids, self.assignment, axis=1)


def cluster_scaled(rows: np.ndarray, clusters: int, init: str = "kmeans++", importance: np.ndarray | None = None,
                   keep_zeros: bool = True, seed: int = 0, bits: float | None = None,
                   at_rate: float | None = None) -> tuple[Clusters, np.ndarray, np.ndarray]:
    """Rows (R x D) as one codebook (K) times a scale per row (R): the :class:`Clusters`, the
    codebook and the scales. With ``bits`` the indices' entropy is held to that many bits per
    weight (:func:`.rate.for_entropy`; the codebook's ends and zero stay where they are); with
    ``at_rate`` the entropy-constrained clustering runs at that rate (one :func:`.rate.allocate`
    found for the whole model)."""
    start = _scaled_start(rows, clusters, init, importance, keep_zeros, seed)
    codebook, assignment, penalty = start.codebook, start.assignment, None
    if (bits is not None or at_rate is not None) and start.end > 0:
        codebook, assignment, penalty = _rate_constrained(start, bits, at_rate)
    found = Clusters(start.scales[:, None] * codebook[None], assignment, start.fixed_zero, penalty)
    if start.end == 0:
        return found, codebook, start.scales
    return found, codebook / start.end, start.scales * start.end


@dataclass(frozen=True)
class _ScaledStart:
    """The plain k-means of a scaled codebook: rows over their largest magnitude, each one's
    weight in the error (importance times its row's scale squared), codebook and assignment."""

    normalized: np.ndarray
    weigh: np.ndarray
    codebook: np.ndarray
    assignment: np.ndarray
    scales: np.ndarray
    end: float
    fixed_zero: bool


def _scaled_start(rows, clusters, init, importance, keep_zeros, seed) -> _ScaledStart:
    rows = np.asarray(rows, dtype=np.float64)
    scales = np.abs(rows).max(axis=1)
    safe = np.where(scales > 0, scales, 1.0)
    weigh = np.ones(rows.shape) if importance is None else np.broadcast_to(importance, rows.shape)
    weigh = weigh * (safe ** 2)[:, None]  # a normalized weight's move costs its row's scale squared
    normalized = rows / safe[:, None]
    shared = cluster_rows(normalized.reshape(1, -1), clusters, init, weigh.reshape(1, -1), keep_zeros, seed)
    codebook = shared.centroids[0].copy()
    free = codebook[1:] if shared.fixed_zero else codebook
    assignment = shared.assignment.reshape(rows.shape)
    end = float(np.abs(free).max()) if free.size else 0.0
    if free.size > 1 and end > 0:
        # opposite ends, so that every row's largest weight is its scale times one magnitude; then
        # every weight to its nearest entry again (a tail the moved end no longer serves goes to
        # the entry next to it instead of being pushed out to the end)
        free[free.argmin()], free[free.argmax()] = -end, end
        nearest = _nearest(normalized.reshape(1, -1), free[None]).reshape(rows.shape)
        assignment = np.where(rows == 0, 0, nearest + 1) if shared.fixed_zero else nearest
    return _ScaledStart(normalized, weigh, codebook, assignment, scales, end, shared.fixed_zero)


def _kept_entries(codebook: np.ndarray, fixed_zero: bool):
    """The entries a rate may not move (the two ends, the kept zero) and the bounds the others stay
    within: an entry beyond an end would become its rows' scale."""
    fixed = np.zeros(codebook.size, dtype=bool)
    fixed[[codebook.argmin(), codebook.argmax()]] = True
    fixed[0] |= fixed_zero
    return fixed, (float(codebook.min()), float(codebook.max()))


def _rate_constrained(start: _ScaledStart, bits: float | None, at_rate: float | None):
    """The scaled codebook's assignment at an index entropy of at most ``bits`` (or at the rate
    ``at_rate``); the two ends (and the kept zero) stay put and each row's largest weight stays on
    its end, so every row keeps its scale."""
    from . import rate

    normalized = start.normalized
    fixed, bounds = _kept_entries(start.codebook, start.fixed_zero)
    if at_rate is None:
        coded = rate.for_entropy(normalized, start.weigh, start.codebook, bits, fixed, bounds)
    else:
        coded = rate.constrained(normalized.ravel(), start.weigh.ravel(), start.codebook, at_rate, fixed, bounds)
    assignment = coded.assignment.reshape(normalized.shape)
    largest = np.abs(normalized).argmax(axis=1)
    rows = np.arange(normalized.shape[0])
    top = normalized[rows, largest]
    ends = np.where(top > 0, coded.codebook.argmax(), coded.codebook.argmin())
    assignment[rows, largest] = np.where(top == 0, assignment[rows, largest], ends)
    if start.fixed_zero:
        assignment = np.where(normalized == 0, 0, assignment)
    return coded.codebook, assignment, coded.penalty()


def adopt_scaled(rows: np.ndarray, clusters: int, keep_zeros: bool = True):
    """Rows already on one scaled codebook of at most ``clusters`` entries (a one-shot
    ``edgeopt.cluster`` result) as :func:`cluster_scaled` returns them, with their own values and
    assignment; None when they are not (more values, or ends that are not opposite)."""
    from .rate import _labels

    rows = np.asarray(rows, dtype=np.float64)
    scales = np.abs(rows).max(axis=1)
    normalized = rows / np.where(scales > 0, scales, 1.0)[:, None]
    labels = _labels(normalized).reshape(rows.shape)
    count = int(labels.max()) + 1 if labels.size else 0
    if not 1 < count <= clusters:
        return None
    codebook = np.bincount(labels.ravel(), normalized.ravel(), count) / np.bincount(labels.ravel(), minlength=count)
    if not np.isclose(codebook.min(), -codebook.max(), rtol=1e-5):
        return None  # the trained codebook keeps its ends opposite: these rows' would move
    fixed_zero = bool(keep_zeros and np.any(rows == 0))
    order = np.argsort(codebook, kind="stable")
    if fixed_zero:  # the kept zero is entry 0 (see Clusters)
        zero = int(labels[rows == 0][0])
        codebook[zero] = 0.0
        order = np.concatenate([[zero], order[order != zero]])
    codebook = codebook[order]
    assignment = np.argsort(order)[labels]
    return Clusters(scales[:, None] * codebook[None], assignment, fixed_zero), codebook, scales


def scaled_rate_part(rows: np.ndarray, clusters: int, init: str = "kmeans++", importance: np.ndarray | None = None,
                     keep_zeros: bool = True, seed: int = 0):
    """The :class:`.rate.Part` of rows clustered on a scaled codebook, for a model-wide rate
    search (None: all zero, nothing to constrain)."""
    from . import rate

    start = _scaled_start(rows, clusters, init, importance, keep_zeros, seed)
    if start.end == 0:
        return None
    fixed, bounds = _kept_entries(start.codebook, start.fixed_zero)
    return rate.Part(start.normalized.ravel(), start.weigh.ravel(), start.codebook, fixed, bounds)


def cluster_rows(rows: np.ndarray, clusters: int, init: str = "kmeans++", importance: np.ndarray | None = None,
                 keep_zeros: bool = True, seed: int = 0) -> Clusters:
    """k-means of each row of ``rows`` (R x D) into at most ``clusters`` values; ``importance``
    (D, or R x D, non-negative) weighs each weight in the centroid means (a layer's input second
    moments: the output error a weight's move costs)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D, got shape {rows.shape}")
    if init not in CLUSTER_INITS:
        raise ValueError(f"init must be one of {CLUSTER_INITS}, got {init!r}")
    weights = np.ones(rows.shape) if importance is None else np.broadcast_to(importance, rows.shape).astype(np.float64)
    zeros = (rows == 0) if keep_zeros else np.zeros(rows.shape, dtype=bool)
    fixed_zero = bool(zeros.any())
    free = clusters - 1 if fixed_zero else clusters
    rng = np.random.default_rng(seed)
    centroids = np.stack([_initial(row[~zero], free, init, rng) for row, zero in zip(rows, zeros)])
    weights = np.where(zeros, 0.0, np.maximum(weights, 1e-30))
    for _ in range(ITERATIONS):
        assignment = _nearest(rows, centroids)
        updated = weighted_means(rows, weights, assignment, centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    centroids = np.sort(centroids, axis=1)
    assignment = _nearest(rows, centroids)
    if fixed_zero:
        centroids = np.concatenate([np.zeros((rows.shape[0], 1)), centroids], axis=1)
        assignment = np.where(zeros, 0, assignment + 1)
    return Clusters(centroids, assignment, fixed_zero)


def _initial(values: np.ndarray, count: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """``count`` starting centroids for one row's (free) values, sorted."""
    if values.size == 0:
        return np.zeros(count)
    low, high = float(values.min()), float(values.max())
    if init == "linear":
        start = np.linspace(low, high, count)
    elif init == "random":
        start = rng.uniform(low, high, count)
    elif init == "density":
        start = np.quantile(values, (np.arange(count) + 0.5) / count)
    else:
        start = _plus_plus(values, count, rng)
    return np.sort(start)


def _plus_plus(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    chosen = [values[rng.integers(values.size)]]
    distance = (values - chosen[0]) ** 2
    for _ in range(count - 1):
        total = distance.sum()
        pick = values[rng.integers(values.size)] if total == 0 else values[rng.choice(values.size, p=distance / total)]
        chosen.append(pick)
        distance = np.minimum(distance, (values - pick) ** 2)
    return np.array(chosen)


def _nearest(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each weight's nearest centroid (R x D); ties go to the lower one."""
    order = np.argsort(centroids, axis=1, kind="stable")
    ordered = np.take_along_axis(centroids, order, axis=1)
    middles = (ordered[:, 1:] + ordered[:, :-1]) / 2
    # per row, the number of midpoints below each weight (memory R x D, not R x D x K)
    position = np.stack([np.searchsorted(middle, row, side="left") for middle, row in zip(middles, rows)])
    return np.take_along_axis(order, position, axis=1)


def weighted_means(rows, weights, assignment, centroids) -> np.ndarray:
    """Each row's centroids (R x K) moved to the ``weights``-weighted mean of their members."""
    count = centroids.shape[1]
    index = assignment + np.arange(rows.shape[0])[:, None] * count
    mass = np.bincount(index.ravel(), weights=weights.ravel(), minlength=centroids.size).reshape(centroids.shape)
    total = np.bincount(index.ravel(), weights=(weights * rows).ravel(), minlength=centroids.size)
    total = total.reshape(centroids.shape)
    return np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), centroids)  # an empty cluster stays put


def snap(values: np.ndarray, centroids: np.ndarray, zeros: np.ndarray | None = None,
         importance: np.ndarray | float = 1.0, penalty: np.ndarray | None = None) -> np.ndarray:
    """``values`` (R) moved to the nearest of their row's ``centroids`` (R x K); ``zeros`` (R)
    held at 0. With a ``penalty`` (K) the least ``importance * error^2 + penalty`` instead."""
    cost = (centroids - values[:, None]) ** 2
    if penalty is not None:
        cost = np.asarray(importance)[..., None] * cost + penalty[None]
    nearest = cost.argmin(axis=1)
    snapped = centroids[np.arange(centroids.shape[0]), nearest]
    return snapped if zeros is None else np.where(zeros, 0.0, snapped)
