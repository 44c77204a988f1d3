"""Which weights to keep: masks for weight rows (outputs x inputs, inputs in pattern order: each
N:M group or 1x4 block is consecutive), from per-weight scores (magnitude, or saliency). numpy
only; decides, edits nothing."""

from __future__ import annotations

import numpy as np

from ..config import n_of_m


def keep_mask(scores: np.ndarray, sparsity: float, pattern: str) -> np.ndarray:
    """Boolean mask (R x D) keeping the highest ``scores`` under ``pattern``: unstructured,
    ``1x4`` / ``4x1`` blocks (scored by their sum), or N:M (N kept of each M consecutive inputs;
    ``sparsity`` is then 1 - N/M). Exactly ``round(sparsity * count)`` weights (or blocks) go;
    ties go in index order."""
    scores = np.asarray(scores, dtype=np.float64)
    nm = n_of_m(pattern)
    if nm is not None:
        return _n_of_m(scores, *nm)
    if pattern == "unstructured":
        return _lowest_removed(scores.ravel(), sparsity).reshape(scores.shape)
    rows, depth = scores.shape
    if pattern == "1x4":
        blocks = scores.reshape(rows, depth // 4, 4).sum(axis=2)
        return np.repeat(_lowest_removed(blocks.ravel(), sparsity).reshape(blocks.shape), 4, axis=1)
    blocks = scores.reshape(rows // 4, 4, depth).sum(axis=1)  # 4x1
    return np.repeat(_lowest_removed(blocks.ravel(), sparsity).reshape(blocks.shape), 4, axis=0)


def fits(shape: tuple[int, int], pattern: str, channels: int | None = None) -> str | None:
    """Why rows of ``shape`` cannot take ``pattern`` (None when they can); ``channels``: a
    convolution's input channels (per group), the innermost run groups may not cross."""
    rows, depth = shape
    run, what = (depth, "inputs per output") if channels is None else (channels, "input channels per group")
    nm = n_of_m(pattern)
    if nm is not None and run % nm[1]:
        return f"{run} {what} are not a multiple of {nm[1]}"
    if pattern == "1x4" and run % 4:
        return f"{run} {what} are not a multiple of 4"
    if pattern == "4x1" and rows % 4:
        return f"{rows} outputs are not a multiple of 4"
    return None


def _lowest_removed(scores: np.ndarray, sparsity: float) -> np.ndarray:
    keep = np.ones(scores.shape, dtype=bool)
    removed = round(sparsity * scores.size)
    if removed:
        keep[np.argsort(scores, kind="stable")[:removed]] = False
    return keep


def _n_of_m(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    rows, depth = scores.shape
    groups = scores.reshape(rows, depth // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return keep.reshape(rows, depth)
