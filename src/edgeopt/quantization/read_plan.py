"""Recover a :class:`QuantizationPlan` from a QDQ model: edgeopt's own, or one a training framework
exported with QuantizeLinear/DequantizeLinear. Reads; edits nothing.

Naming: in edgeopt's models (they carry ``edgeopt.plan`` metadata) an activation is named by the
output of its DequantizeLinear, which is the float model's own tensor name; in other tools'
models by the input of its QuantizeLinear, the float tensor (onnxruntime's quantizer names the
DequantizeLinear output ``<tensor>_DequantizeLinear_Output``). A graph input keeps its name, an
output of an integer-only model the output's. Constants are keyed by the ``(node, input index)``
that reads them. The quantized nodes come from the metadata where it is, else from the graph.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgeoptError
from .graph import GraphView, attribute
from .numerics import QuantParams
from .operators import rule_for
from .plan import METADATA_KEY, QuantizationPlan, QuantizedConstant, parse_key
from .select import MATMUL_INPUT_OPS

QDQ = ("QuantizeLinear", "DequantizeLinear")


def read_plan(model: onnx.ModelProto) -> QuantizationPlan:
    """The plan ``model``'s QuantizeLinear/DequantizeLinear nodes and metadata describe."""
    view = GraphView(model)
    constants = _constants(view)
    recorded = _metadata(model)
    activations = _activations(view, constants, by_dequantized=bool(recorded))
    dtypes = Counter(params.dtype for params in activations.values())
    plan = QuantizationPlan(dtypes.most_common(1)[0][0] if dtypes else "uint8")
    plan.activations = activations
    _read_constants(view, constants, plan)
    plan.absorbed = recorded.get("absorbed", {})
    plan.integer_only = bool(recorded.get("integer_only", _integer_inputs(view)))
    plan.kept_float = recorded.get("kept_float", {})
    plan.float_weight_nodes = list(recorded.get("float_weight_nodes", []))
    plan.corrected_biases = {parse_key(k) for k in recorded.get("corrected_biases", [])}
    plan.compensated_weights = {parse_key(k) for k in recorded.get("compensated_weights", [])}
    plan.nodes = list(recorded["nodes"]) if "nodes" in recorded else _quantized_nodes(view, plan)
    return plan


def _constants(view: GraphView) -> dict[str, np.ndarray]:
    """Initializers, Constant nodes and products of two constants (edgeopt's bias scales)."""
    values = {name: numpy_helper.to_array(init) for name, init in view.initializers.items()}
    for node in view.graph.node:
        if node.op_type == "Constant" and node.output and attribute(node, "value") is not None:
            values[node.output[0]] = numpy_helper.to_array(attribute(node, "value"))
        elif node.op_type == "Mul" and len(node.input) == 2 and all(i in values for i in node.input):
            values[node.output[0]] = (values[node.input[0]] * values[node.input[1]]).astype(np.float32)
    return values


def _params(node: onnx.NodeProto, constants: dict, dtype: np.dtype) -> QuantParams:
    if node.input[1] not in constants:
        raise EdgeoptError(f"{node.op_type} {node.name!r}: its scale {node.input[1]!r} is not a constant; "
                           "expected a QDQ model with constant scales")
    scale = np.asarray(constants[node.input[1]], dtype=np.float32)
    if len(node.input) > 2 and node.input[2]:
        zero_point = np.asarray(constants[node.input[2]])
    else:
        zero_point = np.zeros(scale.shape, dtype=dtype)
    axis = attribute(node, "axis", 1) if scale.ndim == 1 else None
    return QuantParams(scale, zero_point, np.dtype(zero_point.dtype).name, axis)


def _activations(view: GraphView, constants: dict, by_dequantized: bool) -> dict[str, QuantParams]:
    found: dict[str, QuantParams] = {}
    for node in view.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            readers = [n for n in view.consumers.get(node.output[0], []) if n.op_type == "DequantizeLinear"]
            if node.input[0] in view.graph_inputs or not by_dequantized:
                name = node.input[0]
            elif node.output[0] in view.graph_outputs or not readers:
                name = node.output[0]
            else:
                name = readers[0].output[0]
            found[name] = _params(node, constants, np.dtype(np.uint8))
        elif node.op_type == "DequantizeLinear" and node.input[0] in view.graph_inputs:
            found[node.input[0]] = _params(node, constants, np.dtype(np.uint8))  # integer-only input
    return found


def _read_constants(view: GraphView, constants: dict, plan: QuantizationPlan) -> None:
    """Weights, biases and constant operands: DequantizeLinear of an integer constant."""
    for node in view.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in constants:
            continue
        values = np.asarray(constants[node.input[0]])
        entry = QuantizedConstant(_params(node, constants, values.dtype), values)
        for reader in view.consumers.get(node.output[0], []):
            rule = rule_for(reader)
            for index, name in enumerate(reader.input):
                if name != node.output[0]:
                    continue
                key = (reader.name, index)
                if rule is not None and index == rule.bias:
                    plan.biases[key] = entry
                elif rule is not None and index in rule.weights:
                    plan.weights[key] = entry
                else:
                    plan.constants[key] = entry


def _quantized_nodes(view: GraphView, plan: QuantizationPlan) -> list[str]:
    """Nodes with an integer kernel whose float inputs all come from DequantizeLinear and whose outputs are quantized
    (or, for MatMul/Gemm with a quantized weight, stay float: ONNX Runtime's MatMulIntegerToFloat)."""
    dequantized = {node.output[0] for node in view.graph.node if node.op_type == "DequantizeLinear"}
    dequantized |= {name for name in plan.activations if name in view.graph_inputs}
    # Operators without a fast x86 integer kernel (Softmax, Tanh, ...) run float between quantized
    # tensors unless the whole model is integer.
    integer_only = _integer_inputs(view)
    nodes = []
    for node in view.graph.node:
        rule = rule_for(node)
        if rule is None or node.op_type in QDQ or not (rule.default or integer_only):
            continue
        indices = [i for i in set(rule.activations) | set(rule.weights) if i < len(node.input) and node.input[i]]
        if not indices or not all(node.input[i] in dequantized for i in indices):
            continue
        outputs = [name for name in node.output if name]
        quantized_outputs = all(name in plan.activations or _feeds_quantize(view, name) for name in outputs)
        inputs_only = node.op_type in MATMUL_INPUT_OPS and (node.name, 1) in plan.weights
        if quantized_outputs or inputs_only:
            nodes.append(node.name)
    return nodes


def _integer_inputs(view: GraphView) -> bool:
    """Whether graph inputs feed DequantizeLinear directly (an integer-only model's integer inputs)."""
    return any(node.op_type == "DequantizeLinear" and node.input[0] in view.graph_inputs for node in view.graph.node)


def _feeds_quantize(view: GraphView, name: str) -> bool:
    return any(reader.op_type == "QuantizeLinear" for reader in view.consumers.get(name, []))


def _metadata(model: onnx.ModelProto) -> dict:
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            try:
                return json.loads(entry.value)
            except ValueError:
                return {}
    return {}


def check_plan_fits(model: onnx.ModelProto, plan: QuantizationPlan) -> None:
    """Raise a one-line error when ``plan`` names a node, tensor or constant the model lacks."""
    view = GraphView(model)
    nodes = {node.name: node for node in model.graph.node}
    missing = [name for name in list(plan.nodes) + list(plan.absorbed) if name not in nodes]
    if missing:
        raise EdgeoptError(f"the plan names nodes the model does not have ({missing[:3]}); expected the float "
                           "model the plan was made for")
    tensors = set(view.producer) | view.graph_inputs
    missing = [name for name in plan.activations if name not in tensors]
    if missing:
        raise EdgeoptError(f"the plan quantizes tensors the model does not have ({missing[:3]}); expected the float "
                           "model the plan was made for")
    for table in (plan.weights, plan.biases, plan.constants):
        for (node_name, index), entry in table.items():
            node = nodes.get(node_name)
            source = node.input[index] if node is not None and index < len(node.input) else None
            if source is None or not view.is_constant(source) or \
                    tuple(view.initializers[source].dims) != entry.values.shape:
                raise EdgeoptError(f"the plan's constant for input {index} of node {node_name!r} does not fit the "
                                   f"model (expected a constant of shape {entry.values.shape})")
    for (node_name, index), entry in plan.biases.items():
        activation = plan.activations.get(nodes[node_name].input[0])
        weight = plan.weights.get((node_name, 1))
        expected = None if activation is None or weight is None else \
            np.asarray(activation.scale, np.float32) * np.asarray(weight.params.scale, np.float32)
        if expected is None or not np.array_equal(np.asarray(entry.params.scale, np.float32).reshape(-1),
                                                  np.asarray(expected, np.float32).reshape(-1)):
            raise EdgeoptError(f"the plan's int32 bias of node {node_name!r} needs its input quantized, its weight "
                               "quantized and a scale of input scale x weight scale; expected a consistent plan")
