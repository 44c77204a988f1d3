"""Operators with axis attributes: the axes are remapped to the input's layout, so they run in place
(Concat, Softmax, reductions, Pad, Slice, Split, Gather)."""

from __future__ import annotations

import numpy as np

from ...errors import EdgeoptError
from .. import layout as lay
from . import converter
from .common import attribute, constant_int_list
from .elementwise import common_layout, fixed_output


@converter("Concat")
def concat(lowering, node) -> None:
    out_name = node.output[0]
    rank = lowering.rank(out_name)
    layout = common_layout(lowering, node.input, rank)
    axis = lay.tflite_axis(attribute(node, "axis"), layout)
    sources = [lowering.value(name, layout) for name in node.input if name and 0 not in lowering.shape(name)]
    b = lowering.builder
    out = lowering.output(out_name, layout)
    sources = [_rescaled(lowering, source, b.info(out).quantization) for source in sources]
    while len(sources) > MAX_CONCAT_INPUTS:  # XNNPACK concatenates at most this many at once
        sources = [_concatenated(lowering, sources[i:i + MAX_CONCAT_INPUTS], axis, out)
                   if len(sources[i:i + MAX_CONCAT_INPUTS]) > 1 else sources[i]
                   for i in range(0, len(sources), MAX_CONCAT_INPUTS)]
    b.operator("CONCATENATION", sources, [out], b.options("ConcatenationOptions", axis=axis),
               lowering.version("CONCATENATION", sources))


#: inputs of one CONCATENATION that XNNPACK delegates; more are concatenated in a tree
MAX_CONCAT_INPUTS = 4


def _concatenated(lowering, sources: list[int], axis: int, like: int) -> int:
    b = lowering.builder
    shape = list(b.info(sources[0]).shape)
    shape[axis] = sum(b.info(s).shape[axis] for s in sources)
    index = b.tensor(f"{b.tensors[like].name}_part", shape, b.info(like).dtype,
                     quantization=b.info(like).quantization)
    b.operator("CONCATENATION", sources, [index], b.options("ConcatenationOptions", axis=axis),
               lowering.version("CONCATENATION", sources))
    return index


def _rescaled(lowering, source: int, quantization) -> int:
    """``source`` with ``quantization`` (a QUANTIZE between them when its own differs): XNNPACK
    concatenates only inputs that share the output's parameters."""
    info = lowering.builder.info(source)
    if quantization is None or info.quantization is None or info.quantization == quantization:
        return source
    index = lowering.builder.tensor(f"{lowering.builder.tensors[source].name}_rescaled", info.shape, info.dtype,
                                    quantization=quantization)
    lowering.builder.operator("QUANTIZE", [source], [index], None, lowering.version("QUANTIZE", [source], out=index))
    return index


@converter("Softmax", "LogSoftmax")
def softmax(lowering, node) -> None:
    """TFLite normalises over the last axis: the input is taken in a layout that puts ONNX's axis last."""
    x, out_name = node.input[0], node.output[0]
    rank = lowering.rank(x)
    axis = attribute(node, "axis", -1) % rank
    layout = lowering.layout_of(x)
    if layout[-1] != axis:
        layout = tuple(a for a in lay.identity(rank) if a != axis) + (axis,)
    source = lowering.value(x, layout)
    b = lowering.builder
    out = lowering.output_with(out_name, layout, fixed_output(lowering, "SOFTMAX"))
    if node.op_type == "Softmax":
        b.operator("SOFTMAX", [source], [out], b.options("SoftmaxOptions", beta=1.0), lowering.version("SOFTMAX", [source]))
    else:
        b.operator("LOG_SOFTMAX", [source], [out], None, lowering.version("LOG_SOFTMAX", [source]))


_REDUCERS = {"ReduceMean": "MEAN", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN", "ReduceSum": "SUM",
             "ReduceProd": "REDUCE_PROD"}


@converter(*_REDUCERS, "ReduceL2")
def reduce(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    rank = lowering.rank(x)
    axes = constant_int_list(lowering, node, 1, "axes")
    if axes is None or not axes:
        if attribute(node, "noop_with_empty_axes", 0):
            if node.op_type != "ReduceL2":
                lowering.alias(out_name, x)
                return
            layout = lowering.layout_of(x)  # the L2 norm of each element alone: |x|
            source = lowering.value(x, layout)
            out = lowering.output(out_name, layout)
            lowering.builder.operator("ABS", [source], [out], None, lowering.version("ABS", [source]))
            return
        axes = list(range(rank))
    axes = sorted(a % rank for a in axes)
    keep = bool(attribute(node, "keepdims", 1))
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    out_layout = layout if keep else lay.drop_axes(layout, axes)
    b = lowering.builder
    out = lowering.output(out_name, out_layout)
    tflite_axes = lowering.int32("axes", [lay.tflite_axis(a, layout) for a in axes])
    if node.op_type == "ReduceL2":  # sqrt(sum(x * x)): TFLite's L2_NORMALIZATION also divides
        # (not an integer operator in edgeopt's plans: a quantized model runs it in float)
        squares = lowering.activation_tensor(f"{out_name}_squares", b.info(source).shape, x)
        b.operator("MUL", [source, source], [squares], b.options("MulOptions"), lowering.version("MUL", [source, source]))
        sums = lowering.activation_tensor(f"{out_name}_sums", b.info(out).shape, x)
        b.operator("SUM", [squares, tflite_axes], [sums], b.options("ReducerOptions", keepDims=keep),
                   lowering.version("SUM", [squares]))
        b.operator("SQRT", [sums], [out], None, lowering.version("SQRT", [sums]))
        return
    op = _REDUCERS[node.op_type]
    b.operator(op, [source, tflite_axes], [out], b.options("ReducerOptions", keepDims=keep), lowering.version(op, [source]))


@converter("Pad")
def pad(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    rank = lowering.rank(x)
    pads = constant_int_list(lowering, node, 1, "pads")
    axes = constant_int_list(lowering, node, 3) or list(range(rank))
    mode = (attribute(node, "mode", b"constant") or b"constant").decode()
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(np.asarray(lowering.constant(node.input[2])).reshape(-1)[0])
    elif attribute(node, "value") is not None:
        value = float(attribute(node, "value"))
    if pads is None or any(p < 0 for p in pads):
        raise EdgeoptError(f"Pad {node.name!r}: TFLite needs constant, non-negative pads")
    full = [[0, 0] for _ in range(rank)]
    for i, axis in enumerate(a % rank for a in axes):
        full[axis] = [pads[i], pads[i + len(axes)]]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    paddings = lowering.int32("paddings", [full[a] for a in layout])
    b = lowering.builder
    out = lowering.output_like(out_name, layout, source)
    if mode == "constant":
        inputs = [source, paddings]
        if value:
            inputs.append(lowering.scalar_like(x, value))
        op = "PADV2" if value else "PAD"
        b.operator(op, inputs, [out], None, lowering.version(op, [source]))
    elif mode == "reflect":
        b.operator("MIRROR_PAD", [source, paddings], [out], b.options("MirrorPadOptions", mode=b.schema.MirrorPadMode.REFLECT))
    else:
        raise EdgeoptError(f"Pad {node.name!r}: TFLite has no {mode} padding (constant and reflect are lowered)")


@converter("Slice")
def slice_(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    shape = lowering.shape(x)
    rank = len(shape)
    starts = constant_int_list(lowering, node, 1, "starts")
    ends = constant_int_list(lowering, node, 2, "ends")
    axes = constant_int_list(lowering, node, 3, "axes") or list(range(len(starts)))
    steps = constant_int_list(lowering, node, 4) or [1] * len(starts)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    for start, stop, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        begin[axis], end[axis], stride[axis] = _slice_bounds(start, stop, step, shape[axis])
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    b = lowering.builder
    out = lowering.output_like(out_name, layout, source)
    mask = sum(1 << i for i, a in enumerate(layout) if stride[a] < 0 and end[a] < 0)
    options = b.options("StridedSliceOptions", endMask=mask)
    b.operator("STRIDED_SLICE", [source, lowering.int32("begin", [begin[a] for a in layout]),
                                 lowering.int32("end", [max(end[a], 0) if stride[a] > 0 else end[a] for a in layout]),
                                 lowering.int32("strides", [stride[a] for a in layout])], [out], options,
               lowering.version("STRIDED_SLICE", [source]))


def _slice_bounds(start: int, stop: int, step: int, size: int) -> tuple[int, int, int]:
    """ONNX Slice bounds clamped as ONNX clamps them (``end`` -1 for a negative step running past 0)."""
    if step == 0:
        raise EdgeoptError("Slice: a step of 0 is invalid")
    start = start + size if start < 0 else start
    stop = stop + size if stop < 0 else stop
    if step > 0:
        return min(max(start, 0), size), min(max(stop, 0), size), step
    return min(max(start, -1), size - 1), min(max(stop, -1), size - 1), step


@converter("Split")
def split(lowering, node) -> None:
    x = node.input[0]
    rank = lowering.rank(x)
    axis = attribute(node, "axis", 0) % rank
    sizes = [lowering.shape(name)[axis] for name in node.output]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    outputs = [lowering.output_like(name, layout, source) for name in node.output]
    b = lowering.builder
    where = lay.tflite_axis(axis, layout)
    if len(set(sizes)) == 1:  # SPLIT, which XNNPACK delegates (it has no SPLIT_V)
        b.operator("SPLIT", [lowering.int32("axis", [where]), source], outputs,
                   b.options("SplitOptions", numSplits=len(outputs)), lowering.version("SPLIT", [source]))
        return
    stored = b.info(source).shape
    start = 0
    for size, out in zip(sizes, outputs):  # unequal parts: one SLICE each (delegated too)
        begin = [start if i == where else 0 for i in range(len(stored))]
        extent = [size if i == where else d for i, d in enumerate(stored)]
        b.operator("SLICE", [source, lowering.int32("begin", begin), lowering.int32("size", extent)], [out], None,
                   lowering.version("SLICE", [source]))
        start += size


@converter("Gather")
def gather(lowering, node) -> None:
    data, indices, out_name = node.input[0], node.input[1], node.output[0]
    rank = lowering.rank(data)
    axis = attribute(node, "axis", 0) % rank
    index_rank = lowering.rank(indices)
    # a scalar index drops the axis wherever it lies; index tensors put their axes in its place,
    # which only ONNX's own layout keeps simple
    layout = lowering.layout_of(data) if index_rank == 0 else lay.identity(rank)
    source = lowering.value(data, layout)
    if lowering.is_constant(indices) and index_rank == 0:
        _gather_as_slice(lowering, node, data, int(lowering.constant(indices)), axis)
        return
    if lowering.is_constant(indices):
        values = np.asarray(lowering.constant(indices)).astype(np.int64)
        values = np.where(values < 0, values + lowering.shape(data)[axis], values)
        index = lowering.builder.constant(f"{indices}_i32", values.astype(np.int32))
    else:
        index = lowering.value(indices)
    out_layout = lay.drop_axes(layout, [axis]) if index_rank == 0 else lay.identity(lowering.rank(out_name))
    b = lowering.builder
    out = lowering.output_like(out_name, out_layout, source)
    b.operator("GATHER", [source, index], [out], b.options("GatherOptions", axis=lay.tflite_axis(axis, layout)),
               lowering.version("GATHER", [source]))


def _gather_as_slice(lowering, node, data: str, index: int, axis: int) -> None:
    """A constant scalar index: SLICE one element along the axis, RESHAPE the axis away (XNNPACK
    delegates both; it has no GATHER)."""
    layout = lowering.layout_of(data)
    shape = lowering.shape(data)
    index = index + shape[axis] if index < 0 else index
    source = lowering.value(data, layout)
    where = lay.tflite_axis(axis, layout)
    stored = lowering.builder.info(source).shape
    begin = [index if i == where else 0 for i in range(len(stored))]
    size = [1 if i == where else d for i, d in enumerate(stored)]
    b = lowering.builder
    sliced = b.tensor(f"{node.output[0]}_slice", size, b.info(source).dtype, quantization=b.info(source).quantization)
    b.operator("SLICE", [source, lowering.int32("begin", begin), lowering.int32("size", size)], [sliced], None,
               lowering.version("SLICE", [source]))
    out_layout = lay.drop_axes(layout, [axis])
    out_shape = [d for i, d in enumerate(size) if i != where]
    out = lowering.output_like(node.output[0], out_layout, sliced)
    b.operator("RESHAPE", [sliced, lowering.int32("shape", out_shape)], [out],
               b.options("ReshapeOptions", newShape=out_shape))


@converter("Expand")
def expand(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    rank = lowering.rank(out_name)
    layout = lowering.layout_of(x) if lowering.rank(x) == rank else lay.identity(rank)
    source = lowering.broadcast(x, layout, rank, like=out_name)
    shape = lay.permute_shape(lowering.shape(out_name), layout)
    b = lowering.builder
    out = lowering.output_like(out_name, layout, source)
    b.operator("BROADCAST_TO", [source, lowering.int32("shape", shape)], [out], None, 2)
