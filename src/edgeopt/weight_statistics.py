"""What pruning and clustering change in a model's weights, read from the file: the share of
zero weights and the distinct values per output channel, over every Conv, ConvTranspose, Gemm and
MatMul (and their integer forms) with a constant weight, counted on the values stored: float ones,
or the integers or float16 values behind the DequantizeLinear, Cast or scale Mul that widens them.
Reads; edits nothing.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .quantization.graph import GraphView
from .quantization.operators import rule_for

#: operator -> input holding its weight
WEIGHT_INPUTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "MatMulInteger": 1, "ConvInteger": 1,
                 "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1}
#: operators that only widen a stored weight (their first input is the stored one)
WIDENING = ("DequantizeLinear", "Cast", "Mul")


def _output_axis(node: onnx.NodeProto, view: GraphView, rank: int) -> int:
    """The weight's output-channel axis: the per-channel axis the operator rules give it, else
    (integer forms, a grouped ConvTranspose, a weight behind a DequantizeLinear) axis 0 of a
    convolution, axis 1 of a ConvTranspose, the last of a MatMul."""
    rule = rule_for(node)
    axis = rule.weights[1](node, view) if rule is not None and 1 in rule.weights else None
    if axis is not None:
        return axis % rank
    if node.op_type == "ConvTranspose":
        return 1
    return 0 if node.op_type in ("Conv", "ConvInteger") else rank - 1


def _stored(view: GraphView, name: str, constants: dict) -> str | None:
    """The initializer a weight is stored in, through the nodes that widen it."""
    for _ in range(4):
        if name in constants:
            return name
        producer = view.producer.get(name)
        if producer is None or producer.op_type not in WIDENING or \
                (producer.op_type == "Mul" and not view.is_constant(producer.input[1])):
            return None
        name = producer.input[0]
    return None


def weight_statistics(model: onnx.ModelProto) -> dict:
    """``layers``, ``weights`` (count), ``sparsity`` (share of exact zeros) and
    ``distinct_per_channel_max`` / ``_mean`` (distinct stored values in an output channel)."""
    view = GraphView(model)
    constants = {init.name: init for init in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    zeros = total = layers = 0
    distinct = []
    for node in model.graph.node:
        index = WEIGHT_INPUTS.get(node.op_type)
        stored = None if index is None or len(node.input) <= index else _stored(view, node.input[index], constants)
        if stored is None:
            continue
        if stored not in arrays:
            arrays[stored] = numpy_helper.to_array(constants[stored])
        values = arrays[stored]
        if values.ndim < 2:
            continue
        layers += 1
        zeros += int(np.count_nonzero(values == 0))
        total += values.size
        axis = _output_axis(node, view, values.ndim)
        channels = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        distinct.extend(len(np.unique(row)) for row in channels)
    if not layers:
        return {"layers": 0, "weights": 0, "sparsity": None, "distinct_per_channel_max": None,
                "distinct_per_channel_mean": None}
    return {"layers": layers, "weights": total, "sparsity": zeros / total,
            "distinct_per_channel_max": int(max(distinct)), "distinct_per_channel_mean": float(np.mean(distinct))}
