"""``edgeopt.quantize``: one verb, a config object per technique, a handler registered per config."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from .config import AUTO_CALIBRATION_METHODS, DynamicConfig, Float16Config, Int8Config, Int16x8Config, _Config
from .data import input_specs, iterate_feeds
from .errors import EdgeoptError
from .model_io import load_model, passes_full_check, save_model
from .quantization import dynamic, fallback, qdq, static, weights
from .quantization.graph import FLOAT_TYPES, GraphView, tensor_dtypes
from .fidelity import relative_error, worst_cosine
from .quantization.calibration import holds_sentinels
from .quantization.integer_io import make_integer_io
from .quantization.prepare import prepare

logger = logging.getLogger(__name__)

_HANDLERS: dict[type, Callable] = {}
# Calibration samples replayed to check the result against float (and to steer the fallback).
FIDELITY_SAMPLES = 64
#: Samples after the check samples whose input moments compensated rounding fits on.
ROUNDING_SAMPLES = 128


def register_handler(config_type: type):
    def decorate(function):
        _HANDLERS[config_type] = function
        return function
    return decorate


@dataclass
class QuantizationResult:
    """The quantized model and a report of what was done (JSON-serialisable)."""

    model: onnx.ModelProto
    report: dict = field(default_factory=dict)

    def save(self, path) -> None:
        save_model(self.model, path)


def quantize(model, config: _Config, calibration=None) -> QuantizationResult:
    """Quantize ``model`` (path or ``onnx.ModelProto``) as ``config`` says.

    ``calibration`` (needed by :class:`Int8Config` and :class:`Int16x8Config`) is an ``.npz`` path,
    an image folder, a dict of arrays, or any iterable of input dicts.
    """
    if not isinstance(config, _Config):
        raise EdgeoptError(f"config must be one of Float16Config, DynamicConfig, Int8Config, Int16x8Config; "
                           f"got {type(config).__name__}")
    handler = _HANDLERS[type(config)]
    source = load_model(model)
    _check_has_float_weights(source)
    full_check = passes_full_check(source)
    started = time.perf_counter()
    prepared = onnx.ModelProto()
    prepared.CopyFrom(source)
    prepare(prepared)
    result = handler(prepared, config, calibration)
    try:
        onnx.checker.check_model(result.model, full_check=full_check)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"the {config.mode} model edgeopt built fails onnx's checker ({first}); "
                           "please report this with the model") from None
    result.report.update({
        "mode": config.mode, "config": config.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
        "size_bytes": {"float": source.ByteSize(), "quantized": result.model.ByteSize()},
    })
    return result


def _check_has_float_weights(model: onnx.ModelProto) -> None:
    def float_weights(graph):
        if any(init.data_type in FLOAT_TYPES for init in graph.initializer):
            return True
        for node in graph.node:
            if node.op_type == "Constant" and any(
                    a.t.data_type in FLOAT_TYPES for a in node.attribute if a.name == "value"):
                return True
            for attr in node.attribute:
                bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                if any(float_weights(body) for body in bodies):
                    return True
        return False

    if not float_weights(model.graph):
        raise EdgeoptError("the model has no float weights to quantize (expected float32 initializers or "
                           "Constant nodes)")


def _excluded_weights(model: onnx.ModelProto, exclude: tuple[str, ...]) -> set[str]:
    """Inputs of the nodes the user keeps float (checked: every entry must match a node)."""
    static.check_exclusions(GraphView(model), exclude)
    return {name for node in model.graph.node if node.name in exclude or node.op_type in exclude
            for name in node.input}


@register_handler(Float16Config)
def _float16(model: onnx.ModelProto, config: Float16Config, calibration) -> QuantizationResult:
    stored = weights.store_float16(model, config.min_elements, skip=_excluded_weights(model, config.exclude))
    return QuantizationResult(model, {"float16_weights": len(stored)})


@register_handler(DynamicConfig)
def _dynamic(model: onnx.ModelProto, config: DynamicConfig, calibration) -> QuantizationResult:
    skip = _excluded_weights(model, config.exclude)
    original = {init.name for init in model.graph.initializer}
    rewritten = dynamic.quantize_matmuls(model, config.per_channel, config.min_elements, config.exclude,
                                         config.activation_granularity)
    stored = weights.store_int8(model, config.min_elements, skip=skip, per_channel=config.per_channel,
                                only=original)
    return QuantizationResult(model, {"dynamic_matmuls": rewritten, "int8_stored_weights": len(stored)})


@register_handler(Int8Config)
@register_handler(Int16x8Config)
def _static(model: onnx.ModelProto, config: Int8Config, calibration) -> QuantizationResult:
    if calibration is None:
        raise EdgeoptError(f"mode {config.mode} needs calibration data (--calibration DATA.npz or an image folder)")
    view = GraphView(model)
    excluded = _excluded_weights(model, config.exclude)
    original = {init.name for init in model.graph.initializer}
    specs = input_specs(model)
    dtypes = tensor_dtypes(model)
    selection = static.select(view, dtypes, integer_only=config.integer_only, per_channel=config.per_channel,
                              exclude=config.exclude)
    if not selection.nodes:
        if config.integer_only:
            raise EdgeoptError("integer-only: no operator in the main graph can be quantized (none of Conv, "
                               "MatMul, Gemm, Add, ... with float inputs)")
        # Nothing to calibrate (e.g. all compute inside If/Loop bodies): still shrink the weights.
        stored = weights.store_int8(model, skip=excluded, per_channel=config.per_channel)
        logger.warning("no operator can be quantized statically; stored %d weights as int8 only", len(stored))
        return QuantizationResult(model, {"quantized_nodes": {}, "int8_stored_weights": len(stored),
                                          "kept_float": {"*": "no operator in the main graph can be quantized "
                                                              "statically; weights stored as int8 only"}})
    feeds = iterate_feeds(calibration, specs, "calibration data")
    check_feeds: list = []

    def remember(stream):
        """Keep the first FIDELITY_SAMPLES samples for checks; compensated rounding fits its
        moments on the samples after them, so its keep-or-drop decision is made on held-out data."""
        for feed in stream:
            if len(check_feeds) * _batch(feed) < FIDELITY_SAMPLES:
                check_feeds.append(feed)
            yield feed

    means_for = static.bias_correction_inputs(selection) if config.bias_correction else set()
    windows = static.conv_window_geometry(selection, view) if config.bias_correction else {}
    moment_inputs = static.rounding_inputs(selection, view) if config.weight_rounding == "compensated" else {}
    observers, samples = static.calibrate(model, selection.activations, remember(feeds),
                                          config.max_calibration_samples, channel_means_for=means_for,
                                          conv_windows=windows, moment_inputs=moment_inputs,
                                          moment_samples=(FIDELITY_SAMPLES, FIDELITY_SAMPLES + ROUNDING_SAMPLES))
    logger.info("calibrated %d tensors on %d samples", len(observers), samples)
    reference = _run(model, check_feeds)

    # Tensors that hold sentinel values (additive attention masks) stay float whatever the mode.
    sentinels = {name: _sentinel_reason(observers[name]) for name in sorted(selection.activations)
                 if holds_sentinels(observers[name])}
    if sentinels and config.integer_only:
        name = next(iter(sentinels))
        raise EdgeoptError(f"integer-only: tensor {name!r} {sentinels[name]}")
    selection = _select(view, dtypes, config, set(sentinels))
    rounded = static.round_weights(view, selection, observers) if moment_inputs else {}
    # "auto" scope: quantize only MatMul/Gemm inputs when quantizing everything misses the target on
    # a model without convolutions (a transformer's residual stream and normalisations hold
    # outliers a per-tensor int8 grid cannot; MatMulIntegerToFloat keeps the speed).
    has_matmul_inputs = config.scope != "all" and bool(
        _select(view, dtypes, config, set(sentinels), "matmul-inputs").nodes)
    if config.scope == "matmul-inputs" and not has_matmul_inputs:
        raise EdgeoptError("scope 'matmul-inputs': the model has no MatMul or Gemm with a constant weight and "
                           "float inputs to quantize")
    if config.scope != "auto":
        scopes = (config.scope,)
    elif (has_matmul_inputs and not config.integer_only and config.activation_type != "int16"
          and not any(node.op_type in ("Conv", "ConvTranspose") for node in selection.nodes)):
        scopes = ("all", "matmul-inputs")
    else:
        scopes = ("all",)
    scope = scopes[0]
    correct_biases = config.bias_correction
    compensate = bool(rounded)
    methods = AUTO_CALIBRATION_METHODS if config.calibration_method == "auto" else (config.calibration_method,)
    method = methods[0]
    measured: dict[tuple, tuple[float, float]] = {}
    # Every build edits a copy of the same model: its integer weights are computed once.
    plan_memo: dict = {}
    storage_memo: dict = {}

    def build(keep_float: frozenset):
        current = _select(view, dtypes, config, set(keep_float | frozenset(sentinels)), scope)
        plan = static.plan(view, current, observers, method=method,
                           percentile=config.percentile, activation_type=config.activation_type,
                           correct_biases=correct_biases, weight_values=rounded if compensate else None)
        quantized = onnx.ModelProto()
        quantized.CopyFrom(model)
        qdq.apply_plan(quantized, plan, plan_memo, float_readers_read_float=not config.integer_only)
        io_params = make_integer_io(quantized, plan) if config.integer_only else {}
        weights.store_int8(quantized, skip=excluded, per_channel=config.per_channel, only=original,
                           memo=storage_memo)
        return plan, quantized, io_params

    def evaluate(keep_float: frozenset) -> tuple[float, float]:
        """(worst output cosine, relative squared error) on the check samples; each build once."""
        key = (keep_float, scope, method, correct_biases, compensate)
        if key not in measured:
            _, quantized, io_params = build(keep_float)
            outputs = _run(quantized, check_feeds, io_params)
            measured[key] = (worst_cosine(reference, outputs), relative_error(reference, outputs))
        return measured[key]

    # "auto": the activation ranges of the calibration method whose model is closest to float on
    # the check samples (no one method wins on every model: see benchmarks/READING.md).
    # (scope, method) -> (worst cosine, relative error); a later scope only if the best so far
    # misses the target.
    choices: dict[tuple[str, str], tuple[float, float]] = {}
    for scope in scopes:
        if choices and choices[min(choices, key=lambda c: choices[c][1])][0] >= config.target_cosine:
            break
        for method in methods:
            choices[(scope, method)] = evaluate(frozenset())
    method_errors = {choice: error for choice, (_, error) in choices.items()}
    scope, method = min(method_errors, key=method_errors.get)
    if len(method_errors) > 1:
        logger.info("relative output error by (scope, calibration method): %s; kept %s",
                    {f"{k[0]}/{k[1]}": round(e, 6) for k, e in method_errors.items()}, (scope, method))
    selection = _select(view, dtypes, config, set(sentinels), scope)
    # Compensated rounding and bias correction are estimates from calibration statistics: keep each
    # only where it measurably lowers the output error on the check samples.
    options = [(b, c) for b in dict.fromkeys((correct_biases, False)) for c in dict.fromkeys((compensate, False))]
    errors = {}
    for correct_biases, compensate in options:
        errors[(correct_biases, compensate)] = evaluate(frozenset())[1]
    correct_biases, compensate = min(options, key=lambda option: (errors[option], -option[1], -option[0]))
    logger.info("relative output error by (bias correction, compensated rounding): %s; kept %s",
                {f"{b}/{c}": round(e, 6) for (b, c), e in errors.items()}, (correct_biases, compensate))
    if config.integer_only or not config.fallback:
        cosine, _ = evaluate(frozenset())
        decision = fallback.FallbackDecision(worst_cosine=cosine, steps=[{"kept_float": 0,
                                                                          "worst_cosine": round(cosine, 6)}])
    else:
        # Candidates: the tensors the all-int8 plan quantizes, in graph order.
        first_plan = static.plan(view, selection, observers, method=method,
                                 percentile=config.percentile, activation_type=config.activation_type,
                                 correct_biases=correct_biases, weight_values=rounded if compensate else None)
        decision = fallback.choose(list(first_plan.activations), evaluate, config.target_cosine,
                                   config.fallback_max_fraction)
    plan, quantized, io_params = build(frozenset(decision.keep_float))
    plan.kept_float.update(sentinels)
    plan.kept_float.update(decision.keep_float)
    cosine, attempts = decision.worst_cosine, decision.steps
    report = {
        "calibration_samples": samples,
        "quantized_nodes": _count_ops(model, plan.nodes),
        "absorbed_activations": len(plan.absorbed),
        "scope": scope,
        "calibration_method": method,
        # "scope/method" -> relative output error on the check samples, for every build compared
        "calibration_errors": {f"{k[0]}/{k[1]}": round(e, 8) for k, e in method_errors.items()},
        "bias_correction": correct_biases,
        "weight_rounding": "compensated" if compensate else "nearest",
        "kept_float": plan.kept_float,
        "worst_output_cosine_on_calibration": round(cosine, 6),
        "fallback_steps": attempts,
        "integer_io": io_params,
        "plan": plan.to_dict(),
    }
    if cosine < config.target_cosine:
        logger.warning("worst output cosine %.4f is below the target %.4f", cosine, config.target_cosine)
    return QuantizationResult(quantized, report)


def _sentinel_reason(observer) -> str:
    seen = f"values in [{observer.min:.3g}, {observer.max:.3g}]"
    if observer.nonfinite:
        seen += f" and {observer.nonfinite} infinite or NaN values"
    return (f"holds sentinel values (e.g. an additive attention mask): {seen}; no integer grid holds "
            "them and the other values together")


def _select(view, dtypes, config, keep_float, scope="all"):
    return static.select(view, dtypes, integer_only=config.integer_only, per_channel=config.per_channel,
                         exclude=config.exclude, keep_float=keep_float, scope=scope)


def _batch(feed) -> int:
    first = next(iter(feed.values()))
    return len(first) if first.ndim else 1


def _count_ops(model, names) -> dict[str, int]:
    wanted = set(names)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in wanted:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _run(model, feeds, io_params=None):
    from .measure import decode_outputs, encode_feed
    from .runtime import make_session, run_checked

    session = make_session(model)
    outputs = []
    for feed in feeds:
        feed = encode_feed(feed, io_params) if io_params else feed
        result = run_checked(session, None, feed, "calibration data")
        if io_params:
            result = decode_outputs(result, [o.name for o in session.get_outputs()], io_params)
        outputs.append(result)
    return outputs
