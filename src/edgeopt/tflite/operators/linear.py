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
    weight = lowering.weight(weight_name, node).astype(np.float64) * attribute(node, "alpha", 1.0)
    weight = weight if attribute(node, "transB", 0) else weight.T  # [N, K]
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = None
    if bias_name:
        if not lowering.is_constant(bias_name) or lowering.constant(bias_name).size not in (1, weight.shape[0]):
            raise EdgeoptError(f"Gemm {node.name!r}: the TFLite writer needs C to be a constant of N or 1 values")
        bias = np.broadcast_to(lowering.constant(bias_name).reshape(-1) * attribute(node, "beta", 1.0), weight.shape[0])
    _fully_connected(lowering, node, lowering.value(a, lowering.ordered_layout(a)), weight, bias, keep=False)


@converter("MatMul")
def matmul(lowering, node) -> None:
    a, b_name = node.input
    if lowering.is_constant(b_name) or lowering.weight_source(b_name) is not None:
        weight = lowering.weight(b_name, node)
        if weight.ndim == 2:
            keep = lowering.rank(a) > 2
            _fully_connected(lowering, node, lowering.value(a, lowering.ordered_layout(a)), weight.T, None, keep=keep)
            return
    b = lowering.builder
    sources = [lowering.value(name, lowering.ordered_layout(name)) for name in node.input]
    out = lowering.output(node.output[0])
    b.operator("BATCH_MATMUL", sources, [out], b.options("BatchMatMulOptions"), lowering.version("BATCH_MATMUL", sources))


def _fully_connected(lowering, node, source, weight: np.ndarray, bias, keep: bool) -> None:
    """FULLY_CONNECTED of ``source`` [..., K] with ``weight`` [N, K] (and ``bias`` [N] or None)."""
    b = lowering.builder
    weights = lowering.weight_tensor(node.input[1], weight, 0)
    bias_index = lowering.bias(node, weight.shape[0], values=bias)
    kind, output = fuse_activation(lowering, node.output[0])
    out = lowering.output(output)
    options = b.options("FullyConnectedOptions", fusedActivationFunction=activation_code(lowering, kind), keepNumDims=keep)
    inputs = [source, weights, bias_index]
    b.operator("FULLY_CONNECTED", inputs, [out], options, lowering.version("FULLY_CONNECTED", inputs, keep_num_dims=keep))
