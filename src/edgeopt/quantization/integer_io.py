"""Integer-only models: integer inputs and outputs, and proof that no float operator is left."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

from ..errors import EdgeoptError
from .graph import GraphView, topological_sort
from .operators import NON_COMPUTE
from .plan import QuantizationPlan

METADATA_PREFIX = "edgeopt.io."


def make_integer_io(model: onnx.ModelProto, plan: QuantizationPlan) -> dict[str, dict]:
    """Drop the Q after each float graph input and the DQ before each graph output.

    The scales and zero points the caller needs to encode inputs and decode outputs are returned
    and stored in the model's metadata (``edgeopt.io.<name>`` = JSON).
    """
    view = GraphView(model)
    io_params: dict[str, dict] = {}
    removed = _integer_inputs(model, view, plan, io_params) | _integer_outputs(model, view, plan, io_params)
    kept = [node for node in model.graph.node if node.name not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    topological_sort(model.graph)
    for name, params in io_params.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + name, json.dumps(params)
    check_no_float_operators(model)
    return io_params


def _integer_inputs(model, view: GraphView, plan: QuantizationPlan, io_params: dict) -> set[str]:
    """Float inputs become integers; returns the QuantizeLinear nodes that go."""
    removed = set()
    for value in model.graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            continue
        if value.name not in plan.activations:
            raise EdgeoptError(f"integer-only: model input {value.name!r} feeds operators that cannot be "
                               f"quantized ({_consumer_ops(view, value.name)})")
        params = plan.activations[value.name]
        quantize_node = next(n for n in view.consumers[value.name] if n.op_type == "QuantizeLinear")
        for consumer in view.consumers.get(quantize_node.output[0], []):
            for i, name in enumerate(consumer.input):
                if name == quantize_node.output[0]:
                    consumer.input[i] = value.name
        removed.add(quantize_node.name)
        value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(params.dtype))
        io_params[value.name] = {"role": "input", **params.to_dict()}
    return removed


def _integer_outputs(model, view: GraphView, plan: QuantizationPlan, io_params: dict) -> set[str]:
    """Float outputs become integers; returns the DequantizeLinear nodes that go."""
    removed = set()
    for value in model.graph.output:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            continue
        producer = view.producer.get(value.name)
        if producer is None or producer.op_type != "DequantizeLinear" or value.name not in plan.activations:
            op = producer.op_type if producer is not None else "no producer"
            raise EdgeoptError(f"integer-only: model output {value.name!r} comes from {op} "
                               f"({producer.name if producer is not None else ''}), which cannot be quantized")
        params = plan.activations[value.name]
        quantize_output = producer.input[0]
        internal = view.consumers.get(value.name, [])
        if internal:
            # Also read inside the graph: those readers keep a DequantizeLinear of their own.
            inner = view.unique(f"{value.name}_dequantized")
            producer.output[0] = inner
            for consumer in internal:
                for i, name in enumerate(consumer.input):
                    if name == value.name:
                        consumer.input[i] = inner
        else:
            removed.add(producer.name)
        quantize_node = view.producer[quantize_output]
        quantize_node.output[0] = value.name
        for consumer in view.consumers.get(quantize_output, []):
            for i, name in enumerate(consumer.input):
                if name == quantize_output:
                    consumer.input[i] = value.name
        value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(params.dtype))
        io_params[value.name] = {"role": "output", **params.to_dict()}
    return removed


def _consumer_ops(view: GraphView, name: str) -> str:
    consumers = view.consumers.get(name, [])
    if not consumers:
        return "it is read only inside If/Loop/Scan bodies"
    return ", ".join(f"{n.op_type} {n.name!r}" for n in consumers)


def check_no_float_operators(model: onnx.ModelProto) -> None:
    """Every compute node must read float only from DequantizeLinear and write float only to
    QuantizeLinear, so a runtime can run it on integers; otherwise name it."""
    view = GraphView(model)
    from .graph import tensor_dtypes

    dtypes = tensor_dtypes(model)
    constant = set(view.initializers)
    for node in model.graph.node:
        if node.input and all(not name or name in constant for name in node.input):
            constant.update(node.output)  # computed once at load (e.g. a bias scale)
            continue
        if node.op_type in NON_COMPUTE or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        float_inputs = [n for n in node.input if n and dtypes.get(n) == onnx.TensorProto.FLOAT]
        float_outputs = [n for n in node.output if n and dtypes.get(n) == onnx.TensorProto.FLOAT]
        bad_input = any((view.producer.get(n) is None and n not in view.initializers)
                        or (n in view.producer and view.producer[n].op_type != "DequantizeLinear")
                        for n in float_inputs)
        # Small float constants are parameters (Clip bounds, Resize scales), not data.
        bad_input |= any(n in view.initializers and int(np.prod(view.initializers[n].dims)) > 8
                         for n in float_inputs)
        bad_output = any(any(c.op_type != "QuantizeLinear" for c in view.consumers.get(n, [])) or n in view.graph_outputs
                         for n in float_outputs)
        if bad_input or bad_output:
            raise EdgeoptError(f"integer-only: operator {node.op_type} (node {node.name!r}) cannot run in integer "
                               "arithmetic; quantize without --integer-only or remove it from the model")


def read_io_params(model: onnx.ModelProto) -> dict[str, dict]:
    """The integer inputs' and outputs' scales an integer-only model stores (empty otherwise)."""
    return {entry.key[len(METADATA_PREFIX):]: json.loads(entry.value) for entry in model.metadata_props
            if entry.key.startswith(METADATA_PREFIX)}
