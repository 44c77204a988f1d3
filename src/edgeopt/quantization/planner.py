"""From calibration statistics to a :class:`QuantizationPlan`: scales, zero points, integers.

Decides and returns data; :mod:`.qdq` edits the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from . import rounding
from .calibration import HistogramObserver, compute_range
from .graph import GraphView, attribute
from .numerics import (
    INTEGER_RANGES,
    QuantParams,
    affine_params,
    dequantize,
    quantize,
    symmetric_params,
    weight_params,
)
from .operators import FLOAT_WEIGHT_READERS, activation_bounds, rule_for
from .plan import QuantizationPlan, QuantizedConstant
from .saturation import WEIGHT_LIMITS, fit_pairs, from_kernel_order, paired_params, to_kernel_order
from .select import Selection
from .shared_scales import share_add_scales
from .structure import proportional_scales, row_structure, shared_codebook

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranges:
    """How activation ranges and weight integers are chosen (the parts of a candidate :func:`plan` reads)."""

    method: str
    percentile: float
    activation_type: str
    weight_range: str = "safe"
    correct_biases: bool = True
    #: one scale for each Add's activation operands and result (:mod:`.shared_scales`)
    shared_add_scale: bool = False


def _is_depthwise(node, view: GraphView) -> bool:
    weight = view.initializers.get(node.input[1]) if len(node.input) > 1 else None
    return (node.op_type == "Conv" and weight is not None and len(weight.dims) == 4 and weight.dims[1] == 1
            and attribute(node, "group", 1) == weight.dims[0] and weight.dims[0] > 1)


def _range_for(node, view: GraphView, rank: int, weight_range: str) -> str:
    """The weight range ``node`` gets. Depthwise convolutions take the full range whatever
    ``weight_range`` says: ONNX Runtime's depthwise kernel widens to 16 bits before it adds, so
    it cannot saturate (measured exact with weights of +-127 against activations of 200-255),
    and their 9 weights per channel need the bit most. ``"safe"`` needs the kernel's order of
    accumulation; an operator without one gets ``"half"``."""
    if _is_depthwise(node, view):
        return "full"
    if weight_range == "safe" and rule_for(node).accumulation(node, rank) is None:
        return "half"
    return weight_range


def weight_quant_params(node, view: GraphView, weight: np.ndarray, axis: int | None, weight_range: str
                        ) -> QuantParams:
    """Symmetric int8 parameters for ``node``'s weight under ``weight_range`` (:mod:`.saturation`)."""
    chosen = _range_for(node, view, weight.ndim, weight_range)
    if chosen != "safe":
        params = weight_params(weight, axis, qmax=WEIGHT_LIMITS[chosen])
    else:
        layout = rule_for(node).accumulation(node, weight.ndim)
        params = paired_params(to_kernel_order(weight, layout), axis)
    if params.per_channel and shared_codebook(weight, params.axis):
        params = replace(params, scale=proportional_scales(weight, params.axis, params.scale))
    return params


def fit_weight_integers(node, view: GraphView, integers: np.ndarray, weight_range: str) -> np.ndarray:
    """``integers`` with every pair the kernel adds in 16 bits within range (``"safe"`` only)."""
    if _range_for(node, view, integers.ndim, weight_range) != "safe":
        return integers
    layout = rule_for(node).accumulation(node, integers.ndim)
    return from_kernel_order(fit_pairs(to_kernel_order(integers, layout)), integers.shape, layout)


def round_weights(view: GraphView, selection: Selection, observers: dict[str, HistogramObserver],
                  weight_range: str = "safe", memo: dict | None = None) -> dict[tuple[str, int], np.ndarray]:
    """Compensated int8 weights (as float values on their grid) for every weight whose input
    moments calibration collected; the scales are those :func:`plan` chooses. ``memo`` keeps
    each weight's result across selections (scopes select the same MatMul weights)."""
    values = {}
    memo = {} if memo is None else memo
    nodes = {node.name: node for node in selection.nodes}
    readers: dict[str, int] = {}
    for name, _ in selection.weights.values():
        readers[name] = readers.get(name, 0) + 1
    # one stored tensor for several layers: nearest rounding, stored once
    wanted = [(key, name, axis) for key, (name, axis) in selection.weights.items()
              if readers[name] == 1 and (key, name, weight_range) not in memo]
    by_input: dict = {}  # layers reading one input (q, k and v) share its inverse factor
    for key, name, axis in wanted:
        by_input.setdefault(_factor_key(nodes[key[0]], observers), []).append((key, name, axis))
    for layers in by_input.values():
        factors: dict = {}  # freed with the group
        for key, name, axis in layers:
            memo[(key, name, weight_range)] = _compensated(view, nodes[key[0]], name, axis, observers,
                                                           weight_range, factors)
    for key, (name, axis) in selection.weights.items():
        if memo.get((key, name, weight_range)) is not None:
            values[key] = memo[(key, name, weight_range)]
    return values


def _factor_key(node, observers: dict[str, HistogramObserver]):
    observer = observers.get(node.input[0])
    return (node.input[0], None if observer is None else observer.moment_key(node.name))


def _compensated(view: GraphView, node, name: str, axis: int | None, observers: dict[str, HistogramObserver],
                 weight_range: str, factors: dict) -> np.ndarray | None:
    """One weight's compensated values on its grid, or None without input moments; ``factors``
    keeps the inverse factors of the moments by key (q, k and v share theirs)."""
    observer = observers.get(node.input[0])
    moments = None if observer is None else observer.moments(node.name)
    if moments is None:
        return None
    factor_key = _factor_key(node, observers)
    weight = view.constant(name).astype(np.float32)
    params = weight_quant_params(node, view, weight, axis, weight_range)
    qmax = WEIGHT_LIMITS[_range_for(node, view, weight.ndim, weight_range)]
    transposed = rule_for(node).weight_layout(node) == "inputs-first"
    rows = weight.T if transposed else weight  # output channels x inputs
    rows = rows.reshape(rows.shape[0], -1)
    groups = moments.shape[0]
    scales = np.broadcast_to(np.asarray(params.scale, np.float64).reshape(-1), (rows.shape[0],))
    if rows.shape[1] != moments.shape[1] or rows.shape[0] % groups:
        return None
    per_group = rows.shape[0] // groups
    if factor_key not in factors:
        factors[factor_key] = rounding.inverse_factor(moments)
    grouped, grouped_scales = rows.reshape(groups, per_group, -1), scales.reshape(groups, per_group)
    kept = row_structure(grouped, grouped_scales, qmax)  # a pruned or clustered weight's zeros and clusters
    integers = rounding.compensated_round(grouped, grouped_scales, None, -qmax, qmax, factor=factors[factor_key],
                                          structure=kept)
    integers = integers.reshape((weight.T if transposed else weight).shape)
    fitted = fit_weight_integers(node, view, integers.T if transposed else integers, weight_range)
    if kept is not None and not kept.holds((fitted.T if transposed else fitted).reshape(grouped.shape)):
        # fitting pairs into 16 bits moved a zero or added a value: nearest rounding keeps both
        fitted = fit_weight_integers(node, view, quantize(weight, params).astype(np.int64), weight_range)
    return dequantize(fitted.astype(np.int8), params).astype(np.float32)


def plan_activations(view: GraphView, selection: Selection, observers: dict[str, HistogramObserver],
                     ranges: Ranges, memo: dict | None = None, absorb: bool = True) -> QuantizationPlan:
    """The activation part of :func:`plan`: nodes, activation parameters, absorbed Relu/Clip."""
    result = QuantizationPlan(ranges.activation_type)
    _plan_activations(selection, observers, ranges, result, {} if memo is None else memo)
    if ranges.shared_add_scale:
        share_add_scales(view, selection, result)
    if absorb:
        _absorb_activations(view, selection, result)
    return result


def plan(view: GraphView, selection: Selection, observers: dict[str, HistogramObserver], ranges: Ranges,
         weight_values: dict | None = None, memo: dict | None = None, absorb: bool = True) -> QuantizationPlan:
    """Parameters and integers for every selected tensor, absorbed activations, int32 biases.

    ``weight_values`` holds weights already on their int8 grid (compensated rounding); ``memo``
    keeps integers between calls for the same model (the search plans many candidates);
    ``absorb=False`` keeps every Relu/Clip (and quantizes the tensor before it).
    """
    memo = {} if memo is None else memo
    result = plan_activations(view, selection, observers, ranges, memo, absorb)
    weights, integers = _plan_weights(view, selection, ranges, weight_values or {}, memo)
    biases = {key: view.constant(name).astype(np.float32) for key, name in selection.biases.items()}
    if ranges.correct_biases:
        corrected = _corrected_biases(view, selection, weights, integers, observers)
        biases.update(corrected)
        result.corrected_biases = set(corrected)
    bias_params = plan_biases(selection, result, weights, biases)
    for key, params in weights.items():
        result.weights[key] = QuantizedConstant(params, integers[key])
        if (weight_values or {}).get(key) is not None:
            result.compensated_weights.add(key)
    for key, params in bias_params.items():
        result.biases[key] = QuantizedConstant(params, quantize(biases[key], params).astype(np.int32))
    for key, name in selection.constants.items():
        result.constants[key] = quantized_constant(view.constant(name), ranges.activation_type)
    return result


def quantized_constant(values: np.ndarray, activation_type: str) -> QuantizedConstant:
    """A constant operand (of Add, Mul, ...) quantized like an activation over its own range."""
    values = values.astype(np.float32)
    if activation_type == "int16":
        params = symmetric_params(np.abs(values).max(initial=0.0), activation_type)
    else:
        params = affine_params(values.min(initial=0.0), values.max(initial=0.0), activation_type)
    return QuantizedConstant(params, quantize(values, params))


def _plan_activations(selection: Selection, observers, ranges: Ranges, result: QuantizationPlan,
                      memo: dict) -> None:
    symmetric = ranges.activation_type == "int16"
    for node in selection.nodes:
        rule = rule_for(node)
        result.nodes.append(node.name)
        for name in list(node.input) + list(node.output):
            if name not in selection.activations or name in result.activations:
                continue
            if rule.shares_scale and name in node.output and node.input[0] in result.activations:
                result.activations[name] = result.activations[node.input[0]]
                continue
            # Ranges depend only on the tensor and the method: computed once per search (the
            # entropy search over a histogram takes milliseconds, and a search plans ~100 models).
            key = ("activation", name, ranges.method, ranges.activation_type, ranges.percentile)
            if key not in memo:
                low, high = compute_range(observers[name], ranges.method, ranges.activation_type, ranges.percentile)
                memo[key] = (symmetric_params(max(abs(low), abs(high)), ranges.activation_type)
                             if symmetric else affine_params(low, high, ranges.activation_type))
            result.activations[name] = memo[key]


def _plan_weights(view: GraphView, selection: Selection, ranges: Ranges, on_grid: dict, memo: dict
                  ) -> tuple[dict, dict]:
    """Each selected weight's parameters and int8 integers (from ``on_grid`` where compensated
    rounding gave values, else nearest), fitted to the kernel's pairs; memoised across plans."""
    nodes = {node.name: node for node in selection.nodes}
    params_by_key, integers_by_key = {}, {}
    for key, (name, axis) in selection.weights.items():
        node = nodes[key[0]]
        rank = len(view.initializers[name].dims)
        params_key = ("weight params", key, name, axis, ranges.weight_range)
        if params_key not in memo:
            memo[params_key] = weight_quant_params(node, view, view.constant(name), axis, ranges.weight_range)
        params = params_by_key[key] = memo[params_key]
        compensated = on_grid.get(key) is not None
        # Readers of one stored tensor share its integers when they agree on parameters, range
        # and the order their kernel adds the weights in (what the pair fitting depends on).
        fitting = (_range_for(node, view, rank, ranges.weight_range), rule_for(node).accumulation(node, rank))
        memo_key = ("weight", key if compensated else name, axis, params.scale.tobytes(), fitting)
        if memo_key not in memo:
            integers = quantize(on_grid[key] if compensated else view.constant(name), params)
            memo[memo_key] = fit_weight_integers(node, view, integers, ranges.weight_range)
        integers_by_key[key] = memo[memo_key]
    return params_by_key, integers_by_key


def _corrected_biases(view: GraphView, selection: Selection, weights: dict, integers: dict,
                      observers: dict[str, HistogramObserver]) -> dict:
    """Bias correction (Nagel et al., 2019): int8 weights shift each output by (W_q - W) E[x];
    subtract that shift, measured with the calibrated mean of every input channel.

    It matters most where inputs have a large mean, e.g. a first convolution fed images whose
    normalised background is far from zero.
    """
    corrected = {}
    for node in selection.nodes:
        key, weight_key = (node.name, 2), (node.name, 1)
        observer = observers.get(node.input[0])
        if key not in selection.biases or weight_key not in weights or observer is None \
                or observer.channel_means is None or not rule_for(node).bias_correction:
            continue
        weight = view.constant(node.input[1]).astype(np.float32)
        delta = dequantize(integers[weight_key], weights[weight_key]).astype(np.float64) - weight
        shift = _output_shift(node, delta, observer)
        bias = view.constant(selection.biases[key]).astype(np.float64)
        if shift is None or bias.shape != shift.shape:
            continue
        corrected[key] = (bias - shift).astype(np.float32)
    return corrected


def _output_shift(node, delta: np.ndarray, observer: HistogramObserver) -> np.ndarray | None:
    """The mean output shift ``delta`` (int8 weight minus float weight) causes on calibrated inputs."""
    means = observer.channel_means
    if node.op_type != "Conv":  # Gemm
        matrix = delta.T if attribute(node, "transB", 0) else delta  # K x N
        return means @ matrix if matrix.shape[0] == means.size else None
    group = attribute(node, "group", 1)
    cout, cin_group = delta.shape[0], delta.shape[1]
    if means.size != cin_group * group:
        return None
    owner = np.arange(cout) // (cout // group)
    windows = observer.window_means(node.name)
    if windows is not None and windows.shape == (cin_group * group, int(np.prod(delta.shape[2:]))):
        # Exact: each kernel offset sees its own mean (zero padding lowers it at the borders).
        per_offset = windows.reshape(group, cin_group, -1)[owner]
        return np.sum(delta.reshape(cout, cin_group, -1) * per_offset, axis=(1, 2))
    per_input = delta.reshape(cout, cin_group, -1).sum(axis=2)
    return np.sum(per_input * means.reshape(group, cin_group)[owner], axis=1)


def _absorb_activations(view: GraphView, selection: Selection, result: QuantizationPlan) -> None:
    """Drop Relu/Clip after a quantized node when the quantized range already clamps the same way.

    Not when a float Conv/Gemm reads the activation's output: such readers read the float tensor
    before the QuantizeLinear (see :mod:`.qdq`), which would then be unclamped.
    """
    selected = {node.name for node in selection.nodes}
    for node in selection.nodes:
        if not rule_for(node).absorbs_activation or len(node.output) != 1:
            continue
        output = node.output[0]
        consumers = view.consumers.get(output, [])
        if len(consumers) != 1 or output in view.graph_outputs:
            continue
        activation = consumers[0]
        bounds = activation_bounds(activation, view)
        if bounds is None or activation.name not in selected or activation.output[0] not in result.activations:
            continue
        if any(reader.name not in selected and reader.op_type in FLOAT_WEIGHT_READERS
               for reader in view.consumers.get(activation.output[0], [])):
            continue
        params = result.activations[activation.output[0]]
        qmin, qmax = INTEGER_RANGES[params.dtype]
        scale, zero_point = float(params.scale), float(params.zero_point)
        low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
        tolerance = 1e-6 * max(1.0, abs(low), abs(high))
        if low < bounds[0] - tolerance or high > bounds[1] + tolerance:
            continue
        result.absorbed[activation.name] = node.name
        del result.activations[output]


def plan_biases(selection: Selection, result: QuantizationPlan, weights: dict, biases: dict) -> dict:
    """int32 parameters at input scale x weight scale; a bias too large for int32 at that scale
    widens its channel's weight scale instead (in ``weights``)."""
    nodes = {node.name: node for node in selection.nodes}
    limit = float(2**31 - 1)
    planned = {}
    for key in selection.biases:
        node_name, _ = key
        weight_key = (node_name, 1)
        if weight_key not in weights or nodes[node_name].input[0] not in result.activations:
            continue
        bias = biases[key].astype(np.float64)
        weight = weights[weight_key]
        input_scale = float(result.activations[nodes[node_name].input[0]].scale)
        weight_scale = np.asarray(weight.scale, dtype=np.float64)
        if bias.ndim != 1 or (weight_scale.ndim == 1 and weight_scale.size != bias.size) \
                or not np.all(np.isfinite(bias)):
            continue
        needed = np.abs(bias) / (input_scale * limit)
        if np.any(needed > weight_scale):
            widened = np.maximum(weight_scale, needed * 1.01)
            if weight_scale.ndim == 0:  # per tensor: one wider scale for all channels
                widened = np.asarray(widened.max())
            # The channel keeps its integers (now at the wider scale): only channels whose
            # weights are (nearly) all zero need this, where it makes no difference.
            weights[weight_key] = QuantParams(widened.astype(np.float32), weight.zero_point, weight.dtype,
                                              weight.axis)
            weight_scale = widened
        scale = np.asarray(input_scale * weight_scale, dtype=np.float32)
        planned[key] = QuantParams(scale, np.zeros(scale.shape, dtype=np.int32), "int32",
                                   0 if scale.ndim == 1 else None)
    return planned
