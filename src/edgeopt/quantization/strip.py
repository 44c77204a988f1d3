"""A QDQ model edgeopt wrote back to the float graph its plan was applied to: the pass that lets
``quantize(qdq_model, Int8Config())`` rebuild a model from its own QuantizeLinear/DequantizeLinear
(edgeopt's int8 models, and quantization-aware training exports, written by the same pass)
without calibration data.

Each activation's Q -> DQ pair goes, its two names becoming one: the float tensor's name, which
is the DequantizeLinear output's in edgeopt's models (a graph input keeps its own). Each dequantized
constant (int8 weight, int32 bias, constant operand) becomes a float initializer with its values.
Relu/Clip nodes a plan absorbed are not in a QDQ model: the stripped graph lacks them, and the
plan read from the model is applied to it without absorbing (the quantized range clamps as they
did). Edits the model in place.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import EdgeoptError
from .graph import GraphView, remove_dead_nodes
from .numerics import dequantize
from .plan import METADATA_KEY
from .read_plan import _constants, _metadata, _params


def strip_qdq(model: onnx.ModelProto) -> None:
    """Remove every QuantizeLinear/DequantizeLinear of ``model`` (see the module docstring)."""
    view = GraphView(model)
    if not _metadata(model):
        raise EdgeoptError("the QDQ model has no edgeopt.plan metadata; expected a model edgeopt wrote")
    if any(node.op_type == "DequantizeLinear" and node.input[0] in view.graph_inputs for node in model.graph.node):
        raise EdgeoptError("the model takes integer inputs (integer-only); expected a QDQ model with float inputs")
    constants = _constants(view)
    renames: dict[str, str] = {}
    dropped: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in constants:
            renames[node.output[0]] = view.add_initializer(f"{node.output[0]}_float", _dequantized(node, constants))
            dropped.add(node.name)
        elif node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            readers = view.consumers.get(node.output[0], [])
            if len(readers) != 1 or readers[0].op_type != "DequantizeLinear":
                raise EdgeoptError(f"QuantizeLinear {node.name!r} is not followed by one DequantizeLinear; expected "
                                   "a QDQ model (integer inputs or outputs cannot be rebuilt)")
            source, dequantized = node.input[0], readers[0].output[0]
            kept = source if source in view.graph_inputs else dequantized
            for name in (source, dequantized):
                if name != kept:
                    renames[name] = kept
            dropped.update({node.name, readers[0].name})
    kept_nodes = [node for node in model.graph.node if node.name not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept_nodes)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    remove_dead_nodes(model.graph)
    GraphView(model).remove_unused_initializers()
    others = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(others)


def _dequantized(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    values = np.asarray(constants[node.input[0]])
    return dequantize(values, _params(node, constants, values.dtype))
