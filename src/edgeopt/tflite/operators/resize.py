"""Resize (and the older Upsample) -> RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR on the spatial axes."""

from __future__ import annotations

from ...errors import EdgeoptError
from .. import layout as lay
from . import converter
from .axis import MAX_CONCAT_INPUTS
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
    factors = [o // i for o, i in zip(out_shape[2:], in_shape[2:])]
    if op == "RESIZE_NEAREST_NEIGHBOR" and key == ("asymmetric", "floor") and all(
            o == f * i for o, i, f in zip(out_shape[2:], in_shape[2:], factors)):
        _repeat(lowering, source, out_name, factors)
        return
    b = lowering.builder
    out = lowering.output_like(out_name, lay.channels_last(4), source)
    options = b.options(options_name, alignCorners=align, halfPixelCenters=half)
    b.operator(op, [source, lowering.int32("size", out_shape[2:])], [out], options,
               lowering.version(op, [source], half_pixel=half, align_corners=align))


def _repeat(lowering, source: int, out_name: str, factors: list[int]) -> None:
    """Nearest upsampling by integer factors as RESHAPE and CONCATENATION of copies (XNNPACK
    delegates both; it has no RESIZE_NEAREST_NEIGHBOR): each pixel repeated along W, then each row
    along H. Exact, and the same values in a quantized graph."""
    b = lowering.builder
    n, h, w, c = b.info(source).shape
    fh, fw = factors
    info = b.info(source)

    def reshape(index, shape):
        out = b.tensor("repeat", shape, info.dtype, quantization=info.quantization)
        b.operator("RESHAPE", [index, lowering.int32("shape", shape)], [out], b.options("ReshapeOptions", newShape=list(shape)))
        return out

    def concatenated(pieces, shape, axis):  # pieces: (tensor, extent on axis)
        shape = list(shape)
        shape[axis] = sum(extent for _, extent in pieces)
        out = b.tensor("repeat", shape, info.dtype, quantization=info.quantization)
        b.operator("CONCATENATION", [index for index, _ in pieces], [out],
                   b.options("ConcatenationOptions", axis=axis), lowering.version("CONCATENATION", [pieces[0][0]]))
        return out, shape[axis]

    def copies(index, shape, axis, count):
        pieces = [(index, shape[axis])] * count
        while len(pieces) > 1:  # at most MAX_CONCAT_INPUTS at a time, which XNNPACK takes
            groups = [pieces[i:i + MAX_CONCAT_INPUTS] for i in range(0, len(pieces), MAX_CONCAT_INPUTS)]
            pieces = [concatenated(group, shape, axis) if len(group) > 1 else group[0] for group in groups]
        return pieces[0][0]

    current = source
    if fw > 1:
        current = copies(reshape(current, (n, h, w, 1, c)), (n, h, w, 1, c), 3, fw)
    if fh > 1:
        current = copies(reshape(current, (n, h, 1, w * fw * c)), (n, h, 1, w * fw * c), 2, fh)
    out = lowering.output_like(out_name, lay.channels_last(4), source)
    b.operator("RESHAPE", [current, lowering.int32("shape", (n, h * fh, w * fw, c))], [out],
               b.options("ReshapeOptions", newShape=[n, h * fh, w * fw, c]))
