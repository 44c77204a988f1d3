"""An ONNX model at one fixed input shape, every tensor's shape known and shape subgraphs folded.

TFLite tensors have static shapes, and exporters compute Reshape targets and Resize sizes at run
time (Shape -> Gather -> Concat -> Reshape). At a fixed input shape those subgraphs are constants:
:func:`static_model` fixes the inputs, replaces each ``Shape``/``Size`` of a tensor whose shape is
known by its value and folds what became constant, until nothing changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .. import external_data
from ..errors import EdgeoptError
from ..quantization import prepare as passes
from ..quantization.graph import GraphView, remove_dead_nodes

logger = logging.getLogger(__name__)


@dataclass
class StaticModel:
    """The edited model and the shape and element type of each of its tensors."""

    model: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]


def parse_input_shapes(texts) -> dict[str, tuple[int, ...]]:
    """``["x:1,3,224,224", ...]`` -> ``{"x": (1, 3, 224, 224)}`` (a malformed entry is an error)."""
    shapes = {}
    for text in texts or ():
        name, sep, dims = str(text).rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise EdgeoptError(f"--input-shape {text!r}: expected NAME:D1,D2,... with positive sizes")
        shapes[name] = shape
    return shapes


def static_model(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
                 fold_float: bool = True) -> StaticModel:
    """Prepare a copy of ``model`` for a static-shape runtime. A dynamic first dimension becomes 1;
    any other dynamic dimension needs an entry in ``input_shapes``. ``fold_float=False`` keeps the
    float graph's structure (a QDQ model's, whose pairs sit where its plan put them)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    passes.upgrade_opset(edited, reason="the TFLite lowering reads opset-13 operators")
    passes.strip_node_metadata(edited)
    passes.lift_constants(edited)
    passes.remove_initializer_inputs(edited)
    _fix_inputs(edited, dict(input_shapes or {}))
    if fold_float:
        passes.prepare(edited)
    for _ in range(32):
        shapes = _inferred(edited)
        if not (_replace_shape_nodes(edited, shapes) | passes.fold_constants(edited)):
            break
    remove_dead_nodes(edited.graph)
    GraphView(edited).remove_unused_initializers()
    shapes, dtypes = _inferred(edited), _dtypes(edited)
    _check_static(edited, shapes)
    return StaticModel(edited, shapes, dtypes)


def _fix_inputs(model: onnx.ModelProto, given: dict[str, tuple[int, ...]]) -> None:
    inputs = {value.name: value for value in model.graph.input}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise EdgeoptError(f"--input-shape names {', '.join(unknown)}; the model's inputs are {', '.join(inputs)}")
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            raise EdgeoptError(f"input {name!r} has no declared rank; give it with --input-shape {name}:D1,D2,...")
        if name in given:
            _set_dims(value, name, given[name])
            continue
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        if any(d is None for d in shape[1:]):
            raise EdgeoptError(f"input {name!r} has dynamic dimensions {_text(dims)}; give a fixed shape with "
                               f"--input-shape {name}:D1,D2,...")
        _set_dims(value, name, [1 if d is None else d for d in shape])


def _set_dims(value, name: str, shape) -> None:
    dims = value.type.tensor_type.shape.dim
    if len(shape) != len(dims):
        raise EdgeoptError(f"--input-shape gives {name!r} {len(shape)} dimensions; the model's input has "
                           f"{len(dims)} ({_text(dims)})")
    for dim, size in zip(dims, shape):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
            raise EdgeoptError(f"--input-shape gives {name!r} the shape {tuple(shape)}; the model fixes it to "
                               f"{_text(dims)}")
        dim.Clear()
        dim.dim_value = int(size)


def _text(dims) -> str:
    return "[" + ",".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _inferred(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor shape inference can size (constants included)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True) \
            if not external_data.too_large(model) else external_data.infer_shapes(model)
    except Exception as exc:
        raise EdgeoptError(f"onnx's shape inference fails on the model: {str(exc).splitlines()[0][:200]}") from None
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.HasField("shape") and all(
                d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = tuple(int(d.dim_value) for d in tensor.shape.dim)
    return shapes


def _dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    inferred = external_data.infer_shapes(model)
    types = {init.name: init.data_type for init in model.graph.initializer}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return {name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)) for name, code in types.items()}


def _replace_shape_nodes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """``Shape`` (with its start/end) and ``Size`` of a statically shaped tensor become constants."""
    kept, replaced = [], 0
    for node in model.graph.node:
        source = node.input[0] if node.input else ""
        if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx") and source in shapes:
            shape = np.array(shapes[source], dtype=np.int64)
            if node.op_type == "Size":
                value = np.array(int(np.prod(shape)), dtype=np.int64)
            else:
                attrs = {a.name: a.i for a in node.attribute}
                value = shape[slice(attrs.get("start", 0), attrs.get("end", None))]
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            replaced += 1
            continue
        kept.append(node)
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(kept)
        logger.debug("replaced %d Shape/Size nodes by constants", replaced)
    return bool(replaced)


def _check_static(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    for node in model.graph.node:
        for name in node.output:
            if name and name not in shapes:
                raise EdgeoptError(f"the shape of {name!r} (output of {node.op_type} {node.name!r}) is not static at "
                                   "this input shape; TFLite needs static shapes (give --input-shape)")
