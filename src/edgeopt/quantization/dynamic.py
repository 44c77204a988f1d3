"""Dynamic-range quantization pass: int8 weights, activations quantized at run time.

MatMul and Gemm with a constant weight ``W = s_w * W_q`` (int8, per output column) run on
ONNX Runtime's integer kernel ``MatMulInteger``. The activation ``x`` is quantized when the model
runs, at one of two granularities:

``tensor``
    ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(s_x * s_w)``: one uint8 range for the
    whole tensor, the pattern ONNX Runtime fuses into ``DynamicQuantizeMatMul``.
``row``
    each row (the last axis: one token of one sample) gets its own range ``[lo, hi]``.
    ``q = round((x - lo) / s)`` with ``s = (hi - lo) / 255`` is uint8 with no zero point, so
    ``x @ W ~= s * s_w * (q @ W_q) + lo * (s_w * colsum(W_q))``; the second term is a rank-one
    correction whose column factor is a constant. Rows are independent, so a sample's result does
    not depend on what it is batched with, and one outlier token no longer coarsens the others.
    One quantization of an input is shared by every MatMul that reads it (query, key and value).

Convolutions are deliberately not converted to ConvInteger (many times slower than float on x86,
see the README); their weights are stored as int8 by :func:`.weights.store_int8` instead.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .graph import GraphView, attribute, opset_version, topological_sort
from .numerics import quantize, weight_params
from .operators import RULES
from .saturation import WEIGHT_LIMITS, fit_pairs, from_kernel_order, paired_params, to_kernel_order


def quantize_matmuls(model: onnx.ModelProto, per_channel: bool = True, min_elements: int = 256,
                     exclude: tuple[str, ...] = (), granularity: str = "row", weight_range: str = "safe"
                     ) -> list[str]:
    """Rewrite MatMul/Gemm nodes with a constant float weight; returns the rewritten node names.
    ``weight_range``: see :mod:`.saturation`."""
    view = GraphView(model)
    rewritten, replaced, new_nodes = [], set(), []
    quantized_rows: dict[str, tuple[str, str, str]] = {}
    axes_as_input = opset_version(model) >= 18  # ReduceMin/ReduceMax took axes as an attribute before
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
            continue
        if node.name in exclude or node.op_type in exclude:
            continue
        weight_name = node.input[1]
        weight = view.constant(weight_name)
        if weight is None or weight.dtype != np.float32 or weight.ndim != 2 or weight.size < min_elements:
            continue
        if view.is_constant(node.input[0]):
            continue
        bias = None
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
                continue
            if attribute(node, "transB", 0):
                weight = weight.T
            if len(node.input) > 2 and node.input[2]:
                if not view.is_constant(node.input[2]):
                    continue
                bias = node.input[2]
        weight_q, params = _weight_integers(weight, per_channel, weight_range)
        weight_q_name = view.add_initializer(f"{weight_name}_int8", weight_q)
        weight_scale = np.asarray(params.scale, dtype=np.float32)
        if granularity == "row":
            if node.input[0] not in quantized_rows:
                quantized_rows[node.input[0]] = _quantize_rows(view, node.input[0], new_nodes, axes_as_input)
            new_nodes += _row_matmul(view, node, quantized_rows[node.input[0]], weight_q, weight_q_name,
                                     weight_scale, bias)
        else:
            new_nodes += _tensor_matmul(view, node, weight_q_name, weight_scale, bias)
        replaced.add(node.name)
        rewritten.append(node.name)
    if replaced:
        kept = [node for node in model.graph.node if node.name not in replaced]
        del model.graph.node[:]
        model.graph.node.extend(kept + new_nodes)
        topological_sort(model.graph)
        GraphView(model).remove_unused_initializers()
    return rewritten


def _tensor_matmul(view: GraphView, node: onnx.NodeProto, weight_q: str, weight_scale: np.ndarray,
                   bias: str | None) -> list[onnx.NodeProto]:
    base = node.name
    weight_zero = view.add_initializer(f"{weight_q}_zero_point", np.zeros(weight_scale.shape, dtype=np.int8))
    scale_w = view.add_initializer(f"{weight_q}_scale", weight_scale)
    a_q, a_scale, a_zero, product, widened, scales, result = (view.unique(f"{base}_{s}") for s in (
        "input_quantized", "input_scale", "input_zero_point", "int32", "widened", "scales", "dequantized"))
    output = node.output[0]
    nodes = [
        view.make_node("DynamicQuantizeLinear", [node.input[0]], [a_q, a_scale, a_zero], f"{base}_quantize_input"),
        view.make_node("MatMulInteger", [a_q, weight_q, a_zero, weight_zero], [product], f"{base}_MatMulInteger"),
        view.make_node("Cast", [product], [widened], f"{base}_Cast", to=TensorProto.FLOAT),
        view.make_node("Mul", [a_scale, scale_w], [scales], f"{base}_scale_product"),
        view.make_node("Mul", [widened, scales], [output if bias is None else result], f"{base}_rescale"),
    ]
    if bias is not None:
        nodes.append(view.make_node("Add", [result, bias], [output], f"{base}_bias"))
    return nodes


def _quantize_rows(view: GraphView, x: str, nodes: list[onnx.NodeProto],
                   axes_as_input: bool) -> tuple[str, str, str]:
    """Nodes that quantize each row of ``x`` to uint8; returns (codes, row scale, row minimum)."""
    base = view.unique(f"{x}_rows")
    low, high, spread, raw_scale, scale, shifted, ratio, rounded, codes = (view.unique(f"{base}_{s}") for s in (
        "min", "max", "spread", "raw_scale", "scale", "shifted", "ratio", "rounded", "uint8"))
    step = view.add_initializer(f"{base}_step", np.float32(1.0 / 255.0))
    floor = view.add_initializer(f"{base}_floor", np.float32(1e-30))  # a constant row: codes 0, exact
    if axes_as_input:
        axes = {"inputs": [x, view.add_initializer(f"{base}_axes", np.array([-1], dtype=np.int64))]}
    else:
        axes = {"inputs": [x], "axes": [-1]}
    nodes += [
        view.make_node("ReduceMin", outputs=[low], name_hint=f"{base}_min", keepdims=1, **axes),
        view.make_node("ReduceMax", outputs=[high], name_hint=f"{base}_max", keepdims=1, **axes),
        view.make_node("Sub", [high, low], [spread], f"{base}_spread"),
        view.make_node("Mul", [spread, step], [raw_scale], f"{base}_step"),
        view.make_node("Max", [raw_scale, floor], [scale], f"{base}_floor"),
        view.make_node("Sub", [x, low], [shifted], f"{base}_shift"),
        view.make_node("Div", [shifted, scale], [ratio], f"{base}_divide"),
        view.make_node("Round", [ratio], [rounded], f"{base}_round"),
        view.make_node("Cast", [rounded], [codes], f"{base}_cast", to=TensorProto.UINT8),
    ]
    return codes, scale, low


def _row_matmul(view: GraphView, node: onnx.NodeProto, rows: tuple[str, str, str], weight_q: np.ndarray,
                weight_q_name: str, weight_scale: np.ndarray, bias: str | None) -> list[onnx.NodeProto]:
    codes, row_scale, row_low = rows
    base = node.name
    scale_w = view.add_initializer(f"{weight_q_name}_scale", weight_scale)
    column_sums = weight_q.astype(np.int64).sum(axis=0).astype(np.float32) * weight_scale
    correction_w = view.add_initializer(f"{weight_q_name}_column_sums", column_sums)
    product, widened, by_weight, by_row, correction, result = (view.unique(f"{base}_{s}") for s in (
        "int32", "widened", "weight_scaled", "row_scaled", "correction", "dequantized"))
    output = node.output[0]
    nodes = [
        view.make_node("MatMulInteger", [codes, weight_q_name], [product], f"{base}_MatMulInteger"),
        view.make_node("Cast", [product], [widened], f"{base}_Cast", to=TensorProto.FLOAT),
        view.make_node("Mul", [widened, scale_w], [by_weight], f"{base}_weight_scale"),
        view.make_node("Mul", [by_weight, row_scale], [by_row], f"{base}_row_scale"),
        view.make_node("Mul", [row_low, correction_w], [correction], f"{base}_correction"),
        view.make_node("Add", [by_row, correction], [output if bias is None else result], f"{base}_offset"),
    ]
    if bias is not None:
        nodes.append(view.make_node("Add", [result, bias], [output], f"{base}_bias"))
    return nodes


def _weight_integers(weight: np.ndarray, per_channel: bool, weight_range: str):
    """int8 integers and parameters for a [K, N] weight; ``"safe"`` limits the pairs of rows
    MatMulInteger's x86 kernels add in 16 bits (:mod:`.saturation`)."""
    axis = 1 if per_channel else None
    if weight_range != "safe":
        params = weight_params(weight, axis, qmax=WEIGHT_LIMITS[weight_range])
        return quantize(weight, params), params
    layout = RULES["MatMul"].accumulation(None, weight.ndim)  # MatMulInteger adds along K, as MatMul
    params = paired_params(to_kernel_order(weight, layout), axis)
    integers = fit_pairs(to_kernel_order(quantize(weight, params), layout))
    return from_kernel_order(integers, weight.shape, layout), params
