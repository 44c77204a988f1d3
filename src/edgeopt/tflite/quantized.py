"""A :class:`QuantizationPlan` as the TFLite writer reads it: TFLite parameters per tensor and the
integers of each weight, bias and constant operand.

TFLite's quantization specification differs from ONNX's QDQ in a few places, handled here:
activations are int8 (edgeopt's uint8 activations move their zero point by -128, the same real
values), weights are symmetric int8 with zero point 0, biases int32 (int64 for int16
activations) at scale input x weight with zero point 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgeoptError
from ..quantization.numerics import QuantParams
from ..quantization.plan import QuantizationPlan, QuantizedConstant
from .builder import Quantization

#: plan activation type -> (TFLite type, zero-point shift)
_ACTIVATION_TYPES = {"uint8": (np.dtype(np.int8), -128), "int8": (np.dtype(np.int8), 0),
                     "int16": (np.dtype(np.int16), 0)}


@dataclass
class QuantizedTensors:
    """The plan, in TFLite's terms; ``None`` from a lookup means "float"."""

    plan: QuantizationPlan

    def __post_init__(self):
        if self.plan.activation_type not in _ACTIVATION_TYPES:
            raise EdgeoptError(f"the plan's activations are {self.plan.activation_type}; the TFLite writer takes "
                               f"{', '.join(_ACTIVATION_TYPES)}")
        self.dtype, self.shift = _ACTIVATION_TYPES[self.plan.activation_type]
        self.nodes = set(self.plan.nodes)

    def params(self, name: str) -> Quantization | None:
        params = self.plan.activations.get(name)
        return None if params is None else self.activation(params, name)

    def activation(self, params: QuantParams, where: str) -> Quantization:
        if params.per_channel and np.size(params.scale) > 1:
            raise EdgeoptError(f"{where}: per-channel activation parameters have no TFLite equivalent")
        zero = int(np.asarray(params.zero_point).reshape(-1)[0])
        if params.dtype == "uint8":
            zero -= 128
        return Quantization((float(np.asarray(params.scale).reshape(-1)[0]),), (zero,))

    def weight(self, node, index: int) -> QuantizedConstant | None:
        entry = self.plan.weights.get((node.name, index))
        if entry is not None and np.any(np.asarray(entry.params.zero_point) != 0):
            raise EdgeoptError(f"{node.op_type} {node.name!r}: its int8 weights have a non-zero zero point; TFLite's "
                               "quantization specification needs symmetric weights")
        return entry

    def bias(self, node, index: int) -> QuantizedConstant | None:
        return self.plan.biases.get((node.name, index))

    def constant(self, node, index: int) -> QuantizedConstant | None:
        return self.plan.constants.get((node.name, index))

    def constant_values(self, entry: QuantizedConstant) -> tuple[np.ndarray, Quantization]:
        """A constant operand quantized like an activation: its integers in TFLite's type."""
        params = self.activation(entry.params, "a constant operand")
        values = entry.values.astype(np.int32) + (-128 if entry.params.dtype == "uint8" else 0)
        return values.astype(self.dtype), params

    @property
    def bias_dtype(self) -> np.dtype:
        return np.dtype(np.int64) if self.dtype == np.int16 else np.dtype(np.int32)


def weight_quantization(entry: QuantizedConstant, axis: int, channels: int) -> Quantization:
    """TFLite parameters of an int8 weight whose output channels end up on ``axis``."""
    scale = np.asarray(entry.params.scale, np.float32).reshape(-1)
    if scale.size == 1:
        return Quantization((float(scale[0]),), (0,))
    if scale.size != channels:
        raise EdgeoptError(f"a weight has {scale.size} scales for {channels} output channels")
    return Quantization(tuple(float(s) for s in scale), (0,) * scale.size, axis)


def quantize_values(values: np.ndarray, quantization: Quantization, dtype) -> np.ndarray:
    """Real values -> integers of ``dtype`` with per-tensor ``quantization`` (saturating)."""
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(values, np.float64) / quantization.scale[0]) + quantization.zero_point[0]
    return np.clip(q, info.min, info.max).astype(dtype)


def affine_for(values: np.ndarray, dtype) -> Quantization:
    """Per-tensor parameters covering ``values`` and 0 (a constant operand the plan did not quantize)."""
    info = np.iinfo(dtype)
    low, high = min(float(np.min(values)), 0.0), max(float(np.max(values)), 0.0)
    if info.min < 0 and dtype != np.int8:  # int16: symmetric, zero point 0
        scale = max(abs(low), abs(high)) / info.max or 1.0
        return Quantization((scale,), (0,))
    scale = (high - low) / (info.max - info.min) or 1.0
    return Quantization((scale,), (int(np.clip(np.rint(info.min - low / scale), info.min, info.max)),))
