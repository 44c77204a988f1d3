"""Dynamic-range quantization pass: int8 weights, activations quantized at run time.

MatMul and Gemm with a constant weight become ``DynamicQuantizeLinear -> MatMulInteger -> Cast ->
Mul(scale_a * scale_w)`` (+ bias), the pattern ONNX Runtime fuses into one integer kernel
(``DynamicQuantizeMatMul``). Convolutions are deliberately not converted to ConvInteger (many
times slower than float on x86, see the README); their weights are stored as int8 by
:func:`.weights.store_int8` instead.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .graph import GraphView, attribute, topological_sort
from .numerics import quantize, weight_params


def quantize_matmuls(model: onnx.ModelProto, per_channel: bool = True, min_elements: int = 256,
                     exclude: tuple[str, ...] = ()) -> list[str]:
    """Rewrite MatMul/Gemm nodes with a constant float weight; returns the rewritten node names."""
    view = GraphView(model)
    rewritten, replaced, new_nodes = [], set(), []
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
        params = weight_params(weight, 1 if per_channel else None)
        base = node.name
        weight_q = view.add_initializer(f"{weight_name}_int8", quantize(weight, params))
        weight_zero = view.add_initializer(f"{weight_name}_zero_point",
                                           np.zeros(np.shape(params.scale), dtype=np.int8))
        weight_scale = view.add_initializer(f"{weight_name}_scale", np.asarray(params.scale, dtype=np.float32))
        a_q, a_scale, a_zero = (view.unique(f"{base}_{s}") for s in ("input_quantized", "input_scale",
                                                                        "input_zero_point"))
        product, widened, scales, result = (view.unique(f"{base}_{s}") for s in (
            "int32", "widened", "scales", "dequantized" if bias else "output"))
        output = node.output[0]
        new_nodes += [
            view.make_node("DynamicQuantizeLinear", [node.input[0]], [a_q, a_scale, a_zero], f"{base}_quantize_input"),
            view.make_node("MatMulInteger", [a_q, weight_q, a_zero, weight_zero], [product], f"{base}_MatMulInteger"),
            view.make_node("Cast", [product], [widened], f"{base}_Cast", to=TensorProto.FLOAT),
            view.make_node("Mul", [a_scale, weight_scale], [scales], f"{base}_scales"),
            view.make_node("Mul", [widened, scales], [output if bias is None else result], f"{base}_rescale"),
        ]
        if bias is not None:
            new_nodes.append(view.make_node("Add", [result, bias], [output], f"{base}_bias"))
        replaced.add(node.name)
        rewritten.append(node.name)
    if replaced:
        kept = [node for node in model.graph.node if node.name not in replaced]
        del model.graph.node[:]
        model.graph.node.extend(kept + new_nodes)
        topological_sort(model.graph)
        GraphView(model).remove_unused_initializers()
    return rewritten
