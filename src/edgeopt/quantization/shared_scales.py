"""One scale for the operands and result of every quantized Add of two activations.

An int8 Add whose inputs and output have different scales rescales each input to the output's
scale, and runtimes round that rescaling differently: ONNX Runtime's QLinearAdd in float,
XNNPACK (what LiteRT runs) in 32-bit fixed point. A one-step difference at a residual Add then
travels through every later block. With one scale the ratios are exactly 1, the sum is an
integer sum plus zero points, and both runtimes compute the same integers: MobileNetV2-Fashion's
int8 .tflite then equals ONNX Runtime on all 100,000 output elements of the 10,000 test images
(99.97% within one step without it; EfficientNet-Lite0 100% against 97.03%;
``python -m benchmarks.tflite``).

The cost is range: the group's scale is the widest member's, so the narrower tensors lose
resolution (MobileNetV2-Fashion: top-1 91.26% against 91.35%). Each tensor keeps its own zero
point, so a Relu after the Add still clamps at the integer range's end and is absorbed; a
Clip(0, 6) whose range the group widens past 6 stays as an operator. A residual stream is one
group: each block's output is the next block's input. Left as they are: an Add of a tensor to
itself, Adds of a constant, per-channel parameters.
"""

from __future__ import annotations

import numpy as np

from .graph import GraphView
from .numerics import INTEGER_RANGES, MIN_SCALE, QuantParams
from .operators import activation_bounds
from .plan import QuantizationPlan
from .select import Selection


def _find(parent: dict, name: str) -> str:
    while parent.setdefault(name, name) != name:
        parent[name] = parent[parent[name]]
        name = parent[name]
    return name


def _groups(view: GraphView, selection: Selection, activations: dict) -> tuple[list[list[str]], dict[str, str]]:
    """Tensors that must share a scale (each Add's inputs and result, and every tensor already
    holding the same parameters, which scale-sharing operators pass on), and the Add results a
    Relu/Clip alone reads, each mapped to that clamp's output: such a result is absorbed into the
    clamp's range, so its unclamped range must not widen the group."""
    parent: dict[str, str] = {}
    clamped: dict[str, str] = {}
    for node in selection.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or len(node.output) != 1:
            continue
        result = node.output[0]
        readers = view.consumers.get(result, [])
        if len(readers) == 1 and result not in view.graph_outputs and activation_bounds(readers[0], view) is not None \
                and readers[0].output[0] in activations:
            clamped[result] = result = readers[0].output[0]
        members = [*node.input, result]
        if node.input[0] == node.input[1] or not all(name in activations for name in members):
            continue
        for name in members[1:]:
            parent[_find(parent, name)] = _find(parent, members[0])
    holders: dict[int, list[str]] = {}
    for name, params in activations.items():
        if name not in clamped:
            holders.setdefault(id(params), []).append(name)
    for names in holders.values():
        if any(name in parent for name in names):
            for name in names[1:]:
                parent[_find(parent, name)] = _find(parent, names[0])
    grouped: dict[str, list[str]] = {}
    for name in parent:
        grouped.setdefault(_find(parent, name), []).append(name)
    return [sorted(names) for names in grouped.values() if len(names) > 1], clamped


def _tie(plan: QuantizationPlan, names: list[str]) -> bool:
    """Give ``names`` the largest of their scales (for one integer type, the widest range), each
    keeping its low end through its zero point (symmetric int16 keeps zero point 0). False, and
    nothing changed, for per-channel parameters."""
    originals = {id(plan.activations[name]): plan.activations[name] for name in names}
    if any(params.per_channel for params in originals.values()):
        return False
    dtype = next(iter(originals.values())).dtype
    qmin, qmax = INTEGER_RANGES[dtype]
    scale = np.float32(max(max(float(params.scale) for params in originals.values()), MIN_SCALE))
    symmetric = dtype == "int16" and all(int(params.zero_point) == 0 for params in originals.values())
    replaced = {}
    for key, params in originals.items():
        low = (qmin - int(params.zero_point)) * float(params.scale)
        zero_point = 0 if symmetric else int(np.clip(np.rint(qmin - low / scale), qmin, qmax))
        replaced[key] = QuantParams(scale, np.array(zero_point, dtype=dtype), dtype)
    for name in names:
        plan.activations[name] = replaced[id(plan.activations[name])]
    return True


def share_add_scales(view: GraphView, selection: Selection, plan: QuantizationPlan) -> int:
    """Tie each group of :func:`_groups` (:func:`_tie`); an Add result a clamp reads takes the
    clamp's parameters (quantizing to that range clamps as the Relu/Clip does, and the absorption
    pass then drops it). Returns how many groups were tied."""
    groups, clamped = _groups(view, selection, plan.activations)
    tied = [names for names in groups if _tie(plan, names)]
    members = {name for names in tied for name in names}
    for result, clamp in clamped.items():
        if clamp in members:
            plan.activations[result] = plan.activations[clamp]
    return len(tied)
