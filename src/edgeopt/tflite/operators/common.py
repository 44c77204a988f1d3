"""What several converters share: attributes, fused activations, SAME/VALID padding."""

from __future__ import annotations

import math

import numpy as np

from ...errors import EdgeoptError
from ...quantization.graph import attribute

__all__ = ["activation_of", "attribute", "ceil_extra", "fuse_activation", "padding", "spatial_attributes"]


def activation_of(lowering, node) -> str | None:
    """The TFLite fused activation a Relu or Clip node computes (``None``: not one)."""
    if node.op_type == "Relu":
        return "RELU"
    if node.op_type != "Clip":
        return None
    low, high = clip_bounds(lowering, node)
    if low is None:
        return None
    return {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, math.inf): "RELU"}.get((low, high))


def clip_bounds(lowering, node) -> tuple[float | None, float | None]:
    """A Clip's (min, max) as floats (-inf/inf where absent); (None, None) when not constant."""
    bounds = []
    for position, default in ((1, -math.inf), (2, math.inf)):
        name = node.input[position] if len(node.input) > position else ""
        if not name:
            bounds.append(default)
        elif lowering.is_constant(name):
            bounds.append(float(lowering.constant(name)))
        else:
            return None, None
    return bounds[0], bounds[1]


def fuse_activation(lowering, name: str) -> tuple[str, str]:
    """(fused activation, tensor to declare as the op's output): a Relu/Clip that is ``name``'s only
    reader folds into the producing op, which then writes the activation's output."""
    reader = lowering.only_consumer(name)
    kind = activation_of(lowering, reader) if reader is not None else None
    if kind is None or not lowering.can_fuse(name, reader):
        return "NONE", name
    lowering.consumed.add(reader.name)
    return kind, reader.output[0]


def activation_code(lowering, kind: str) -> int:
    return getattr(lowering.builder.schema.ActivationFunctionType, kind)


def spatial_attributes(node, spatial: int) -> dict:
    return {
        "kernel": list(attribute(node, "kernel_shape", [])),
        "strides": list(attribute(node, "strides", [1] * spatial)),
        "dilations": list(attribute(node, "dilations", [1] * spatial)),
        "pads": list(attribute(node, "pads", [0] * (2 * spatial))),
        "auto_pad": (attribute(node, "auto_pad", b"NOTSET") or b"NOTSET"),
    }


def padding(sizes, kernel, strides, dilations, pads, auto_pad) -> tuple[str, list[tuple[int, int]]]:
    """("SAME" | "VALID", explicit pads still to apply before a VALID op) for ONNX padding.

    TFLite's SAME pads ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)`` in total, the odd
    element after; ONNX pads that equal it, or ``auto_pad=SAME_UPPER``, are SAME."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    spatial = len(sizes)
    same = []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        same.append((total // 2, total - total // 2))
    if auto_pad == "SAME_UPPER":
        return "SAME", []
    if auto_pad == "SAME_LOWER":
        explicit = [(after, before) for before, after in same]
        return ("SAME", []) if explicit == same else ("VALID", explicit)
    if auto_pad == "VALID":
        return "VALID", []
    explicit = [(int(pads[i]), int(pads[i + spatial])) for i in range(spatial)]
    if all(p == (0, 0) for p in explicit):
        return "VALID", []
    if explicit == same:
        return "SAME", []
    return "VALID", explicit


def ceil_extra(sizes, kernel, strides, dilations, explicit) -> list[int]:
    """Extra end padding that makes a floor-mode pool give ONNX's ``ceil_mode=1`` output size."""
    extra = []
    for n, k, s, d, (before, after) in zip(sizes, kernel, strides, dilations, explicit):
        span = n + before + after - ((k - 1) * d + 1)
        floor_out, ceil_out = span // s + 1, -(-span // s) + 1
        if ceil_out > floor_out and (ceil_out - 1) * s >= n + before:
            ceil_out = floor_out  # ONNX drops a last window that starts in the end padding
        extra.append((ceil_out - floor_out) * s)
    return extra


def constant_int_list(lowering, node, position: int, attribute_name: str | None = None) -> list[int] | None:
    """An int list given as input ``position`` (opset 13+) or as an attribute (older opsets)."""
    if len(node.input) > position and node.input[position]:
        name = node.input[position]
        if not lowering.is_constant(name):
            raise EdgeoptError(f"{node.op_type} {node.name!r}: input {name!r} must be constant at a fixed input "
                               "shape for TFLite")
        return [int(v) for v in np.asarray(lowering.constant(name)).reshape(-1)]
    if attribute_name is not None:
        value = attribute(node, attribute_name)
        return None if value is None else [int(v) for v in value]
    return None
