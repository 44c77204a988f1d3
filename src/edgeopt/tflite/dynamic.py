"""edgeopt's dynamic-range ONNX models read back as a float graph with int8 weights.

TFLite's dynamic range is a float graph whose FULLY_CONNECTED / CONV_2D weights are int8: the
kernels quantize each input row at run time (``asymmetric_quantize_inputs``), as edgeopt's
``row`` granularity does. edgeopt's dynamic ONNX spells that out in ONNX operators
(:mod:`edgeopt.quantization.dynamic`): weights stored as ``Cast(int8) * scale``, and MatMul/Gemm
rewritten into a row quantization, ``MatMulInteger`` and a rescaling chain. This pass puts each
rewritten MatMul back as ``MatMul(x, W)`` and returns the int8 integers of every stored weight, so
the lowering writes them as int8.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import EdgeoptError
from ..quantization.graph import GraphView, remove_dead_nodes, topological_sort

#: the rescaling chain quantization.dynamic writes after MatMulInteger, by node-name suffix
_CHAIN = ("_Cast", "_weight_scale", "_row_scale", "_correction", "_offset", "_bias", "_quantize_input",
          "_scale_product", "_rescale")


def is_dynamic(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "MatMulInteger" for node in model.graph.node) or bool(_stored_weights(GraphView(model)))


def int8_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Edit ``model`` in place (MatMulInteger chains back to MatMul); returns float weight name ->
    (int8 integers, scale broadcastable to them)."""
    view = GraphView(model)
    weights = _stored_weights(view)
    removed: set[str] = set()
    added = []
    for node in list(model.graph.node):
        if node.op_type != "MatMulInteger" or not node.name.endswith("_MatMulInteger"):
            continue
        base = node.name[: -len("_MatMulInteger")]
        chain = [n for n in model.graph.node if n.name.startswith(base + "_") and
                 any(n.name[len(base):].startswith(s) for s in _CHAIN)]
        source = _float_input(view, node.input[0])
        integers = view.constant(node.input[1])
        scale = view.constant(f"{node.input[1]}_scale")
        if source is None or integers is None or scale is None:
            raise EdgeoptError(f"MatMulInteger {node.name!r} is not one edgeopt's dynamic mode wrote; the TFLite "
                               "writer reads edgeopt's dynamic-range models")
        final = next((n for n in chain if n.name[len(base):].startswith("_bias")), None)
        last = final or next(n for n in chain if n.name[len(base):].startswith(("_offset", "_rescale")))
        float_name = view.add_initializer(f"{node.input[1]}_float", (integers.astype(np.float32) * scale))
        weights[float_name] = (integers, np.asarray(scale, np.float32))
        product = view.unique(f"{base}_product") if final is not None else last.output[0]
        added.append(view.make_node("MatMul", [source, float_name], [product], f"{base}_matmul"))
        if final is not None:
            added.append(view.make_node("Add", [product, final.input[1]], [final.output[0]], f"{base}_add_bias"))
        removed |= {node.name} | {n.name for n in chain}
    if removed:
        kept = [n for n in model.graph.node if n.name not in removed]
        del model.graph.node[:]
        model.graph.node.extend(kept + added)
        remove_dead_nodes(model.graph)
        topological_sort(model.graph)
        GraphView(model).remove_unused_initializers()
    return weights


def _stored_weights(view: GraphView) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``Cast(int8 constant) -> Mul(scale)``: weight storage of convolutions and other nodes."""
    found = {}
    for node in view.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        cast = view.producer.get(node.input[0])
        if cast is None or cast.op_type != "Cast" or not view.is_constant(cast.input[0]):
            continue
        integers, scale = view.constant(cast.input[0]), view.constant(node.input[1])
        if integers.dtype == np.int8 and scale is not None:
            found[node.output[0]] = (integers, np.asarray(scale, np.float32))
    return found


def _float_input(view: GraphView, codes: str) -> str | None:
    """The float tensor a MatMulInteger's uint8 input quantizes (row or tensor granularity)."""
    producer = view.producer.get(codes)
    if producer is not None and producer.op_type == "DynamicQuantizeLinear":
        return producer.input[0]
    for expected in ("Cast", "Round", "Div", "Sub"):
        if producer is None or producer.op_type != expected:
            return None
        if expected == "Sub":
            return producer.input[0]
        producer = view.producer.get(producer.input[0])
    return None

