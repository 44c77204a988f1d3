"""Data-aware one-shot pruning: Optimal Brain Surgeon for a layer, in SparseGPT's blocked form
(Frantar and Alistarh, 2023). numpy only; returns new weights.

A layer computes ``w . x``. Removing weight ``i`` and letting the others compensate costs
``w_i^2 / [H^-1]_ii`` of output error, with ``H = E[x x^T]`` the second moment of the layer's
input; the best compensation moves the later weights by ``-(w_i / U_ii) U_i,i+1:`` with ``U`` the
upper Cholesky factor of ``H^-1`` (the update int8's compensated rounding makes for a rounding
error, :mod:`edgeopt.quantization.rounding`). Columns are processed in blocks: at the start of
each block the mask is chosen on the current (already compensated) weights by that cost, row by
row for unstructured sparsity (each row loses the same fraction) or per N:M group.
"""

from __future__ import annotations

import numpy as np

from ..quantization.rounding import inverse_factor
from .masks import keep_mask

#: Columns whose mask is chosen at once (SparseGPT's default).
BLOCK = 128
#: :func:`allocate` keeps at least ``(1 - sparsity) / KEPT_DIVISOR`` of each layer's weights
KEPT_DIVISOR = 2


def prune_rows(rows: np.ndarray, moments: np.ndarray, sparsity: float, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Pruned and compensated ``rows`` (G x R x D, inputs in pattern order, ``moments`` G x D x D
    in the same order) and the keep mask."""
    keep = np.ones(np.shape(rows), dtype=bool)
    block = BLOCK if pattern == "unstructured" else BLOCK - BLOCK % _group(pattern)

    def choose(weights, upper, start, stop):  # the block's mask, on the compensated weights
        diagonal = np.einsum("gii->gi", upper[:, start:stop, start:stop])
        saliency = weights[:, :, start:stop] ** 2 / diagonal[:, None, :] ** 2
        for g in range(weights.shape[0]):
            keep[g, :, start:stop] = _block_mask(saliency[g], sparsity, pattern)

    weights = sweep(rows, moments, lambda i, column: np.where(keep[:, :, i], column, 0.0), block, choose)
    return np.where(keep, weights, 0.0), keep


def sweep(rows: np.ndarray, moments: np.ndarray, target, block: int = BLOCK, at_block=None) -> np.ndarray:
    """``rows`` (G x R x D) with each input column ``i`` in turn replaced by ``target(i, column)``
    (G x R) and the error pushed onto the columns after it (OBS's update, lazily per block);
    ``at_block(weights, upper, start, stop)`` runs before each block. Returns the new rows."""
    weights = np.array(rows, dtype=np.float64)
    upper = inverse_factor(moments)
    depth = weights.shape[2]
    for start in range(0, depth, block):
        stop = min(start + block, depth)
        if at_block is not None:
            at_block(weights, upper, start, stop)
        errors = np.empty(weights[:, :, start:stop].shape)
        for i in range(start, stop):
            column = weights[:, :, i]
            kept = target(i, column)
            errors[:, :, i - start] = (column - kept) / upper[:, None, i, i]
            weights[:, :, i] = kept
            weights[:, :, i + 1:stop] -= errors[:, :, i - start, None] * upper[:, None, i, i + 1:stop]
        if stop < depth:
            weights[:, :, stop:] -= errors @ upper[:, start:stop, stop:]
    return weights


def _group(pattern: str) -> int:
    from ..config import n_of_m

    nm = n_of_m(pattern)
    return nm[1] if nm else 4


def _block_mask(saliency: np.ndarray, sparsity: float, pattern: str) -> np.ndarray:
    """A block's mask (R x B): each row (unstructured, 1x4) or group (N:M, 4x1) loses its share."""
    if pattern in ("unstructured", "1x4"):
        return np.stack([keep_mask(row[None], sparsity, pattern)[0] for row in saliency])
    return keep_mask(saliency, sparsity, pattern)


def allocate(parts: list[tuple[np.ndarray, np.ndarray]], sparsity: float) -> list[float]:
    """Each layer's sparsity for one model-wide ranking: ``parts`` are the layers' (rows G x R x D,
    moments G x D x D); ``sparsity`` of all their weights go, those of least relative cost first.

    A weight's cost is its OBS saliency ``w_i^2 / [H^-1]_ii`` (the output error of removing it
    alone, the others compensating) over its layer's output energy ``sum w H w^T``, so that a layer
    whose every weight is a large share of its output keeps more of them; the sum of the removed
    costs is then about the sum of the layers' relative output errors, the trade
    :func:`edgeopt.compression.rate.allocate` makes for clustering. A layer loses at most
    ``1 - (1 - sparsity) / 2`` of its weights (90% at 80%, 75% at 50%)."""
    costs = []
    for rows, moments in parts:
        upper = inverse_factor(moments)
        inverse_diagonal = np.einsum("gki,gki->gi", upper, upper)  # diag(U^T U) = diag(H^-1)
        weights = np.asarray(rows, dtype=np.float64)
        energy = max(float(np.einsum("grd,gde,gre->", weights, np.asarray(moments, dtype=np.float64), weights)), 1e-30)
        costs.append((weights ** 2 / inverse_diagonal[:, None, :]).ravel() / energy)
    # no layer loses more than most_share of its weights, the rest go elsewhere. MobileNetV2-Fashion
    # at 80%, one shot (float top-1): unbounded 10.0% (layers emptied), at most 95% per layer
    # 57.5%, at most 90% 87.2%, every layer at 80% 71.5%
    most_share = 1.0 - (1.0 - sparsity) / KEPT_DIVISOR
    eligible = [np.sort(cost)[:int(most_share * cost.size)] for cost in costs]
    every = np.concatenate(eligible)
    removed = min(round(sparsity * sum(cost.size for cost in costs)), every.size)
    if removed == 0:
        return [0.0] * len(parts)
    threshold = np.partition(every, removed - 1)[removed - 1]
    return [float(np.sum(kept <= threshold)) / cost.size for kept, cost in zip(eligible, costs)]
