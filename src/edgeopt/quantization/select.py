"""Which nodes and tensors static quantization touches: a walk over the graph with the operator rules.

Decides and returns data (:class:`Selection`); edits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import EdgeoptError
from .graph import GraphView
from .operators import rule_for


@dataclass
class Selection:
    """The nodes to quantize and the activation tensors their inputs and outputs need."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    activations: set[str] = field(default_factory=set)
    constants: dict[tuple[str, int], str] = field(default_factory=dict)
    weights: dict[tuple[str, int], tuple[str, "int | None"]] = field(default_factory=dict)
    biases: dict[tuple[str, int], str] = field(default_factory=dict)


def check_exclusions(view: GraphView, exclude: tuple[str, ...]) -> None:
    names = {node.name for node in view.graph.node} | {node.op_type for node in view.graph.node}
    unknown = [item for item in exclude if item not in names]
    if unknown:
        raise EdgeoptError(f"exclude: {unknown} match no node name or operator type in the model (after "
                           "preparation, which folds constants, BatchNormalization and constant Mul/Add into "
                           "convolutions; name a node that remains)")


def excluded_nodes(model: onnx.ModelProto, exclude: tuple[str, ...]) -> list[onnx.NodeProto]:
    """The nodes ``exclude`` names, by node name or operator type."""
    return [node for node in model.graph.node if node.name in exclude or node.op_type in exclude]


#: The operators the "matmul-inputs" scope quantizes (their inputs only; see :func:`select`).
MATMUL_INPUT_OPS = ("MatMul", "Gemm")


def select(view: GraphView, dtypes: dict[str, int], *, integer_only: bool, per_channel: bool,
           exclude: tuple[str, ...] = (), keep_float: set[str] = frozenset(), scope: str = "all") -> Selection:
    """Walk the graph in order and pick every node its rule can quantize.

    With ``scope="matmul-inputs"`` only MatMul/Gemm nodes with a constant weight are picked and
    only their inputs are quantized: ONNX Runtime runs them as ``MatMulIntegerToFloat`` (integer
    product, float output), and the residual stream, normalisations and attention stay float.
    """
    selection = Selection()
    inputs_only = scope == "matmul-inputs"
    for node in view.graph.node:
        rule = rule_for(node)
        if rule is None or node.name in exclude or node.op_type in exclude:
            continue
        if inputs_only and (node.op_type not in MATMUL_INPUT_OPS or len(node.input) < 2
                            or not view.is_constant(node.input[1])):
            continue
        if not rule.default and not integer_only:
            continue
        if not rule.applies(node, view):
            continue
        inputs, constants = [], {}
        for index in rule.activations:
            if index >= len(node.input) or not node.input[index] or index in rule.weights and \
                    view.is_constant(node.input[index]):
                continue
            name = node.input[index]
            if dtypes.get(name) != TensorProto.FLOAT:
                inputs = None
                break
            if view.is_constant(name):
                if not np.all(np.isfinite(view.constant(name))):
                    inputs = None  # e.g. a -inf attention mask: no integer can hold it
                    break
                constants[(node.name, index)] = name
            else:
                inputs.append(name)
        outputs = [] if inputs_only else [name for name in node.output if name]
        if not inputs or any(dtypes.get(name) != TensorProto.FLOAT for name in outputs):
            continue
        if rule.shares_scale and inputs[0] not in selection.activations and not integer_only:
            continue  # only worth it when the data is already quantized
        if keep_float & (set(inputs) | set(outputs)):
            continue
        if any(view.is_constant(node.input[i]) and not np.all(np.isfinite(view.constant(node.input[i])))
               for i in list(rule.weights) + ([rule.bias] if rule.bias is not None else []) if i < len(node.input)):
            continue
        selection.nodes.append(node)
        selection.activations.update(inputs)
        selection.activations.update(outputs)
        selection.constants.update(constants)
        for index, axis_of in rule.weights.items():
            if index < len(node.input) and view.is_constant(node.input[index]) \
                    and view.initializers[node.input[index]].data_type == TensorProto.FLOAT:
                axis = axis_of(node, view) if per_channel else None
                selection.weights[(node.name, index)] = (node.input[index], axis)
        if rule.bias is not None and rule.bias < len(node.input) and view.is_constant(node.input[rule.bias]):
            selection.biases[(node.name, rule.bias)] = node.input[rule.bias]
    return selection


#: Reductions whose kept dimensions broadcast back over the reduced tensor: normalization statistics.
_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"}
#: Operators a statistic flows through and stays a statistic (when all its other inputs are
#: statistics or constants).
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Pow", "Neg", "Abs", "Max", "Min", "Cast",
                "Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity"}
#: Of these, operators whose inputs after the first are shapes or axes (computed at run time by
#: some exporters: tf2onnx's BroadcastTo reads Shape -> Concat -> Cast).
_SHAPED = {"Reshape", "Expand", "Unsqueeze", "Squeeze"}


def normalization_statistics(view: GraphView) -> dict[str, str]:
    """Tensors of decomposed normalizations (LayerNorm, GroupNorm, RMSNorm as exporters without a
    fused operator write them): means, variances and what is computed from them alone, and the
    squares a variance is reduced from. No integer kernel runs them, and an 8-bit grid loses a
    variance (measured: magika's decomposed LayerNorm took int8 to a cosine of 0.07).

    A reduction counts only when what is computed from it meets a non-statistic tensor again in
    an elementwise operator (``x - mean``, ``x * rsqrt(var)``): global average pooling by
    ReduceMean feeding a classifier, or a squeeze-and-excitation branch through convolutions, does
    not.
    """
    origin: dict[str, set[int]] = {}  # statistic tensor -> the reductions it comes from
    merged: set[int] = set()
    squares: dict[str, str] = {}
    for index, node in enumerate(view.graph.node):  # graph order: producers come first
        data = node.input[:1] if node.op_type in _SHAPED else node.input  # not shapes or axes
        variable = [name for name in data if name and not view.is_constant(name)]
        if node.op_type in _REDUCTIONS:
            origin.update({name: {index} for name in node.output})
        elif node.op_type in _ELEMENTWISE and variable:
            sources = [origin[name] for name in variable if name in origin]
            if len(sources) == len(variable):
                origin.update({name: set().union(*sources) for name in node.output})
            elif sources:
                merged.update(*sources)
        readers = view.consumers.get(node.output[0], []) if node.output else []
        if _is_square(node, view) and readers and all(c.op_type in _REDUCTIONS for c in readers):
            squares[node.output[0]] = "squared values a variance is reduced from"
    found = {name: "a normalization statistic (mean or variance of a decomposed normalization, or computed "
                   "from them alone)" for name, sources in origin.items() if sources & merged}
    return {**found, **squares}


#: Elementwise operators of one variable tensor (with constants) that exporters chain into
#: activation functions: GELU as x * 0.5 * (1 + tanh(c * (x + 0.044715 x^3))) or with Erf, SiLU as
#: x * sigmoid(x), Mish.
_POINTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Tanh", "Erf", "Sigmoid",
              "Exp", "Log", "Softplus", "Max", "Min"}


def pointwise_interiors(view: GraphView) -> dict[str, str]:
    """Tensors inside a decomposed activation function: a chain of elementwise operators whose
    only variable input is one tensor ``x`` (the others constants), read only inside the chain.
    The chain's result is quantized as any activation; each 8-bit step inside adds error
    (measured: magika's two tanh-GELUs took int8 from a cosine of 0.955 to 0.992 when kept
    float). Chains of integer kernels too (SiLU as ``x * sigmoid(x)``, PP-LCNet's affine after
    hard-swish): quantizing their inside gained ddddocr's detector 1% of latency (0.64x float
    against 0.65x) and cost PP-OCRv4's recogniser fidelity (held-out 0.9922 -> 0.9807) and its
    detector six fallback tensors and twice the optimizer time (44 s against 20.5 s)."""
    root: dict[str, str] = {}  # tensor -> the one variable tensor it is a pointwise function of
    chains: dict[str, list[onnx.NodeProto]] = {}  # that tensor -> the nodes computing from it alone
    for node in view.graph.node:
        if node.op_type not in _POINTWISE or not node.output:
            continue
        sources = {root.get(name, name) for name in node.input if name and not view.is_constant(name)}
        if len(sources) != 1:
            continue
        (source,) = sources
        chains.setdefault(source, []).append(node)
        root.update({name: source for name in node.output})
    interiors = {}
    for chain in chains.values():
        if len(chain) < 2:
            continue
        names = {node.name for node in chain}
        for node in chain:
            readers = view.consumers.get(node.output[0], [])
            if node.output[0] not in view.graph_outputs and readers and all(r.name in names for r in readers):
                interiors[node.output[0]] = ("inside a decomposed activation function (a pointwise chain of one "
                                             "tensor, such as GELU or SiLU written out): only its result is quantized")
    return interiors


def _is_square(node: onnx.NodeProto, view: GraphView) -> bool:
    if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
        return True
    return node.op_type == "Pow" and len(node.input) == 2 and view.is_constant(node.input[1]) \
        and float(np.asarray(view.constant(node.input[1])).reshape(-1)[0]) == 2.0
