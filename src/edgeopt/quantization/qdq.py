"""The pass that applies a :class:`QuantizationPlan` as QuantizeLinear/DequantizeLinear pairs.

The result is the QDQ form ONNX Runtime fuses into integer kernels (QLinearConv, QGemm,
QLinearMatMul, QLinearAdd, ...): every quantized activation gets one Q->DQ pair right after its
producer, every quantized weight is stored as integers behind a DequantizeLinear.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph import GraphView, ensure_opset, topological_sort
from .numerics import QuantParams
from .operators import FLOAT_WEIGHT_READERS
from .plan import METADATA_KEY, QuantizationPlan

MICROSOFT = "com.microsoft"


def _qdq_domain(dtype: str) -> str:
    # 16-bit QuantizeLinear is standard only from opset 21; ONNX Runtime's contrib ops take it at any opset.
    return MICROSOFT if dtype in ("int16", "uint16") else ""


def _add_params(view: GraphView, base: str, params: QuantParams, with_zero_point: bool = True) -> list[str]:
    scale = view.add_initializer(f"{base}_s", np.asarray(params.scale, dtype=np.float32))
    if not with_zero_point:
        return [scale]
    zero_point = view.add_initializer(f"{base}_z", np.asarray(params.zero_point, dtype=params.dtype))
    return [scale, zero_point]


def _dequantize_node(view: GraphView, base: str, quantized: str, params: QuantParams, output: str,
                     with_zero_point: bool = True) -> onnx.NodeProto:
    attributes = {"axis": params.axis} if params.axis is not None and np.ndim(params.scale) == 1 else {}
    return view.make_node("DequantizeLinear", [quantized] + _add_params(view, base, params, with_zero_point),
                          [output], f"{base}_DQ", domain=_qdq_domain(params.dtype), **attributes)


def apply_plan(model: onnx.ModelProto, plan: QuantizationPlan, float_readers_read_float: bool = True) -> None:
    """Edit ``model`` in place; the plan's own record (absorbed activations, reasons for float
    tensors) goes into ``metadata_props`` so that :func:`.read_plan.read_plan` can return it.

    ``float_readers_read_float=False`` (integer-only models, whose inputs become integers) leaves
    float Conv/Gemm readers on the DequantizeLinear output.
    """
    _remove_absorbed(model, plan)
    view = GraphView(model)
    nodes = {node.name: node for node in model.graph.node}
    new_nodes: list[onnx.NodeProto] = []
    scale_names = _insert_activation_pairs(view, plan, float_readers_read_float, new_nodes)
    weight_scales = _insert_constants(view, nodes, plan, new_nodes)
    _insert_biases(view, nodes, plan, scale_names, weight_scales, new_nodes)
    model.graph.node.extend(new_nodes)
    if any(_qdq_domain(p.dtype) for p in plan.activations.values()):
        ensure_opset(model, MICROSOFT)
    topological_sort(model.graph)
    GraphView(model).remove_unused_initializers()
    record_plan(model, plan)


def _remove_absorbed(model: onnx.ModelProto, plan: QuantizationPlan) -> None:
    """Activations absorbed by the quantized range of their producer disappear."""
    nodes = {node.name: node for node in model.graph.node}
    for activation_name, producer_name in plan.absorbed.items():
        nodes[producer_name].output[0] = nodes[activation_name].output[0]
    kept = [node for node in model.graph.node if node.name not in plan.absorbed]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _insert_activation_pairs(view: GraphView, plan: QuantizationPlan, float_readers_read_float: bool,
                             new_nodes: list) -> dict[str, str]:
    """One Q->DQ pair per activation tensor; returns tensor (or its DQ alias) -> scale name.

    A Conv/ConvTranspose/Gemm that stays float reads the float tensor, not the DQ output: ONNX
    Runtime would otherwise quantize its float weight itself (per tensor, at load), and the node
    the user or the fallback kept float would not be. The pair stays even when only such nodes
    read the tensor: without it ONNX Runtime moves the DequantizeLinear of the tensor's producer
    past order-preserving operators (MaxPool, Reshape, ...) and reaches the float node anyway.
    Generated names are short (a<n>, w<n>, b<n>): on MobileNetV2 names of the form
    "<tensor>_quantized" were 3% of the file.
    """
    quantized_nodes = set(plan.nodes)
    scale_names: dict[str, str] = {}
    for number, (name, params) in enumerate(plan.activations.items()):
        base = f"a{number}"
        readers = view.consumers.get(name, [])
        float_readers = [node for node in readers if float_readers_read_float and node.name not in quantized_nodes
                         and node.op_type in FLOAT_WEIGHT_READERS and node.input[0] == name
                         and len(node.input) > 1 and view.is_constant(node.input[1])]
        quantized = view.unique(f"{base}_q")
        if name in view.graph_inputs:
            source, dequantized = name, view.unique(f"{base}_dq")
            for consumer in readers:
                if consumer not in float_readers:
                    _rename_inputs(consumer, name, dequantized)
        else:
            producer = view.producer[name]
            source, dequantized = view.unique(f"{base}_f"), name
            for i, value in enumerate(producer.output):
                if value == name:
                    producer.output[i] = source
            for consumer in float_readers:
                consumer.input[0] = source
        scale_zero = _add_params(view, base, params)
        scale_names[name] = scale_names[dequantized] = scale_zero[0]
        domain = _qdq_domain(params.dtype)
        new_nodes.append(view.make_node("QuantizeLinear", [source] + scale_zero, [quantized], f"{base}_Q",
                                        domain=domain))
        new_nodes.append(view.make_node("DequantizeLinear", [quantized] + scale_zero, [dequantized],
                                        f"{base}_DQ", domain=domain))
    return scale_names


def _rename_inputs(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, value in enumerate(node.input):
        if value == old:
            node.input[i] = new


def _insert_constants(view: GraphView, nodes: dict, plan: QuantizationPlan, new_nodes: list) -> dict[str, str]:
    """Weights (int8) and constant operands behind DequantizeLinear, one stored tensor for readers
    with the same integers and parameters; returns DQ output -> its scale's name."""
    stored: dict[tuple, str] = {}
    weight_scales: dict[str, str] = {}
    for table, kind in ((plan.weights, "weight"), (plan.constants, "constant")):
        for (node_name, index), entry in table.items():
            node = nodes[node_name]
            key = (kind, node.input[index], entry.params.dtype, entry.params.axis,
                   np.asarray(entry.params.scale).tobytes(), np.asarray(entry.params.zero_point).tobytes(),
                   entry.values.tobytes())
            if key not in stored:
                base = f"{kind[0]}{len(stored)}"
                quantized = view.add_initializer(f"{base}_q", entry.values)
                # ONNX Runtime fuses a Conv whose weight has no zero point (smaller file); Gemm needs it.
                with_zero_point = not (kind == "weight" and node.op_type == "Conv")
                output = view.unique(f"{base}_dq")
                dequantize_node = _dequantize_node(view, base, quantized, entry.params, output, with_zero_point)
                new_nodes.append(dequantize_node)
                stored[key] = output
                weight_scales[output] = dequantize_node.input[1]
            node.input[index] = stored[key]
    return weight_scales


def _insert_biases(view: GraphView, nodes: dict, plan: QuantizationPlan, scale_names: dict,
                   weight_scales: dict, new_nodes: list) -> None:
    """int32 biases whose scale is input scale x weight scale, computed at load by a Mul (which
    ONNX Runtime folds) instead of being stored a second time."""
    for number, ((node_name, index), entry) in enumerate(plan.biases.items()):
        node = nodes[node_name]
        base = f"b{number}"
        quantized = view.add_initializer(f"{base}_q", entry.values)
        scale = view.unique(f"{base}_s")
        new_nodes.append(view.make_node("Mul", [scale_names[node.input[0]], weight_scales[node.input[1]]],
                                        [scale], f"{base}_Mul"))
        output = view.unique(f"{base}_dq")
        attributes = {"axis": 0} if np.ndim(entry.params.scale) == 1 else {}
        new_nodes.append(view.make_node("DequantizeLinear", [quantized, scale], [output], f"{base}_DQ",
                                        **attributes))
        node.input[index] = output


def record_plan(model: onnx.ModelProto, plan: QuantizationPlan) -> None:
    """Store (or replace) what the graph cannot show of ``plan`` in the model's metadata."""
    entry = next((e for e in model.metadata_props if e.key == METADATA_KEY), None)
    if entry is None:
        entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, plan.metadata()
