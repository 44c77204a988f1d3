"""Reshape, Flatten, Squeeze, Unsqueeze -> RESHAPE; Transpose -> nothing (a layout change) or TRANSPOSE.

A RESHAPE reads elements in storage order, so its input must hold them in ONNX's order: a
channels-last tensor whose channels are its only non-unit axis does (``[N, C, 1, 1]``);
otherwise the input is transposed back to ONNX's layout first, a true layout barrier.
"""

from __future__ import annotations

from .. import layout as lay
from . import converter


@converter("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    source = lowering.value(x, lowering.ordered_layout(x))
    shape = list(lowering.shape(out_name))
    b = lowering.builder
    out = lowering.output_like(out_name, lay.identity(len(shape)), source)
    b.operator("RESHAPE", [source, lowering.int32("shape", shape)], [out], b.options("ReshapeOptions", newShape=shape),
               lowering.version("RESHAPE", [source]))


@converter("Transpose")
def transpose(lowering, node) -> None:
    """No operator: the output is the input's tensor, in the layout that makes the permutation a no-op."""
    x, out_name = node.input[0], node.output[0]
    rank = lowering.rank(x)
    perm = tuple(lowering.attribute(node, "perm", list(reversed(range(rank)))))
    if lowering.is_constant(x):
        lowering.add_constant(out_name, lowering.constant(x).transpose(perm))
        return
    lowering.bind_rescaled(out_name, lay.compose(lay.inverse(perm), lowering.layout_of(x)), lowering.value(x))
