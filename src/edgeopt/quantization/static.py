"""Static (calibrated) quantization: select what to quantize, calibrate, plan the parameters.

These functions decide and return data; :mod:`.qdq` edits the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import EdgeoptError
from .calibration import HistogramObserver, compute_range
from .graph import GraphView, attribute
from .numerics import INTEGER_RANGES, QuantParams, affine_params, symmetric_params, weight_params
from .operators import activation_bounds, rule_for
from .plan import QuantizationPlan
from . import rounding

logger = logging.getLogger(__name__)

#: Weights with more inputs per output channel keep nearest rounding (an inputs^2 matrix each).
MAX_ROUNDING_INPUTS = 4096


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
        raise EdgeoptError(f"exclude: {unknown} match no node name or operator type in the model")


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


def calibrate(model: onnx.ModelProto, tensors: set[str], feeds, max_samples: int | None = None,
              channel_means_for: set[str] = frozenset(), conv_windows: dict | None = None,
              moment_inputs: dict | None = None, moment_samples: tuple[int, int] = (0, 128),
              ) -> tuple[dict[str, HistogramObserver], int]:
    """Run the float model over ``feeds`` and collect a histogram per tensor (bounded memory);
    also the channel means, convolution window means, and the input second moments asked for
    (from the samples numbered ``moment_samples[0]`` up to, not including, ``moment_samples[1]``)."""
    from ..runtime import make_session, run_checked

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {value.name for value in probe.graph.output}
    inputs = {value.name for value in probe.graph.input}
    for name in sorted(tensors - existing - inputs):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = make_session(probe, optimize=False)
    names = [value.name for value in probe.graph.output]
    wanted = [name for name in names if name in tensors]
    observers = {name: HistogramObserver() for name in tensors}
    samples = 0
    for feed in feeds:
        results = run_checked(session, wanted, feed, "calibration data")
        for name, value in list(zip(wanted, results)) + [(n, feed[n]) for n in tensors & set(feed)]:
            observers[name].update(value)
            if name in channel_means_for:
                observers[name].update_channel_means(value)
            for node_name, geometry in (conv_windows or {}).get(name, []):
                if np.ndim(value) == 4:
                    observers[name].update_window_means(node_name, value, *geometry)
            first, stop = moment_samples
            if name in (moment_inputs or {}) and np.ndim(value) and samples < stop and \
                    samples + len(np.asarray(value)) > first:
                part = np.asarray(value)[max(first - samples, 0):stop - samples]
                computed: dict[tuple, tuple[np.ndarray, int]] = {}  # q, k and v read one input
                for node_name, spec in moment_inputs[name]:
                    if spec not in computed:
                        computed[spec] = _moments(part, spec)
                    observers[name].update_moments(node_name, *computed[spec])
        samples += len(next(iter(feed.values()))) if next(iter(feed.values())).ndim else 1
        if max_samples is not None and samples >= max_samples:
            break
    if samples == 0:
        raise EdgeoptError("calibration data is empty; expected at least one sample")
    return observers, samples


def _moments(value: np.ndarray, spec: tuple) -> tuple[np.ndarray, int]:
    if spec[0] == "conv":
        return rounding.conv_patch_moments(value, *spec[1:])
    return rounding.row_moments(value, spec[1])


def rounding_inputs(selection: Selection, view: GraphView) -> dict[str, list]:
    """For the weights compensated rounding can improve: input name -> [(node name, how to form the
    vectors the weight multiplies)], for :func:`calibrate`."""
    inputs: dict[str, list] = {}
    nodes = {node.name: node for node in selection.nodes}
    for (node_name, index), (name, _) in selection.weights.items():
        node = nodes[node_name]
        weight = view.initializers[name]
        dims = tuple(weight.dims)
        spec = None
        if node.op_type == "Conv" and index == 1 and len(dims) == 4 and attribute(node, "auto_pad", b"NOTSET") in (
                b"NOTSET", "NOTSET", b"VALID", "VALID"):
            group = attribute(node, "group", 1)
            if np.prod(dims[1:]) <= MAX_ROUNDING_INPUTS:
                spec = ("conv", group, tuple(dims[2:]), tuple(attribute(node, "strides", [1, 1])),
                        tuple(attribute(node, "pads", [0, 0, 0, 0])), tuple(attribute(node, "dilations", [1, 1])))
        elif node.op_type in ("Gemm", "MatMul") and index == 1 and len(dims) == 2 and \
                not attribute(node, "transA", 0):
            features = dims[1] if node.op_type == "Gemm" and attribute(node, "transB", 0) else dims[0]
            if features <= MAX_ROUNDING_INPUTS:
                spec = ("rows", features)
        if spec is not None:
            inputs.setdefault(node.input[0], []).append((node_name, spec))
    return inputs


def round_weights(view: GraphView, selection: Selection, observers: dict[str, HistogramObserver]
                  ) -> dict[tuple[str, int], np.ndarray]:
    """Compensated int8 weights (as float values on their grid) for every weight whose input
    moments calibration collected; the scales are those :func:`plan` chooses."""
    values = {}
    nodes = {node.name: node for node in selection.nodes}
    readers: dict[str, int] = {}
    for name, _ in selection.weights.values():
        readers[name] = readers.get(name, 0) + 1
    for key, (name, axis) in selection.weights.items():
        if readers[name] > 1:
            continue  # one stored tensor for several layers: nearest rounding, stored once
        node = nodes[key[0]]
        observer = observers.get(node.input[0])
        moments = None if observer is None else observer.moments(key[0])
        if moments is None:
            continue
        weight = view.constant(name).astype(np.float32)
        params = weight_params(weight, axis)
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attribute(node, "transB", 0))
        rows = weight.T if transposed else weight  # output channels x inputs
        rows = rows.reshape(rows.shape[0], -1)
        groups = moments.shape[0]
        scales = np.broadcast_to(np.asarray(params.scale, np.float64).reshape(-1), (rows.shape[0],))
        if rows.shape[1] != moments.shape[1] or rows.shape[0] % groups:
            continue
        per_group = rows.shape[0] // groups
        integers = rounding.compensated_round(rows.reshape(groups, per_group, -1),
                                              scales.reshape(groups, per_group), moments)
        rounded = (integers.reshape(rows.shape) * scales[:, None]).astype(np.float32)
        rounded = rounded.reshape((weight.T if transposed else weight).shape)
        values[key] = rounded.T if transposed else rounded
    return values


def plan(view: GraphView, selection: Selection, observers: dict[str, HistogramObserver], *,
         method: str, percentile: float, activation_type: str, correct_biases: bool = True,
         weight_values: dict | None = None) -> QuantizationPlan:
    """Parameters for every selected tensor, activation absorption, and int32 biases."""
    result = QuantizationPlan(activation_type)
    symmetric = activation_type == "int16"

    def activation_params(name: str) -> QuantParams:
        observer = observers[name]
        low, high = compute_range(observer, method, activation_type, percentile)
        if symmetric:
            return symmetric_params(max(abs(low), abs(high)), activation_type)
        return affine_params(low, high, activation_type)

    for node in selection.nodes:
        rule = rule_for(node)
        result.nodes.append(node.name)
        for name in list(node.input) + list(node.output):
            if name in selection.activations and name not in result.activations:
                if rule.shares_scale and name in node.output and node.input[0] in result.activations:
                    result.activations[name] = result.activations[node.input[0]]
                else:
                    result.activations[name] = activation_params(name)
    _absorb_activations(view, selection, result)
    for key, (name, axis) in selection.weights.items():
        result.weights[key] = weight_params(view.constant(name), axis)
        if weight_values and key in weight_values:
            result.weight_values[key] = weight_values[key]
    for key, name in selection.constants.items():
        values = view.constant(name).astype(np.float32)
        if symmetric:
            result.constants[key] = symmetric_params(np.abs(values).max(initial=0.0), activation_type)
        else:
            result.constants[key] = affine_params(values.min(initial=0.0), values.max(initial=0.0), activation_type)
    if correct_biases:
        _correct_biases(view, selection, result, observers)
    _plan_biases(view, selection, result)
    return result


def conv_window_geometry(selection: Selection, view: GraphView) -> dict[str, list]:
    """For 2-D convolutions to bias-correct: input name -> [(node name, (kernel, strides, pads,
    dilations))], so calibration can measure what the zero-padded windows see."""
    windows: dict[str, list] = {}
    for node in selection.nodes:
        if node.op_type != "Conv" or (node.name, 2) not in selection.biases:
            continue
        weight = view.initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 4 or attribute(node, "auto_pad", b"NOTSET") not in (
                b"NOTSET", "NOTSET", b"VALID", "VALID"):
            continue
        kernel = tuple(weight.dims[2:])
        strides = tuple(attribute(node, "strides", [1, 1]))
        pads = tuple(attribute(node, "pads", [0, 0, 0, 0]))
        dilations = tuple(attribute(node, "dilations", [1, 1]))
        windows.setdefault(node.input[0], []).append((node.name, (kernel, strides, pads, dilations)))
    return windows


def bias_correction_inputs(selection: Selection) -> set[str]:
    """Activations whose per-channel means :func:`plan` needs for bias correction."""
    return {node.input[0] for node in selection.nodes
            if node.op_type in ("Conv", "Gemm") and (node.name, 1) in selection.weights
            and (node.name, 2) in selection.biases}


def _correct_biases(view: GraphView, selection: Selection, result: QuantizationPlan,
                    observers: dict[str, HistogramObserver]) -> None:
    """Bias correction (Nagel et al., 2019): int8 weights shift each output by (W_q - W) E[x];
    subtract that shift, measured with the calibrated mean of every input channel.

    It matters most where inputs have a large mean, e.g. a first convolution fed images whose
    normalised background is far from zero.
    """
    from .numerics import dequantize, quantize

    for node in selection.nodes:
        key, weight_key = (node.name, 2), (node.name, 1)
        observer = observers.get(node.input[0])
        if key not in selection.biases or weight_key not in result.weights or observer is None \
                or observer.channel_means is None:
            continue
        weight = view.constant(node.input[1]).astype(np.float32)
        params = result.weights[weight_key]
        on_grid = result.weight_values.get(weight_key, weight)
        delta = dequantize(quantize(on_grid, params), params).astype(np.float64) - weight
        means = observer.channel_means
        if node.op_type == "Conv":
            group = attribute(node, "group", 1)
            cout, cin_group = delta.shape[0], delta.shape[1]
            if means.size != cin_group * group:
                continue
            owner = np.arange(cout) // (cout // group)
            windows = observer.window_means(node.name)
            if windows is not None and windows.shape == (cin_group * group, int(np.prod(delta.shape[2:]))):
                # Exact: each kernel offset sees its own mean (zero padding lowers it at the borders).
                per_offset = windows.reshape(group, cin_group, -1)[owner]
                shift = np.sum(delta.reshape(cout, cin_group, -1) * per_offset, axis=(1, 2))
            else:
                per_input = delta.reshape(cout, cin_group, -1).sum(axis=2)
                shift = np.sum(per_input * means.reshape(group, cin_group)[owner], axis=1)
        else:  # Gemm
            matrix = delta.T if attribute(node, "transB", 0) else delta  # K x N
            if matrix.shape[0] != means.size:
                continue
            shift = means @ matrix
        bias = view.constant(selection.biases[key]).astype(np.float64)
        if bias.shape != shift.shape:
            continue
        result.bias_values[key] = (bias - shift).astype(np.float32)


def _absorb_activations(view: GraphView, selection: Selection, result: QuantizationPlan) -> None:
    """Drop Relu/Clip after a quantized node when the quantized range already clamps the same way."""
    selected = {node.name for node in selection.nodes}
    for node in selection.nodes:
        rule = rule_for(node)
        if not rule.absorbs_activation or len(node.output) != 1:
            continue
        output = node.output[0]
        consumers = view.consumers.get(output, [])
        if len(consumers) != 1 or output in view.graph_outputs:
            continue
        activation = consumers[0]
        bounds = activation_bounds(activation, view)
        if bounds is None or activation.name not in selected or activation.output[0] not in result.activations:
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


def _plan_biases(view: GraphView, selection: Selection, result: QuantizationPlan) -> None:
    nodes = {node.name: node for node in selection.nodes}
    limit = float(2**31 - 1)
    for key, name in selection.biases.items():
        node_name, index = key
        node = nodes[node_name]
        weight_key = (node_name, 1)
        if weight_key not in result.weights or node.input[0] not in result.activations:
            continue
        bias = result.bias_values.get(key, view.constant(name)).astype(np.float64)
        weight = result.weights[weight_key]
        input_scale = float(result.activations[node.input[0]].scale)
        weight_scale = np.asarray(weight.scale, dtype=np.float64)
        if bias.ndim != 1 or (weight_scale.ndim == 1 and weight_scale.size != bias.size) \
                or not np.all(np.isfinite(bias)):
            continue
        scale = input_scale * weight_scale
        # A bias too large for int32 at this scale: widen that channel's weight scale instead.
        needed = np.abs(bias) / (input_scale * limit)
        if np.any(needed > weight_scale):
            widened = np.maximum(weight_scale, needed * 1.01)
            if weight_scale.ndim == 0:  # per tensor: one wider scale for all channels
                widened = np.asarray(widened.max())
            result.weights[weight_key] = QuantParams(widened.astype(np.float32), weight.zero_point, weight.dtype,
                                                     weight.axis)
            # Compensated integers (if any) are re-rounded onto the widened channels only; those are
            # channels whose weights are (nearly) all zero, where it makes no difference.
            scale = input_scale * widened
        scale = np.asarray(scale, dtype=np.float32)
        result.biases[key] = QuantParams(scale, np.zeros(scale.shape, dtype=np.int32), "int32",
                                         0 if scale.ndim == 1 else None)
