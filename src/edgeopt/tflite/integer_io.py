"""An integer-only ONNX model edgeopt wrote, back to the QDQ model it came from (float inputs
quantized by QuantizeLinear, float outputs from DequantizeLinear), so that the TFLite writer reads
one kind of quantized model; the TFLite file is made integer-only again from the plan."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import EdgeoptError
from ..quantization.graph import GraphView, topological_sort
from ..quantization.integer_io import METADATA_PREFIX, read_io_params


def as_float_io(model: onnx.ModelProto) -> None:
    """Undo :func:`edgeopt.quantization.integer_io.make_integer_io` in place."""
    params = read_io_params(model)
    if not params:
        raise EdgeoptError("the integer-only model has no edgeopt.io metadata; expected a model edgeopt wrote")
    view = GraphView(model)
    added = []
    for value in list(model.graph.input) + list(model.graph.output):
        entry = params.get(value.name)
        if entry is None:
            continue
        scale = view.add_initializer(f"{value.name}_io_scale", np.float32(np.asarray(entry["scale"]).reshape(-1)[0]))
        zero = view.add_initializer(f"{value.name}_io_zero", np.array(entry["zero_point"], dtype=entry["dtype"]))
        integer = view.unique(f"{value.name}_integer")
        if entry["role"] == "input":
            _rename_reads(model, value.name, integer)
            added.append(helper.make_node("QuantizeLinear", [value.name, scale, zero], [integer],
                                          name=view.unique(f"{value.name}_quantize")))
        else:
            _rename_reads(model, value.name, integer)
            for node in model.graph.node:
                node.output[:] = [integer if o == value.name else o for o in node.output]
            added.append(helper.make_node("DequantizeLinear", [integer, scale, zero], [value.name],
                                          name=view.unique(f"{value.name}_dequantize")))
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    model.graph.node.extend(added)
    topological_sort(model.graph)
    kept = [entry for entry in model.metadata_props if not entry.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)


def _rename_reads(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
