"""Gemm and MatMul: FULLY_CONNECTED when the weights are constant, BATCH_MATMUL otherwise."""

from __future__ import annotations

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
                             lambda w: w.T, 1, keep=keep)
            return
    b = lowering.builder
    sources = [lowering.value(name, lowering.ordered_layout(name)) for name in node.input]
    out = lowering.output(node.output[0])
    b.operator("BATCH_MATMUL", sources, [out], b.options("BatchMatMulOptions"), lowering.version("BATCH_MATMUL", sources))


def _fully_connected(lowering, node, source, channels: int, transform, onnx_axis: int, keep: bool,
                     alpha: float = 1.0, beta: float = 1.0) -> None:
    """FULLY_CONNECTED of ``source`` [..., K] with ``node``'s weights made [N, K] by ``transform``."""
    b = lowering.builder
    weights = lowering.weight_tensor(node, 1, transform, 0, scale=alpha, onnx_axis=onnx_axis)
    bias_index = lowering.bias(node, channels, source, weights, scale=beta)
    kind, output = fuse_activation(lowering, node.output[0])
    out = lowering.output(output)
    options = b.options("FullyConnectedOptions", fusedActivationFunction=activation_code(lowering, kind), keepNumDims=keep)
    inputs = [source, weights, bias_index]
    b.operator("FULLY_CONNECTED", inputs, [out], options, lowering.version("FULLY_CONNECTED", inputs, keep_num_dims=keep))
