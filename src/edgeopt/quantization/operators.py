"""Which operators edgeopt quantizes, and how: one rule per operator type, registered by type.

Adding an operator is one ``register(OperatorRule(...))`` line here. The rule says which inputs
are activations (quantized from calibration ranges), which are weights (int8, symmetric, with the
per-channel axis), which is the bias (int32), and whether the output reuses the input's scale
(data-movement operators, which ONNX Runtime then runs on the integers directly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from .graph import GraphView, attribute

WeightAxis = Callable[[onnx.NodeProto, GraphView], "int | None"]


@dataclass(frozen=True)
class OperatorRule:
    op_type: str
    activations: tuple[int, ...] = (0,)
    weights: dict[int, WeightAxis] = field(default_factory=dict)
    bias: int | None = None
    shares_scale: bool = False
    absorbs_activation: bool = False
    default: bool = True  # quantized by plain int8; otherwise only when integer_only demands it
    applies: Callable[[onnx.NodeProto, GraphView], bool] = lambda node, view: True
    #: Whether the weight (input 1) is stored output channels first ([out, in, ...]: Conv, Gemm with
    #: transB) or inputs first ([in, out]: MatMul, Gemm without transB); rounding and bias
    #: correction read it as an outputs x inputs matrix.
    weight_layout: Callable[[onnx.NodeProto], str] = lambda node: "outputs-first"
    #: Bias correction applies (a bias input, and a mean input shift that is linear in the weight).
    bias_correction: bool = False
    #: The order an integer kernel adds the weight (input 1) in, given its rank: the axis
    #: permutation that puts output channels first and how many trailing axes each output sums
    #: over, in the order ONNX Runtime adds them (see :mod:`.saturation`); None when not known.
    accumulation: Callable[[onnx.NodeProto, int], tuple[tuple[int, ...], int] | None] = lambda node, rank: None


RULES: dict[str, OperatorRule] = {}
#: ONNX Runtime gives these operators int8 per-tensor weights when their first input comes from a
#: DequantizeLinear, even if their weight is float (its WeightBiasQuantization pass): a float one
#: must read the float tensor.
FLOAT_WEIGHT_READERS = ("Conv", "ConvTranspose", "Gemm")


def register(rule: OperatorRule) -> OperatorRule:
    RULES[rule.op_type] = rule
    return rule


def rule_for(node: onnx.NodeProto) -> OperatorRule | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return RULES.get(node.op_type)


def _conv_transpose_axis(node, view):
    return 1 if attribute(node, "group", 1) == 1 else None


def _gemm_axis(node, view):
    return 0 if attribute(node, "transB", 0) else 1


def _matmul_axis(node, view):
    weight = view.initializers.get(node.input[1])
    return len(weight.dims) - 1 if weight is not None and len(weight.dims) >= 2 else None


def _gemm_applies(node, view):
    return (attribute(node, "transA", 0) == 0 and attribute(node, "alpha", 1.0) == 1.0
            and attribute(node, "beta", 1.0) == 1.0)


def _weight_is_constant(node, view):
    return view.is_constant(node.input[1])


def _matmul_applies(node, view):
    # A constant left operand is unusual; quantize only activation x (weight or activation).
    return not view.is_constant(node.input[0])


def _relu_clip_bounds(node: onnx.NodeProto, view: GraphView) -> tuple[float, float] | None:
    """The clamp an activation applies, when it is known (Relu, or Clip with constant bounds)."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type == "Clip":
        low, high = float("-inf"), float("inf")
        if len(node.input) > 1 and node.input[1]:
            if not view.is_constant(node.input[1]):
                return None
            low = float(view.constant(node.input[1]))
        elif attribute(node, "min") is not None:
            low = float(attribute(node, "min"))
        if len(node.input) > 2 and node.input[2]:
            if not view.is_constant(node.input[2]):
                return None
            high = float(view.constant(node.input[2]))
        elif attribute(node, "max") is not None:
            high = float(attribute(node, "max"))
        return low, high
    return None


activation_bounds = _relu_clip_bounds

def _conv_accumulation(node, rank):
    return (0, *range(2, rank), 1), rank - 1  # kernel positions, then input channels fastest


def _matmul_accumulation(node, rank):
    if rank < 2:
        return None
    return (rank - 1, *range(rank - 2), rank - 2), 1  # over the rows of [..., K, N], per batch


def _gemm_accumulation(node, rank):
    return ((0, 1) if attribute(node, "transB", 0) else (1, 0)), 1


register(OperatorRule("Conv", weights={1: lambda n, v: 0}, bias=2, absorbs_activation=True,
                      applies=_weight_is_constant, bias_correction=True, accumulation=_conv_accumulation))
register(OperatorRule("ConvTranspose", weights={1: _conv_transpose_axis}, bias=2, absorbs_activation=True,
                      applies=_weight_is_constant, weight_layout=lambda n: "inputs-first"))
register(OperatorRule("Gemm", weights={1: _gemm_axis}, bias=2, absorbs_activation=True,
                      applies=lambda n, v: _gemm_applies(n, v) and _weight_is_constant(n, v),
                      weight_layout=lambda n: "outputs-first" if attribute(n, "transB", 0) else "inputs-first",
                      bias_correction=True, accumulation=_gemm_accumulation))
register(OperatorRule("MatMul", activations=(0, 1), weights={1: _matmul_axis}, absorbs_activation=True,
                      applies=_matmul_applies, weight_layout=lambda n: "inputs-first",
                      accumulation=_matmul_accumulation))
for _op in ("Add", "Mul"):
    register(OperatorRule(_op, activations=(0, 1), absorbs_activation=_op == "Add"))
register(OperatorRule("Concat", activations=tuple(range(64))))
for _op in ("AveragePool", "GlobalAveragePool", "LeakyRelu", "Sigmoid", "Relu", "Clip"):
    register(OperatorRule(_op))
for _op in ("HardSigmoid", "HardSwish", "Tanh", "Softmax"):
    # ONNX Runtime has no integer kernel for these on x86 (or one that costs accuracy in
    # attention); quantize them only when the whole model must be integer.
    register(OperatorRule(_op, default=False))
for _op in ("MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
            "Identity", "Slice", "Gather", "Split", "Resize", "Pad", "DepthToSpace", "SpaceToDepth",
            "Expand", "Tile"):
    register(OperatorRule(_op, shares_scale=True))

# Operators that never carry float data, or carry it without computing on it; integer-only mode
# accepts them anywhere.
NON_COMPUTE = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "Cast", "QuantizeLinear",
               "DequantizeLinear", "Equal", "Less", "Greater", "Where", "Not", "And", "Or"}
