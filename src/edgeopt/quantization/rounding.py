"""Error-compensated weight rounding: int8 weights chosen for the layer's output, not one by one.

Rounding each weight to its nearest grid point ignores how the layer's inputs combine. When inputs
are correlated (the three colour channels of a grey image fed to an ImageNet network are equal),
the per-weight errors add up in the output instead of averaging out. Following GPTQ (Frantar et
al., 2022, after Optimal Brain Quantization), the inputs of a layer are rounded one at a time and
the error of each is pushed onto the inputs not yet rounded, in proportion to how the calibration
data correlates them: with ``H = E[x x^T]`` (the second moment of the layer's input, damped) and
``U`` the upper Cholesky factor of ``H^-1``, rounding column ``i`` to ``q_i`` updates the remaining
columns by ``-(w_i - q_i) / U_ii * U_i,i+1:``. The scales stay those of nearest rounding (max-abs per
output channel), so nothing else in the plan changes.

This module is numpy only: it takes weight rows grouped as (groups, rows, inputs) with their scales
and the per-group second moments, and returns integers. Collecting the moments is calibration's
job, applying the integers is the QDQ pass's.
"""

from __future__ import annotations

import numpy as np

#: Added to the diagonal, as a fraction of its mean: keeps H invertible when inputs are collinear.
DAMPING = 0.01
#: Columns rounded between two updates of the columns after them. The in-block updates are numpy
#: elementwise work, the update after a block one matrix product: 32 was fastest here (a 384 x
#: 1536 weight: 0.46 s against 0.74 s at 128, the same integers).
BLOCK = 32


def inverse_factor(moments: np.ndarray) -> np.ndarray:
    """``U``, the upper Cholesky factor of the damped ``H^-1``, per group (G x D x D); layers that
    read one input (q, k and v) share it."""
    hessian = np.array(moments, dtype=np.float64)
    inputs = hessian.shape[-1]
    diagonal = np.einsum("gii->gi", hessian)
    dead = diagonal <= 0  # an input that is always zero: its weight does not matter
    for g, i in zip(*np.nonzero(dead)):
        hessian[g, i, i] = 1.0
    damp = DAMPING * np.maximum(np.einsum("gii->gi", hessian).mean(axis=1), 1e-12)
    hessian += damp[:, None, None] * np.eye(inputs)
    return np.linalg.cholesky(np.linalg.inv(hessian)).transpose(0, 2, 1)  # inv(H) = U^T U


def compensated_round(rows: np.ndarray, scales: np.ndarray, moments: np.ndarray | None, qmin: int = -127,
                      qmax: int = 127, factor: np.ndarray | None = None, structure=None) -> np.ndarray:
    """Integers for ``rows`` (G x R x D) with per-row ``scales`` (G x R) given moments (G x D x D),
    or their :func:`inverse_factor`. ``structure`` (a :class:`~.structure.RowStructure` of the
    rows) holds the pruned weights at zero and each clustered row on its clusters' integers."""
    weights = np.array(rows, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)[..., None]
    inputs = weights.shape[2]
    # Inputs are rounded in their natural order. GPTQ's "act-order" (largest second moment first)
    # was measured worse here: MobileNetV2-Fashion output error 0.0111 against 0.0087.
    upper = inverse_factor(moments) if factor is None else factor
    integers = np.empty(weights.shape, dtype=np.int64)
    # Lazy batch updates (GPTQ's blocking): inside a block each rounding error updates only the
    # block's later columns; the columns after the block get the block's errors in one matrix
    # product. Same result as updating every later column at each step, in far fewer operations.
    for start in range(0, inputs, BLOCK):
        stop = min(start + BLOCK, inputs)
        block = weights[:, :, start:stop]
        errors = np.empty(block.shape)
        for i in range(stop - start):
            column = block[:, :, i]
            q = np.clip(np.rint(column / scales[..., 0]), qmin, qmax)
            if structure is not None:
                q = structure.constrain(q, column / scales[..., 0], start + i)
            integers[:, :, start + i] = q
            errors[:, :, i] = (column - q * scales[..., 0]) / upper[:, None, start + i, start + i]
            block[:, :, i + 1:] -= errors[:, :, i, None] * upper[:, None, start + i, start + i + 1:stop]
        if stop < inputs:
            weights[:, :, stop:] -= errors @ upper[:, start:stop, stop:]
    return integers


#: Patches per sample :func:`conv_patch_moments` sums by default: PATCHES_PER_INPUT per input of the
#: moment (its relative error falls as one over the square root of the patches), within
#: [MIN_PATCHES, MAX_PATCHES]. Early layers of a 224 px network have 12,544 positions per image, and
#: forming every patch was a fifth of MobileNetV2's optimizer time.
PATCHES_PER_INPUT, MIN_PATCHES, MAX_PATCHES = 32, 256, 2048


def conv_patch_moments(x: np.ndarray, group: int, kernel, strides, pads, dilations,
                       patches_per_sample: int | None = None) -> tuple[np.ndarray, int]:
    """Sum over samples and output positions of ``p p^T`` for the zero-padded input patches ``p`` a
    2-D convolution sees, per group: shape (group, C/group * kh * kw, same), and the patch count.

    The patch layout matches the weight's (input channel, kernel row, kernel column) flattening.
    Where a sample has more than ``patches_per_sample`` output positions, a seeded uniform subset of
    ``patches_per_sample`` times the samples is summed (the count says how many).
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    n, c, h, w = x.shape
    if patches_per_sample is None:
        inputs = (c // group) * kh * kw
        patches_per_sample = int(np.clip(PATCHES_PER_INPUT * inputs, MIN_PATCHES, MAX_PATCHES))
    x = np.asarray(x, dtype=np.float32)
    out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    total = n * out_h * out_w
    count = min(total, n * patches_per_sample)
    chosen = np.sort(np.random.default_rng(0).choice(total, count, replace=False)) if count < total else \
        np.arange(total)
    sample, position = np.divmod(chosen, out_h * out_w)
    row, column = np.divmod(position, out_w)
    # One (count x C) gather per kernel offset from the unpadded input (no padded copy): indices
    # in the padding read a clipped neighbour and are zeroed.
    offsets = []
    for a in range(kh):
        rows = a * dh + sh * row - top
        for b in range(kw):
            columns = b * dw + sw * column - left
            inside = (rows >= 0) & (rows < h) & (columns >= 0) & (columns < w)
            gathered = x[sample, :, np.clip(rows, 0, h - 1), np.clip(columns, 0, w - 1)]
            offsets.append(gathered if inside.all() else gathered * inside[:, None])
    patches = np.stack(offsets, axis=2)  # count x C x K
    patches = patches.reshape(count, group, (c // group) * kh * kw).transpose(1, 2, 0)
    return np.matmul(patches, patches.transpose(0, 2, 1)), count


def row_moments(x: np.ndarray, features: int) -> tuple[np.ndarray, int]:
    """``sum x x^T`` over the rows of a MatMul/Gemm input whose last axis has ``features`` values
    (float32: summed over a sample's rows, then in float64 over samples by the observer)."""
    rows = np.asarray(x, dtype=np.float32).reshape(-1, features)
    return (rows.T @ rows)[None], rows.shape[0]
