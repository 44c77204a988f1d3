"""Resize (and the older Upsample) -> RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR on the spatial axes."""

from __future__ import annotations

from ...errors import EdgeoptError
from .. import layout as lay
from . import converter
from .common import attribute

_BILINEAR = {"half_pixel": (False, True), "pytorch_half_pixel": (False, True), "align_corners": (True, False),
             "asymmetric": (False, False)}
_NEAREST = {("asymmetric", "floor"): (False, False), ("align_corners", "round_prefer_ceil"): (True, False),
            ("half_pixel", "round_prefer_ceil"): (False, True), ("tf_half_pixel_for_nn", "round_prefer_ceil"): (False, True),
            ("pytorch_half_pixel", "round_prefer_ceil"): (False, True)}


def _text(node, name, default):
    value = attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


@converter("Resize", "Upsample")
def resize(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    in_shape, out_shape = lowering.shape(x), lowering.shape(out_name)
    if len(in_shape) != 4 or tuple(in_shape[:2]) != tuple(out_shape[:2]):
        raise EdgeoptError(f"{node.op_type} {node.name!r}: TFLite resizes the two spatial axes of a 4-D tensor only")
    mode = _text(node, "mode", "nearest")
    transform = _text(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample":
        transform = "asymmetric"
    if mode == "linear":
        table, key, op, options_name = _BILINEAR, transform, "RESIZE_BILINEAR", "ResizeBilinearOptions"
    elif mode == "nearest":
        nearest = _text(node, "nearest_mode", "round_prefer_floor" if node.op_type == "Resize" else "floor")
        if node.op_type == "Upsample":
            nearest = "floor"
        table, key, op, options_name = _NEAREST, (transform, nearest), "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions"
        if transform == "asymmetric" and all(o % i == 0 for o, i in zip(out_shape[2:], in_shape[2:])):
            key = ("asymmetric", "floor")  # integer factors: every rounding picks the same pixel
    else:
        raise EdgeoptError(f"{node.op_type} {node.name!r}: mode {mode!r} is not lowered (linear and nearest are)")
    if key not in table:
        raise EdgeoptError(f"{node.op_type} {node.name!r}: {mode} resizing with {key} has no TFLite equivalent; "
                           f"lowered: {', '.join(map(str, table))}")
    align, half = table[key]
    source = lowering.value(x, lay.channels_last(4))
    b = lowering.builder
    out = lowering.output_like(out_name, lay.channels_last(4), source)
    options = b.options(options_name, alignCorners=align, halfPixelCenters=half)
    b.operator(op, [source, lowering.int32("size", out_shape[2:])], [out], options,
               lowering.version(op, [source], half_pixel=half, align_corners=align))
