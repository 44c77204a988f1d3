"""Graph preparation before quantization. Each pass edits the model and returns whether it changed.

* :func:`upgrade_opset` – per-channel QuantizeLinear needs opset 13.
* :func:`name_dynamic_dimensions` – ``dim_value`` -1 or 0 become symbolic dimensions.
* :func:`lift_constants` – weights held in Constant nodes become initializers (and get quantized).
* :func:`fold_constants` – subgraphs computed only from constants are evaluated once.
* :func:`fold_batch_norm` – BatchNormalization after Conv/ConvTranspose merges into its weights.
* :mod:`.fusions` – constant Mul/Add after a Conv fold into it; decomposed hard-swish fuses.
* :func:`strip_node_metadata` – exporter provenance on every node (PyTorch's dynamo exporter
  writes stack traces and module paths) goes; it can weigh as much as the weights.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgeoptError
from .fusions import fold_affine_into_conv, fuse_hard_swish
from .graph import GraphView, attribute, opset_version, topological_sort

logger = logging.getLogger(__name__)

MIN_OPSET = 13
# Constant folding never materialises tensors larger than this (bytes), so that e.g. an
# Expand or Tile of a small constant does not bloat the file.
FOLD_LIMIT_BYTES = 1 << 22
_NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
               "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"}


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run every preparation pass; returns the same (edited) model."""
    upgrade_opset(model)
    name_dynamic_dimensions(model)
    strip_node_metadata(model)
    lift_constants(model)
    remove_initializer_inputs(model)
    fold_constants(model)
    fold_batch_norm(model)
    name_nodes(model)  # the fusions and plans refer to nodes by name
    fold_affine_into_conv(model)
    fuse_hard_swish(model)
    name_nodes(model)
    return model


def upgrade_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET,
                  reason: str = "needed for per-channel quantization") -> bool:
    version = opset_version(model)
    if version >= minimum:
        return False
    try:
        upgraded = onnx.version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise EdgeoptError(f"cannot convert the model from opset {version} to {minimum} "
                           f"({reason}): {str(exc).splitlines()[0][:160]}") from None
    model.CopyFrom(upgraded)
    logger.info("converted opset %d to %d", version, minimum)
    return True


def name_dynamic_dimensions(model: onnx.ModelProto) -> bool:
    """Give dimensions declared as ``dim_value`` -1 or 0 (Paddle2ONNX, old TensorFlow exporters
    write them for "any size") a symbolic name: ONNX Runtime takes -1 as dynamic but 0 literally."""
    changed = False
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    for value in values:
        if not value.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.dim_param = f"{value.name}_dim{axis}"
                changed = True
    return changed


def strip_node_metadata(model: onnx.ModelProto) -> bool:
    """Drop per-node ``metadata_props`` and ``doc_string`` (debug information, not semantics)."""
    changed = False
    for graph in [model.graph, *_bodies(model.graph)]:
        for node in graph.node:
            if len(node.metadata_props) or node.doc_string:
                node.ClearField("metadata_props")
                node.ClearField("doc_string")
                changed = True
    return changed


def lift_constants(model: onnx.ModelProto) -> bool:
    """Turn ``Constant`` nodes holding tensors into initializers (main graph and control-flow bodies)."""
    changed = _lift_constants(model.graph)
    for graph in _bodies(model.graph):
        changed |= _lift_constants(graph)
    return changed


def _bodies(graph: onnx.GraphProto):
    for node in graph.node:
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield body
                yield from _bodies(body)


def _lift_constants(graph: onnx.GraphProto) -> bool:
    kept, lifted = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            array = None
            if attr.name == "value":
                array = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int"):
                array = np.array(onnx.helper.get_attribute_value(attr),
                                 dtype=np.float32 if attr.name == "value_float" else np.int64)
            elif attr.name in ("value_floats", "value_ints"):
                array = np.array(onnx.helper.get_attribute_value(attr),
                                 dtype=np.float32 if attr.name == "value_floats" else np.int64)
            if array is not None:
                graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
                lifted += 1
                continue
        kept.append(node)
    if lifted:
        del graph.node[:]
        graph.node.extend(kept)
        logger.info("lifted %d Constant nodes to initializers", lifted)
    return bool(lifted)


def remove_initializer_inputs(model: onnx.ModelProto) -> bool:
    """Older exporters list weights as graph inputs too; treat them as constants."""
    names = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in names]
    if len(inputs) == len(model.graph.input):
        return False
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return True


def fold_constants(model: onnx.ModelProto) -> bool:
    """Evaluate nodes whose inputs are all constants (onnx's reference evaluator, numpy; ONNX
    Runtime where the evaluator fails)."""
    from onnx.reference import ReferenceEvaluator

    view = GraphView(model)
    constants = dict(view.initializers)
    folded = 0
    kept = []
    for node in model.graph.node:
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NEVER_FOLD and node.input
                    and all(name == "" or name in constants for name in node.input)
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in node.attribute))
        if foldable:
            results = _folded(model, node, constants, ReferenceEvaluator)
            if results is not None and all(r.nbytes <= FOLD_LIMIT_BYTES for r in results):
                for name, value in zip(node.output, results):
                    tensor = numpy_helper.from_array(np.asarray(value), name)
                    model.graph.initializer.append(tensor)
                    constants[name] = tensor
                folded += 1
                continue
        kept.append(node)
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(kept)
        # Outputs that became initializers still need a producer node: keep them via Identity.
        _restore_folded_outputs(model)
        topological_sort(model.graph)
        GraphView(model).remove_unused_initializers()
        logger.info("folded %d constant nodes", folded)
    return bool(folded)


def _folded(model, node, constants, evaluator_type) -> list | None:
    """The node's outputs from onnx's reference evaluator, else from ONNX Runtime (the evaluator
    fails on some nodes it should run: GatherElements on (1, 512) positions, onnx 1.23); None when
    neither runs it."""
    for evaluator in (evaluator_type, _OnnxRuntimeEvaluator):
        try:
            return _evaluate_node(evaluator, model, node, constants)
        except Exception as exc:  # noqa: BLE001 (whatever fails, the node stays as it is)
            logger.debug("%s cannot fold %s %r: %s", evaluator.__name__, node.op_type, node.name, exc)
    return None


class _OnnxRuntimeEvaluator:
    """The part of ``ReferenceEvaluator``'s interface ``_evaluate_node`` uses, on ONNX Runtime."""

    def __init__(self, model: onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        typed = onnx.ModelProto()
        typed.CopyFrom(model)
        graph = onnx.shape_inference.infer_shapes(model).graph
        inferred = {value.name: value for value in [*graph.value_info, *graph.output]}
        for output in typed.graph.output:  # ONNX Runtime wants typed outputs; the evaluator does not
            output.CopyFrom(inferred[output.name])
        self.session = ort.InferenceSession(typed.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(self, names, feeds):
        return self.session.run(names, feeds)


def _evaluate_node(evaluator_type, model, node, constants):
    inputs = [onnx.helper.make_tensor_value_info(name, constants[name].data_type, None)
              for name in node.input if name]
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
               for name in node.output]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    single = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    feeds = {name: numpy_helper.to_array(constants[name]) for name in node.input if name}
    return [np.asarray(r) for r in evaluator_type(single).run(None, feeds)]


def _restore_folded_outputs(model: onnx.ModelProto) -> None:
    produced = {name for node in model.graph.node for name in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    for output in model.graph.output:
        if output.name not in produced and output.name in initializers:
            source = initializers[output.name]
            source.name = output.name + "_folded"
            model.graph.node.append(onnx.helper.make_node("Identity", [source.name], [output.name]))


def fold_batch_norm(model: onnx.ModelProto) -> bool:
    """Merge ``Conv -> BatchNormalization`` (inference mode, constant statistics) into the Conv."""
    view = GraphView(model)
    removed = set()
    for bn in list(model.graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        conv = view.producer.get(bn.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(view.consumers[bn.input[0]]) != 1:
            continue
        if bn.input[0] in view.graph_outputs or not all(view.is_constant(n) for n in list(bn.input[1:]) + [conv.input[1]]):
            continue
        if len(conv.input) > 2 and conv.input[2] and not view.is_constant(conv.input[2]):
            continue
        gamma, beta, mean, var = (view.constant(n).astype(np.float64) for n in bn.input[1:])
        epsilon = attribute(bn, "epsilon", 1e-5)
        factor = gamma / np.sqrt(var + epsilon)
        weight = view.constant(conv.input[1])
        if conv.op_type == "Conv":
            shape = (-1,) + (1,) * (weight.ndim - 1)
            new_weight = weight * factor.reshape(shape)
        else:
            group = attribute(conv, "group", 1)
            cin, cout_per_group = weight.shape[0], weight.shape[1]
            grouped = weight.reshape(group, cin // group, cout_per_group, *weight.shape[2:])
            scale = factor.reshape(group, 1, cout_per_group, *([1] * (weight.ndim - 2)))
            new_weight = (grouped * scale).reshape(weight.shape)
        bias = view.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(factor))
        new_bias = (bias - mean) * factor + beta
        weight_name = view.add_initializer(conv.input[1] + "_bnfolded", new_weight.astype(weight.dtype))
        bias_name = view.add_initializer(conv.name + "_bias_bnfolded", new_bias.astype(weight.dtype))
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[1], conv.input[2] = weight_name, bias_name
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
    if not removed:
        return False
    kept = [node for node in model.graph.node if id(node) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    view = GraphView(model)
    view.remove_unused_initializers()
    topological_sort(model.graph)
    logger.info("folded %d BatchNormalization nodes", len(removed))
    return True


def name_nodes(model: onnx.ModelProto) -> bool:
    """Give every node a unique name (plans refer to nodes by name)."""
    seen, changed = set(), False
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{index}"
            name = base
            suffix = 0
            while name in seen:
                suffix += 1
                name = f"{base}_{suffix}"
            node.name = name
            changed = True
        seen.add(node.name)
    return changed
