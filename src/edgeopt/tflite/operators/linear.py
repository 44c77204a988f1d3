"""Gemm and MatMul: FULLY_CONNECTED when the weights are constant, BATCH_MATMUL otherwise."""

from __future__ import annotations

import numpy as np

from ...errors import EdgeoptError
from . import converter
from .common import activation_code, attribute, fuse_activation


@converter("Gemm")
def gemm(lowering, node) -> None:
    a, weight_name = node.input[0], node.input[1]
    if attribute(node, "transA", 0):
        raise EdgeoptError(f"Gemm {node.name!r}: transA=1 is not lowered (TFLite's FULLY_CONNECTED takes [M, K])")
    weight = lowering.weight(weight_name, node)
    trans_b = attribute(node, "transB", 0)
    channels = weight.shape[0 if trans_b else 1]
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if bias_name and (not lowering.is_constant(bias_name) or lowering.constant(bias_name).size not in (1, channels)):
        raise EdgeoptError(f"Gemm {node.name!r}: the TFLite writer needs C to be a constant of N or 1 values")
    _fully_connected(lowering, node, lowering.value(a, lowering.ordered_layout(a)), channels,
                     (lambda w: w) if trans_b else (lambda w: w.T), 0 if trans_b else 1, keep=False,
                     alpha=attribute(node, "alpha", 1.0), beta=attribute(node, "beta", 1.0))


@converter("MatMul")
def matmul(lowering, node) -> None:
    a, b_name = node.input
    if lowering.is_constant(b_name) or lowering.weight_source(b_name) is not None:
        weight = lowering.weight(b_name, node)
        if weight.ndim == 2:
            keep = lowering.rank(a) > 2
            _fully_connected(lowering, node, lowering.value(a, lowering.ordered_layout(a)), weight.shape[1],
                             lambda w: w.T, 1, keep=keep, bias_add=_bias_add(lowering, node, weight.shape[1]))
            return
    b = lowering.builder
    sources = [lowering.value(name, lowering.ordered_layout(name)) for name in node.input]
    out = lowering.output(node.output[0])
    b.operator("BATCH_MATMUL", sources, [out], b.options("BatchMatMulOptions"), lowering.version("BATCH_MATMUL", sources))


def _bias_add(lowering, node, channels: int):
    """A float MatMul's only reader adding a constant of N values: it becomes the bias."""
    reader = lowering.only_consumer(node.output[0])
    if lowering.node_quantized or reader is None or reader.op_type != "Add":
        return None
    other = [n for n in reader.input if n != node.output[0]]
    if len(other) != 1 or not lowering.is_constant(other[0]) or lowering.constant(other[0]).size != channels:
        return None
    if lowering.constant(other[0]).shape[-1:] != (channels,):
        return None
    return reader, lowering.constant(other[0]).reshape(-1)


def _fully_connected(lowering, node, source, channels: int, transform, onnx_axis: int, keep: bool,
                     alpha: float = 1.0, beta: float = 1.0, bias_add=None) -> None:
    """FULLY_CONNECTED of ``source`` [..., K] with ``node``'s weights made [N, K] by ``transform``
    (``bias_add``: an Add after a MatMul that becomes its bias)."""
    b = lowering.builder
    weights = lowering.weight_tensor(node, 1, transform, 0, scale=alpha, onnx_axis=onnx_axis)
    result = node.output[0]
    if bias_add is not None:
        reader, values = bias_add
        lowering.consumed.add(reader.name)
        result = reader.output[0]
        bias_index = lowering.bias(node, channels, source, weights, values=values)
    else:
        bias_index = lowering.bias(node, channels, source, weights, scale=beta)
    kind, output = fuse_activation(lowering, result)
    out = lowering.output(output)
    # dynamic range: float input, int8 weights; each input row gets its own asymmetric range
    hybrid = b.info(source).dtype == np.float32 and b.info(weights).dtype == np.int8
    options = b.options("FullyConnectedOptions", fusedActivationFunction=activation_code(lowering, kind),
                        keepNumDims=keep, asymmetricQuantizeInputs=hybrid)
    inputs = [source, weights, bias_index]
    b.operator("FULLY_CONNECTED", inputs, [out], options,
               lowering.version("FULLY_CONNECTED", inputs, keep_num_dims=keep, asymmetric_quantize_inputs=hybrid))
