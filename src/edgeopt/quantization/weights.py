"""Passes that shrink constant weights without quantizing activations.

* :func:`store_int8` keeps a float weight as int8 plus per-channel scales, restored by
  ``Cast -> Mul`` that ONNX Runtime folds once at load: 4x smaller on disk, float speed and
  float kernels at run time. Used for operators that stay float in every mode (a DequantizeLinear
  in front of a float operator would instead run at every inference, or be turned by ONNX Runtime
  into a kernel that quantizes the activation too).
* :func:`store_float16` does the same with float16 and ``Cast``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .graph import GraphView, attribute
from .numerics import quantize, weight_params

# Above this magnitude a "weight" is a mask or a sentinel; int8 storage would overflow on restore.
LARGEST_WEIGHT = 1e30


def _weight_axis(name: str, rank: int, view: GraphView) -> int | None:
    """Quantize along the output channel: last axis for MatMul right operands, else axis 0."""
    if rank < 2:
        return None
    consumers = view.consumers.get(name, [])
    if consumers and all(node.op_type in ("LSTM", "GRU", "RNN") for node in consumers):
        return 1  # [directions, gates x hidden, input]: quantize per gate row
    if consumers and all(
            (node.op_type == "MatMul" and node.input[1] == name)
            or (node.op_type == "Gemm" and node.input[1] == name and not attribute(node, "transB", 0))
            for node in consumers):
        return rank - 1
    return 0


def _replace_initializers(graph: onnx.GraphProto, view: GraphView, min_elements: int, skip: set[str],
                          encode, graph_path: tuple) -> list[str]:
    """Replace each float initializer ``encode`` accepts (it gets the TensorProto and returns the
    new initializers as (TensorProto, name) pairs, and nodes; or None) in place: the initializers
    kept are not copied, the new ones are copied once under their name."""
    stored, replaced, added, new_nodes = [], [], [], []
    for index, init in enumerate(graph.initializer):
        if (init.data_type != TensorProto.FLOAT or init.name in skip or init.name in view.graph_outputs
                or int(np.prod(init.dims, dtype=np.int64)) < min_elements):
            continue
        encoded = encode(init, view, graph_path)
        if encoded is None:
            continue
        initializers, nodes = encoded
        replaced.append(index)
        added.extend(initializers)
        new_nodes.extend(nodes)
        stored.append(init.name)
    for index in reversed(replaced):
        del graph.initializer[index]
    for tensor, name in added:
        stored_copy = graph.initializer.add()
        stored_copy.CopyFrom(tensor)
        stored_copy.name = name
    if new_nodes:
        existing = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + existing)
    return stored


def store_int8(model: onnx.ModelProto, min_elements: int = 256, skip: set[str] = frozenset(),
               per_channel: bool = True, only: set[str] | None = None, memo: dict | None = None) -> list[str]:
    """Store float weights of at least ``min_elements`` values as int8 + scale; returns their names.

    ``only`` limits the main graph to these initializers: callers pass the model's own weights, so
    that scales and other parameters a quantization pass created are never quantized again.
    ``memo`` keeps the encodings between calls on copies of the same source model.
    """
    memo = {} if memo is None else memo
    if only is not None:
        skip = set(skip) | ({init.name for init in model.graph.initializer} - set(only))

    def integers_and_scale(array, axis):
        # Only real weights: matrices and kernels with finite values, at least 8 values per scale
        # (a bias or a per-gate vector would grow, or lose precision, as int8).
        if array.ndim < 2 or not np.all(np.isfinite(array)) or np.abs(array).max(initial=0.0) > LARGEST_WEIGHT:
            return None  # masks of -inf or float32's lowest value are not weights: keep them exact
        if axis is not None and array.size // array.shape[axis] < 8:
            return None
        params = weight_params(array, axis)
        scale = np.asarray(params.scale, dtype=np.float32)
        if params.axis is not None:
            shape = [1] * array.ndim
            shape[params.axis] = scale.size
            scale = scale.reshape(shape)
        return quantize(array, params), scale

    def encode(init, view, graph_path):
        # If branches may reuse a weight's name: the key holds the branch's path (node names do not
        # change between builds, node order does), and the axis the weight's readers ask for. The
        # memo keeps the finished tensors, copied once into each build under its own names (the
        # numpy round trip of MiniLM's 47 MB word embeddings was most of this pass's time).
        name = init.name
        axis = _weight_axis(name, len(init.dims), view) if per_channel else None
        key = (graph_path, name, axis)
        if key not in memo:
            encoded = integers_and_scale(numpy_helper.to_array(init), axis)
            memo[key] = None if encoded is None else tuple(numpy_helper.from_array(a) for a in encoded)
        if memo[key] is None:
            return None
        integers, scale = memo[key]
        integers_name, scale_name = view.unique(f"{name}_int8"), view.unique(f"{name}_scale")
        widened = view.unique(f"{name}_widened")
        nodes = [view.make_node("Cast", [integers_name], [widened], f"{name}_Cast", to=TensorProto.FLOAT),
                 view.make_node("Mul", [widened, scale_name], [name], f"{name}_Mul")]
        return [(integers, integers_name), (scale, scale_name)], nodes

    return _apply_everywhere(model, min_elements, skip, encode)


def store_float16(model: onnx.ModelProto, min_elements: int = 16, skip: set[str] = frozenset()) -> list[str]:
    """Store float initializers as float16 behind a Cast back to float32; returns their names."""

    def encode(init, view, graph_path):
        name, array = init.name, numpy_helper.to_array(init)
        # Values outside float16's range (attention masks holding float32's lowest value) would
        # become -inf, and NaN after a fully masked softmax: such tensors stay float32.
        if np.any(np.abs(array[np.isfinite(array)]) > np.finfo(np.float16).max):
            return None
        half_name = view.unique(f"{name}_float16")
        return [(numpy_helper.from_array(array.astype(np.float16)), half_name)], \
            [view.make_node("Cast", [half_name], [name], f"{name}_Cast", to=TensorProto.FLOAT)]

    return _apply_everywhere(model, min_elements, skip, encode)


def _apply_everywhere(model, min_elements, skip, encode) -> list[str]:
    """Apply to the main graph and to If/Loop/Scan bodies (weights inside control flow count too)."""
    view = GraphView(model)
    stored = _replace_initializers(model.graph, view, min_elements, skip, encode, ())
    for graph_path, graph in _subgraphs(model.graph):
        sub_view = GraphView(onnx.helper.make_model(graph))
        sub_view.used_names |= view.used_names
        stored += _replace_initializers(graph, sub_view, min_elements, set(), encode, graph_path)
        view.used_names |= sub_view.used_names
    return stored


def _subgraphs(graph: onnx.GraphProto, path: tuple = ()):
    """Every If/Loop/Scan body, with its path: (node name, attribute name, index) per level."""
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for index, body in enumerate(bodies):
                where = path + ((node.name, attr.name, index),)
                yield where, body
                yield from _subgraphs(body, where)
