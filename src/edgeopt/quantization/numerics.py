"""Scale, zero point and rounding: the integer arithmetic every quantizer shares. numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Integer types edgeopt can emit, with the range of values it uses for each.
# Weights are symmetric (so -w quantizes exactly to -q, as TFLite's quantization spec asks), in
# [-127, 127] at most, and limited further where x86 kernels would saturate (see saturation.py);
# activations use the full range of their type.
INTEGER_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}
SYMMETRIC_RANGES = {"int8": (-127, 127), "int16": (-32767, 32767)}
# Smallest scale emitted: a constant tensor of zeros still gets a valid (positive) scale.
MIN_SCALE = np.float32(1e-12)


@dataclass(frozen=True)
class QuantParams:
    """How one tensor maps to integers: ``real = (q - zero_point) * scale``.

    ``scale`` and ``zero_point`` are scalars (per tensor) or 1-D arrays along ``axis`` (per channel).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def to_dict(self) -> dict:
        return {
            "scale": np.asarray(self.scale).tolist(),
            "zero_point": np.asarray(self.zero_point).tolist(),
            "dtype": self.dtype,
            "axis": self.axis,
        }


def affine_params(low: float, high: float, dtype: str = "uint8") -> QuantParams:
    """Asymmetric per-tensor parameters covering ``[low, high]`` (widened to include 0).

    Zero is always exactly representable, so zero padding and ReLU outputs lose nothing.
    """
    if dtype not in INTEGER_RANGES:
        raise ValueError(f"unsupported integer type {dtype!r}")
    qmin, qmax = INTEGER_RANGES[dtype]
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = np.float32(max((high - low) / (qmax - qmin), MIN_SCALE))
    zero_point = int(np.clip(np.rint(qmin - low / scale), qmin, qmax))
    return QuantParams(np.float32(scale), np.array(zero_point, dtype=dtype), dtype)


def symmetric_params(abs_max, dtype: str = "int8", axis: int | None = None, qmax: int | None = None
                     ) -> QuantParams:
    """Symmetric parameters (zero point 0) for ``|x| <= abs_max``; ``abs_max`` may be per channel.
    ``qmax`` (default: the type's symmetric range) is the integer ``abs_max`` maps to."""
    qmax = SYMMETRIC_RANGES[dtype][1] if qmax is None else qmax
    abs_max = np.asarray(abs_max, dtype=np.float64)
    scale = np.maximum(abs_max / qmax, MIN_SCALE).astype(np.float32)
    zero_point = np.zeros(scale.shape, dtype=dtype)
    return QuantParams(scale, zero_point, dtype, axis)


def _broadcast(values: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    values = np.asarray(values)
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


def quantize(x: np.ndarray, params: QuantParams, clip_range: tuple[int, int] | None = None) -> np.ndarray:
    """Quantize like ONNX QuantizeLinear: divide, round half to even, add zero point, saturate."""
    x = np.asarray(x, dtype=np.float32)
    scale = _broadcast(params.scale, x.ndim, params.axis).astype(np.float32)
    zero_point = _broadcast(params.zero_point, x.ndim, params.axis).astype(np.int64)
    qmin, qmax = clip_range or INTEGER_RANGES[params.dtype]
    # Saturate in float before the integer cast: x / scale may exceed int64 (or be inf).
    q = np.rint(x / scale) + zero_point
    return np.clip(np.nan_to_num(q, nan=0.0), qmin, qmax).astype(params.dtype)


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """Inverse of :func:`quantize`: ``(q - zero_point) * scale`` in float32."""
    q = np.asarray(q)
    scale = _broadcast(params.scale, q.ndim, params.axis).astype(np.float32)
    zero_point = _broadcast(params.zero_point, q.ndim, params.axis).astype(np.int64)
    return ((q.astype(np.int64) - zero_point) * scale).astype(np.float32)


def weight_params(weight: np.ndarray, axis: int | None, dtype: str = "int8", qmax: int | None = None
                  ) -> QuantParams:
    """Symmetric per-channel (``axis`` given) or per-tensor parameters for a constant weight, its
    largest magnitude mapped to ``qmax`` (see :mod:`.saturation`)."""
    weight = np.asarray(weight, dtype=np.float32)
    if axis is None or weight.ndim == 0:
        return symmetric_params(np.abs(weight).max(initial=0.0), dtype, qmax=qmax)
    axis = axis % weight.ndim
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    return symmetric_params(np.abs(weight).max(axis=reduce_axes, initial=0.0), dtype, axis, qmax)


