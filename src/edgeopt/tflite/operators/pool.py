"""MaxPool / AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; global pools -> MEAN / REDUCE_MAX."""

from __future__ import annotations

from ...errors import EdgeoptError
from .. import layout as lay
from . import converter
from .common import activation_code, attribute, ceil_extra, fuse_activation, padding, spatial_attributes
from .conv import explicit_pad


@converter("MaxPool", "AveragePool")
def pool(lowering, node) -> None:
    x = node.input[0]
    if lowering.rank(x) != 4:
        raise EdgeoptError(f"{node.op_type} {node.name!r}: the TFLite writer lowers 2-D pools only")
    if len(node.output) > 1 and node.output[1]:
        raise EdgeoptError(f"MaxPool {node.name!r}: TFLite has no pooling indices output")
    attrs = spatial_attributes(node, 2)
    if max(attrs["dilations"]) > 1:
        raise EdgeoptError(f"{node.op_type} {node.name!r}: TFLite pools have no dilation")
    source = lowering.value(x, lay.channels_last(4))
    in_shape = lay.permute_shape(lowering.shape(x), lay.channels_last(4))
    mode, explicit = padding(in_shape[1:3], attrs["kernel"], attrs["strides"], attrs["dilations"], attrs["pads"],
                             attrs["auto_pad"])
    is_max = node.op_type == "MaxPool"
    if not is_max and attribute(node, "count_include_pad", 0) and mode == "SAME" and any(attrs["pads"]):
        mode, explicit = "VALID", [(attrs["pads"][0], attrs["pads"][2]), (attrs["pads"][1], attrs["pads"][3])]
    if attribute(node, "ceil_mode", 0):
        pads = explicit or ([(0, 0), (0, 0)] if mode == "VALID" else None)
        if pads is None:
            raise EdgeoptError(f"{node.op_type} {node.name!r}: ceil_mode with SAME padding is not lowered")
        extra = ceil_extra(in_shape[1:3], attrs["kernel"], attrs["strides"], attrs["dilations"], pads)
        explicit = [(b, a + e) for (b, a), e in zip(pads, extra)] if any(extra) or explicit else explicit
        mode = "VALID"
    if explicit and not is_max and not attribute(node, "count_include_pad", 0):
        raise EdgeoptError(f"AveragePool {node.name!r}: padding that excludes the padded elements from the average "
                           "and is not TFLite's SAME cannot be lowered")
    if explicit:
        # a max pool over values >= 0 may pad with 0 (PAD, which XNNPACK takes; PADV2 it does not)
        lowest = is_max and not lowering.non_negative(x)
        source, in_shape = explicit_pad(lowering, source, in_shape, explicit, lowest=lowest)
    kind, output = fuse_activation(lowering, node.output[0])
    b = lowering.builder
    op = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
    options = b.options("Pool2DOptions", padding=getattr(b.schema.Padding, mode), strideH=attrs["strides"][0],
                        strideW=attrs["strides"][1], filterHeight=attrs["kernel"][0], filterWidth=attrs["kernel"][1],
                        fusedActivationFunction=activation_code(lowering, kind))
    out = lowering.output_like(output, lay.channels_last(4), source)
    b.operator(op, [source], [out], options, lowering.version(op, [source]))


@converter("GlobalAveragePool", "GlobalMaxPool")
def global_pool(lowering, node) -> None:
    x = node.input[0]
    rank = lowering.rank(x)
    layout = lay.channels_last(rank)
    source = lowering.value(x, layout)
    b = lowering.builder
    axes = list(range(1, rank - 1))  # the spatial axes of the channels-last tensor
    op = "MEAN" if node.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    out = lowering.output(node.output[0], layout)
    b.operator(op, [source, lowering.int32("axes", axes)], [out], b.options("ReducerOptions", keepDims=True),
               lowering.version(op, [source]))
