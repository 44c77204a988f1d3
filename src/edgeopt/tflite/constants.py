"""Constant tensors of the TFLite model: weights (float, float16 or int8 per channel), biases
(float, or int32/int64 at scale input x weight) and constant operands, permuted to their layout.

Functions of the :class:`.lower.Lowering` they write into; converters reach them through its
methods (``weight_tensor``, ``bias``, ``value`` of a constant).
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeoptError
from .builder import Quantization
from .quantized import affine_for, quantize_values, weight_quantization

#: relative difference tolerated between a plan's bias scale and input scale x weight scale
#: (float32 products rounded differently)
BIAS_SCALE_RTOL = 1e-5


def _input_index(lowering, name: str) -> int | None:
    node = lowering.node
    if node is None:
        return None
    return next((i for i, n in enumerate(node.input) if n == name), None)


def constant_operand(lowering, name: str, layout, quantized: bool, dtype=None, rank: int | None = None) -> int:
    """Constant ``name`` in ``layout`` (given leading unit axes up to ``rank``), quantized as the
    plan quantized it for the current node (or over its own range where the plan did not)."""
    array = np.asarray(lowering.constant(name))
    if rank is not None and array.ndim < rank:
        array = array.reshape((1,) * (rank - array.ndim) + array.shape)
    index = _input_index(lowering, name)
    entry = lowering.quantized.constant(lowering.node, index) if quantized and index is not None else None
    if entry is not None:
        values, quantization = lowering.quantized.constant_values(entry)
        values = values.reshape(array.shape)
    elif quantized:
        quantization = affine_for(array, lowering.quantized.dtype)
        values = quantize_values(array, quantization, lowering.quantized.dtype)
    else:
        quantization = None
        values = array.astype(dtype or (np.float32 if array.dtype.kind == "f" else array.dtype))
    if values.ndim:
        values = values.transpose(layout)
    return lowering.builder.constant(name, values, quantization)


def broadcast_constant(lowering, name: str, layout, rank: int, like: str) -> int:
    dtype = np.dtype(lowering.dtypes.get(like, np.float32))
    return constant_operand(lowering, name, layout, lowering.node_quantized, dtype, rank)


def scalar(lowering, like: int, value: float) -> int:
    """A one-element constant of ``value`` in the type and parameters of tensor ``like``."""
    info = lowering.builder.info(like)
    if info.quantization is not None:
        return lowering.builder.constant("scalar", quantize_values(np.array([value]), info.quantization, info.dtype),
                                         info.quantization)
    return lowering.builder.constant("scalar", np.array([value], dtype=info.dtype))


def float_weight(lowering, name: str, node) -> np.ndarray:
    if name in lowering.float16_weights and not lowering.is_constant(name):
        # a float16 initializer behind its Cast that constant folding left alone (shared or large)
        return lowering.constant(lowering.view.producer[name].input[0]).astype(np.float32)
    if not lowering.is_constant(name):
        raise EdgeoptError(f"{node.op_type} {node.name!r}: its weights {name!r} are computed at run time; the "
                           "TFLite writer needs constant weights")
    return lowering.constant(name)


def weight_tensor(lowering, node, index: int, transform, axis: int, scale: float = 1.0, onnx_axis: int = 0) -> int:
    """Weight input ``index`` of ``node`` rearranged by ``transform``, output channels on ``axis``:
    int8 with per-channel scales when the node runs quantized, float16 read through DEQUANTIZE
    when the model stores it so, float32 otherwise."""
    name = node.input[index]
    entry = lowering.quantized.weight(node, index) if lowering.node_quantized else None
    if entry is not None:
        if entry.params.per_channel and np.size(entry.params.scale) > 1 and entry.params.axis != onnx_axis:
            raise EdgeoptError(f"{node.op_type} {node.name!r}: its weights are quantized per channel on axis "
                               f"{entry.params.axis}; TFLite needs the output-channel axis {onnx_axis}")
        values = np.ascontiguousarray(transform(entry.values)).astype(np.int8)
        quantization = weight_quantization(entry, axis, values.shape[axis])
        if scale != 1.0:
            quantization = Quantization(tuple(s * scale for s in quantization.scale), quantization.zero_point, axis)
        return lowering.builder.constant(name, values, quantization)
    stored = lowering.int8_weights.get(name) if scale == 1.0 else None
    if stored is not None and _per_output_channel(stored, onnx_axis):
        integers, storage_scale = stored
        values = np.ascontiguousarray(transform(integers)).astype(np.int8)
        scales = np.asarray(storage_scale, np.float64).reshape(-1)
        quantization = Quantization(tuple(float(s) for s in scales), (0,) * scales.size, axis if scales.size > 1 else 0)
        return lowering.builder.constant(name, values, quantization)
    array = np.ascontiguousarray(transform(float_weight(lowering, name, node).astype(np.float64) * scale))
    if name in lowering.float16_weights:
        stored = lowering.builder.constant(f"{name}_float16", array.astype(np.float16))
        index = lowering.builder.tensor(name, array.shape, np.float32)
        lowering.builder.operator("DEQUANTIZE", [stored], [index], None, lowering.version("DEQUANTIZE", [stored]))
        return index
    return lowering.builder.constant(name, array.astype(np.float32))


def _per_output_channel(stored, onnx_axis: int) -> bool:
    """A dynamic-range weight's scales are one per tensor or one per output channel."""
    integers, scale = stored
    scale = np.asarray(scale)
    if scale.size == 1:
        return True
    shape = [1] * integers.ndim
    shape[onnx_axis] = integers.shape[onnx_axis]
    return scale.size == integers.shape[onnx_axis] and (scale.ndim == 1 and onnx_axis == integers.ndim - 1
                                                        or list(scale.shape) == shape)


def bias_tensor(lowering, node, channels: int, source: int, weights: int, values=None, scale: float = 1.0) -> int:
    """The bias of a Conv/Gemm/MatMul: its third input times ``scale`` (Gemm's beta), ``values``
    when given, zeros where it has none (XNNPACK and the builtin kernels expect one). Quantized:
    integers at scale input x weight with zero point 0."""
    name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if values is None and name:
        values = float_weight(lowering, name, node).astype(np.float64).reshape(-1) * scale
    values = np.zeros(channels) if values is None else np.broadcast_to(np.asarray(values).reshape(-1), (channels,))
    if not lowering.node_quantized:
        return lowering.builder.constant(f"{node.name}_bias", values.astype(np.float32))
    input_q = lowering.builder.info(source).quantization
    weight_q = lowering.builder.info(weights).quantization
    scales = np.float64(input_q.scale[0]) * np.asarray(weight_q.scale, np.float64)
    dtype = lowering.quantized.bias_dtype
    entry = lowering.quantized.bias(node, 2) if name else None
    if entry is not None and np.allclose(np.asarray(entry.params.scale, np.float64).reshape(-1),
                                         scales, rtol=BIAS_SCALE_RTOL) and scale == 1.0:
        integers = np.broadcast_to(entry.values.reshape(-1), (channels,)).astype(dtype)
    else:
        real = entry.dequantized().reshape(-1) * scale if entry is not None else values
        integers = np.rint(np.broadcast_to(real, (channels,)) / np.broadcast_to(scales, (channels,)))
        info = np.iinfo(dtype)
        integers = np.clip(integers, info.min, info.max).astype(dtype)
    quantization = Quantization(tuple(float(s) for s in np.broadcast_to(scales, (len(weight_q.scale),))),
                                (0,) * len(weight_q.scale), 0)
    return lowering.builder.constant(f"{node.name}_bias", integers, quantization)
