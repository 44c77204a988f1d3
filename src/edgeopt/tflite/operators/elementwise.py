"""Element-wise operators: they work in whatever layout their inputs have, broadcasting constants
permuted offline to it."""

from __future__ import annotations

import math

import numpy as np

from ...errors import EdgeoptError
from ..constants import scalar
from . import converter
from .common import activation_code, activation_of, attribute, clip_bounds, fuse_activation

_BINARY = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
           "Div": ("DIV", "DivOptions"), "Max": ("MAXIMUM", None), "Min": ("MINIMUM", None),
           "Pow": ("POW", None), "Equal": ("EQUAL", None), "Less": ("LESS", None), "Greater": ("GREATER", None),
           "And": ("LOGICAL_AND", None), "Or": ("LOGICAL_OR", None)}
_UNARY = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "Exp": "EXP", "Log": "LOG", "Sqrt": "SQRT", "Abs": "ABS",
          "Neg": "NEG", "HardSwish": "HARD_SWISH", "Floor": "FLOOR", "Ceil": "CEIL", "Sin": "SIN", "Cos": "COS",
          "Reciprocal": None, "Erf": None, "Not": "LOGICAL_NOT"}


def fixed_output(lowering, op: str):
    """The output parameters TFLite's integer kernels of ``op`` require (None: any)."""
    if not lowering.node_quantized or op not in ("LOGISTIC", "TANH", "SOFTMAX"):
        return None
    from ..builder import Quantization

    if lowering.quantized.dtype == np.int16:
        return Quantization((1.0 / 32768,), (0,))
    return Quantization((1.0 / 128,), (0,)) if op == "TANH" else Quantization((1.0 / 256,), (-128,))


def common_layout(lowering, names, rank: int):
    """The layout of the first computed input of full rank (the identity when there is none)."""
    for name in names:
        if name and not lowering.is_constant(name) and lowering.rank(name) == rank:
            return lowering.layout_of(name)
    return tuple(range(rank))


@converter(*_BINARY)
def binary(lowering, node) -> None:
    op, options_name = _BINARY[node.op_type]
    out_name = node.output[0]
    rank = lowering.rank(out_name)
    layout = common_layout(lowering, node.input, rank)
    # constants take the type of the computed operand (a comparison's output is bool)
    like = next((n for n in node.input if n and not lowering.is_constant(n)), out_name)
    operands = [lowering.broadcast(name, layout, rank, like=like) for name in node.input]
    if node.op_type == "Pow" and lowering.is_constant(node.input[1]) and np.all(lowering.constant(node.input[1]) == 2):
        op, options_name, operands = "MUL", "MulOptions", [operands[0], operands[0]]
    b = lowering.builder
    options = None
    output = out_name
    if options_name is not None:
        kind, output = fuse_activation(lowering, out_name) if node.op_type != "Div" else ("NONE", out_name)
        fields = {"fusedActivationFunction": activation_code(lowering, kind)}
        options = b.options(options_name, **fields)
    out = lowering.output(output, layout)
    b.operator(op, operands, [out], options, lowering.version(op, operands))


@converter(*_UNARY)
def unary(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    b = lowering.builder
    if node.op_type == "Reciprocal":
        one = lowering.scalar_like(x, 1.0)
        out = lowering.output(out_name, layout)
        b.operator("DIV", [one, source], [out], b.options("DivOptions"))
        return
    if node.op_type == "Erf":
        raise EdgeoptError(f"Erf {node.name!r}: TFLite has no ERF operator; the writer lowers Erf only inside "
                           "x * 0.5 * (1 + erf(x / sqrt(2))) of a float model, which becomes GELU")
    op = _UNARY[node.op_type]
    out = lowering.output_with(out_name, layout, fixed_output(lowering, op))
    b.operator(op, [source], [out], None, lowering.version(op, [source]))


@converter("Relu", "Clip")
def relu_or_clip(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    b = lowering.builder
    kind = activation_of(lowering, node)
    if kind is not None:
        op = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}[kind]
        out = lowering.output(out_name, layout)
        b.operator(op, [source], [out], None, lowering.version(op, [source]))
        return
    low, high = clip_bounds(lowering, node)
    if low is None:
        raise EdgeoptError(f"Clip {node.name!r}: TFLite needs constant bounds")
    current = source
    for op, bound in (("MAXIMUM", low), ("MINIMUM", high)):
        if math.isinf(bound):
            continue
        step = lowering.activation_tensor(f"{out_name}_{op.lower()}", b.info(source).shape, out_name)
        b.operator(op, [current, lowering.scalar_like(x, bound)], [step], None, lowering.version(op, [current]))
        current = step
    lowering.bind(out_name, layout, current)


@converter("LeakyRelu")
def leaky_relu(lowering, node) -> None:
    x = node.input[0]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    b = lowering.builder
    out = lowering.output(node.output[0], layout)
    b.operator("LEAKY_RELU", [source], [out], b.options("LeakyReluOptions", alpha=float(attribute(node, "alpha", 0.01))),
               lowering.version("LEAKY_RELU", [source]))


@converter("PRelu")
def prelu(lowering, node) -> None:
    x, slope = node.input
    rank = lowering.rank(x)
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    alpha = lowering.broadcast(slope, layout, rank, like=x)
    out = lowering.output(node.output[0], layout)
    lowering.builder.operator("PRELU", [source, alpha], [out], None, 1)


@converter("BatchNormalization")
def batch_norm(lowering, node) -> None:
    """Inference-mode BatchNormalization not folded into a convolution: a MUL and an ADD per channel."""
    x = node.input[0]
    if not all(lowering.is_constant(name) for name in node.input[1:5]):
        raise EdgeoptError(f"BatchNormalization {node.name!r}: TFLite needs constant statistics")
    gamma, beta, mean, var = (lowering.constant(name).astype(np.float64) for name in node.input[1:5])
    scale = gamma / np.sqrt(var + attribute(node, "epsilon", 1e-5))
    shift = beta - mean * scale
    rank = lowering.rank(x)
    layout = lowering.layout_of(x)
    shape = (1, -1) + (1,) * (rank - 2)
    dtype = lowering.builder.info(lowering.value(x, layout)).dtype
    scaled = lowering.activation_tensor(f"{node.output[0]}_scaled", lowering.builder.info(lowering.value(x, layout)).shape,
                                        node.output[0])
    b = lowering.builder
    factors = b.constant(f"{node.name}_scale", scale.reshape(shape).transpose(layout).astype(dtype))
    offsets = b.constant(f"{node.name}_shift", shift.reshape(shape).transpose(layout).astype(dtype))
    b.operator("MUL", [lowering.value(x, layout), factors], [scaled], b.options("MulOptions"))
    kind, output = fuse_activation(lowering, node.output[0])
    out = lowering.output(output, layout)
    b.operator("ADD", [scaled, offsets], [out], b.options("AddOptions",
                                                           fusedActivationFunction=activation_code(lowering, kind)))


@converter("Identity", "Dropout")
def identity(lowering, node) -> None:
    lowering.bind_rescaled(node.output[0], lowering.layout_of(node.input[0]), lowering.value(node.input[0]))


@converter("Gelu")
def gelu(lowering, node) -> None:
    x = node.input[0]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    approximate = (attribute(node, "approximate", b"none") or b"none") == b"tanh"
    b = lowering.builder
    out = lowering.output(node.output[0], layout)
    b.operator("GELU", [source], [out], b.options("GeluOptions", approximate=approximate),
               lowering.version("GELU", [source]))


@converter("HardSigmoid")
def hard_sigmoid(lowering, node) -> None:
    """max(0, min(1, a x + b)) = RELU6(6a x + 6b) / 6: three operators XNNPACK takes."""
    x, out_name = node.input[0], node.output[0]
    alpha, beta = float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5))
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    b = lowering.builder
    shape = b.info(source).shape
    scaled = lowering.activation_tensor(f"{out_name}_scaled", shape, out_name)
    b.operator("MUL", [source, lowering.scalar_like(x, 6 * alpha)], [scaled], b.options("MulOptions"),
               lowering.version("MUL", [source]))
    clamped = lowering.activation_tensor(f"{out_name}_relu6", shape, out_name)
    b.operator("ADD", [scaled, scalar(lowering, scaled, 6 * beta)], [clamped],
               b.options("AddOptions", fusedActivationFunction=b.schema.ActivationFunctionType.RELU6),
               lowering.version("ADD", [scaled]))
    out = lowering.output(out_name, layout)
    b.operator("MUL", [clamped, scalar(lowering, clamped, 1 / 6)], [out], b.options("MulOptions"),
               lowering.version("MUL", [clamped]))


@converter("LayerNormalization")
def layer_norm(lowering, node) -> None:
    """(x - mean) / sqrt(var + eps) * scale + bias over the trailing axes from ``axis``."""
    x, out_name = node.input[0], node.output[0]
    rank = lowering.rank(x)
    axis = attribute(node, "axis", -1) % rank
    layout = lowering.ordered_layout(x) if lowering.layout_of(x)[axis:] == tuple(range(axis, rank)) else \
        tuple(range(rank))
    source = lowering.value(x, layout)
    b = lowering.builder
    shape = b.info(source).shape
    axes = lowering.int32("axes", [layout.index(a) for a in range(axis, rank)])
    reduced = tuple(1 if i in [layout.index(a) for a in range(axis, rank)] else d for i, d in enumerate(shape))

    def step(op, inputs, out_shape, options=None):
        index = lowering.activation_tensor(f"{out_name}_{op.lower()}", out_shape, out_name)
        b.operator(op, inputs, [index], options, lowering.version(op, inputs[:1]))
        return index

    keep = b.options("ReducerOptions", keepDims=True)
    mean = step("MEAN", [source, axes], reduced, keep)
    centred = step("SUB", [source, mean], shape, b.options("SubOptions"))
    variance = step("MEAN", [step("MUL", [centred, centred], shape, b.options("MulOptions")), axes], reduced, keep)
    epsilon = scalar(lowering, variance, float(attribute(node, "epsilon", 1e-5)))
    inverse = step("RSQRT", [step("ADD", [variance, epsilon], reduced, b.options("AddOptions"))], reduced)
    current = step("MUL", [centred, inverse], shape, b.options("MulOptions"))
    for position, op, options in ((1, "MUL", "MulOptions"), (2, "ADD", "AddOptions")):
        if len(node.input) > position and node.input[position]:
            operand = lowering.broadcast(node.input[position], layout, rank, like=out_name)
            current = step(op, [current, operand], shape, b.options(options))
    lowering.bind(out_name, layout, current)


@converter("Cast")
def cast(lowering, node) -> None:
    x, out_name = node.input[0], node.output[0]
    layout = lowering.layout_of(x)
    source = lowering.value(x, layout)
    out = lowering.output(out_name, layout)
    b = lowering.builder
    if b.info(source).dtype == b.info(out).dtype:
        lowering.bind(out_name, layout, source)
        return
    b.operator("CAST", [source], [out], None, 1)


@converter("Where")
def where(lowering, node) -> None:
    """SELECT_V2, which broadcasts its three operands as ONNX's Where does."""
    condition, out_name = node.input[0], node.output[0]
    rank = lowering.rank(out_name)
    layout = common_layout(lowering, node.input, rank)
    like = next((n for n in node.input[1:] if not lowering.is_constant(n)), out_name)
    operands = [lowering.broadcast(condition, layout, rank, like=condition)]
    operands += [lowering.broadcast(name, layout, rank, like=like) for name in node.input[1:]]
    out = lowering.output(out_name, layout)
    lowering.builder.operator("SELECT_V2", operands, [out], None, lowering.version("SELECT_V2", operands))


@converter("IsNaN")
def is_nan(lowering, node) -> None:
    """TFLite has no ISNAN: NOT_EQUAL(x, x) is true exactly where x is NaN."""
    layout = lowering.layout_of(node.input[0])
    source = lowering.value(node.input[0], layout)
    out = lowering.output(node.output[0], layout)
    lowering.builder.operator("NOT_EQUAL", [source, source], [out], None, lowering.version("NOT_EQUAL", [source, source]))
