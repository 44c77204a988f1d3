"""int8 weights that x86 integer kernels without VNNI add exactly. numpy only.

ONNX Runtime's uint8 x int8 kernels on AVX2 (and AVX-512 before VNNI) multiply with
``vpmaddubsw``: the products of weights ``2j`` and ``2j + 1`` of an output's accumulation order
are added in 16 bits and saturate at 32,767. With activations up to 255 a pair is exact when
``|w_2j|, |w_2j+1| <= 127`` and ``|w_2j + w_2j+1| <= 128`` (255 x 128 = 32,640; measured here:
a pair summing to 129 is off by 128, one summing to 128 is exact, and only neighbours 2j, 2j+1
interact). A convolution's order is (kernel rows, kernel columns, input channels), channels
fastest, per group; a MatMul's and Gemm's is the reduced axis (``OperatorRule.accumulation``).

``weight_range``: ``"safe"`` limits each channel by those pairs (about 1.5x the resolution of
``"half"`` on MobileNetV2 and MiniLM, exact on the same CPUs); ``"half"`` puts every weight in
[-64, 64], exact whatever pairs a kernel forms; ``"full"`` uses [-127, 127], exact only with VNNI,
on ARM and in runtimes that accumulate in 32 bits.
"""

from __future__ import annotations

import numpy as np

from .numerics import MIN_SCALE, QuantParams

WEIGHT_RANGE_CHOICES = ("safe", "half", "full")
#: Largest weight magnitude by range (``"safe"`` also limits pairs to PAIR_LIMIT).
WEIGHT_LIMITS = {"safe": 127, "half": 64, "full": 127}
PAIR_LIMIT = 128


def to_kernel_order(weight: np.ndarray, layout: tuple[tuple[int, ...], int]) -> np.ndarray:
    """``weight`` as (outputs, sequences, K): each output's weights in the order the kernel adds
    them, one row of K per independent sum (a batched MatMul weight has one per batch)."""
    permutation, reduced_axes = layout
    moved = np.transpose(weight, permutation)
    k = int(np.prod(moved.shape[moved.ndim - reduced_axes:]))
    return moved.reshape(moved.shape[0], -1, k)


def from_kernel_order(rows: np.ndarray, shape: tuple[int, ...], layout: tuple[tuple[int, ...], int]
                      ) -> np.ndarray:
    permutation = layout[0]
    moved_shape = tuple(shape[axis] for axis in permutation)
    return np.transpose(rows.reshape(moved_shape), np.argsort(permutation))


def _pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if rows.shape[-1] % 2:
        rows = np.concatenate([rows, np.zeros(rows.shape[:-1] + (1,), rows.dtype)], axis=-1)
    return rows[..., 0::2], rows[..., 1::2]


def pair_peaks(rows: np.ndarray) -> np.ndarray:
    """Per output, the largest ``|w_2j + w_2j+1|`` over neighbours of one sign (0 if none)."""
    first, second = _pairs(np.asarray(rows, np.float64))
    same_sign = (first * second) > 0
    return np.where(same_sign, np.abs(first + second), 0.0).reshape(rows.shape[0], -1).max(axis=1, initial=0.0)


def paired_params(rows: np.ndarray, per_channel_axis: int | None) -> QuantParams:
    """Symmetric int8 parameters for weights in kernel order (:func:`to_kernel_order`): each
    channel's (or the tensor's) largest weight maps to at most 127 and its largest same-sign pair
    to at most PAIR_LIMIT, so nearest rounding never saturates a pair (``round(a) + round(b)``
    exceeds ``a + b`` by less than 1)."""
    magnitude = np.abs(np.asarray(rows, np.float64)).reshape(rows.shape[0], -1).max(axis=1, initial=0.0)
    needed = np.maximum(np.maximum(magnitude / WEIGHT_LIMITS["safe"], pair_peaks(rows) / PAIR_LIMIT), MIN_SCALE)
    if per_channel_axis is None:
        needed = needed.max(initial=float(MIN_SCALE)).reshape(1)
    scale = needed.astype(np.float32)
    # float32 may round a scale down, and a pair that fitted exactly would then exceed the limit
    scale = np.where(scale.astype(np.float64) < needed, np.nextafter(scale, np.float32(np.inf)), scale)
    if per_channel_axis is None:
        return QuantParams(np.float32(scale[0]), np.array(0, np.int8), "int8")
    return QuantParams(scale, np.zeros(scale.shape, np.int8), "int8", per_channel_axis)


def fit_pairs(rows: np.ndarray) -> np.ndarray:
    """Integers in kernel order with every same-sign pair brought within PAIR_LIMIT: the larger of
    the two moves toward zero by the excess (only rounding that went beyond the scale's bound,
    such as compensated rounding's, needs it)."""
    rows = np.asarray(rows)
    k = rows.shape[-1]
    first, second = (part.astype(np.int32) for part in _pairs(rows))
    total = first + second
    excess = np.where(first * second > 0, np.maximum(np.abs(total) - PAIR_LIMIT, 0), 0)
    if not excess.any():
        return rows
    sign = np.sign(total)
    larger_first = np.abs(first) >= np.abs(second)
    first = first - np.where(larger_first, sign * excess, 0)
    second = second - np.where(larger_first, 0, sign * excess)
    fitted = np.empty(first.shape[:-1] + (first.shape[-1] * 2,), np.int32)
    fitted[..., 0::2], fitted[..., 1::2] = first, second
    return fitted[..., :k].astype(rows.dtype)
