"""``edgeopt.quantize``: one verb, a config object per technique, a handler registered per config."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from .config import AUTO_CALIBRATION_METHODS, FULL_RANGE_METHOD, DynamicConfig, Float16Config, Int8Config, Int16x8Config, _Config
from .data import input_specs, iterate_feeds
from . import external_data
from .errors import EdgeoptError
from .model_io import load_model, passes_full_check, save_model
from .quantization import dynamic, fallback, qdq, search, weights
from .quantization.calibrate import Calibration, calibrate
from .quantization.candidates import Candidate, CandidateBuilder
from .quantization.graph import FLOAT_TYPES, GraphView, tensor_dtypes
from .quantization.operators import NON_COMPUTE, rule_for
from .quantization.plan import METADATA_KEY as PLAN_METADATA_KEY
from .quantization.plan import QuantizationPlan
from .quantization.prepare import prepare
from .quantization.read_plan import check_plan_fits, read_plan
from .quantization.strip import strip_qdq
from .quantization.select import (check_exclusions, excluded_nodes, normalization_statistics,
                                  pointwise_interiors, select)

logger = logging.getLogger(__name__)

_HANDLERS: dict[type, Callable] = {}


def register_handler(config_type: type):
    def decorate(function):
        _HANDLERS[config_type] = function
        return function
    return decorate


@dataclass
class QuantizationResult:
    """The quantized model, a report of what was done (JSON-serialisable) and, for int8 and
    int16x8, the :class:`QuantizationPlan` that was applied (``read_plan(result.model)`` returns
    an equal one)."""

    model: onnx.ModelProto
    report: dict = field(default_factory=dict)
    plan: QuantizationPlan | None = None

    def save(self, path) -> None:
        """Write the model: ONNX, or TFLite when ``path`` ends in ``.tflite`` (the tflite extra)."""
        if str(path).lower().endswith(".tflite"):
            from .tflite.export import export

            export(self.model).save(path)
            return
        save_model(self.model, path)


def quantize(model, config: _Config, calibration=None, plan: QuantizationPlan | None = None
             ) -> QuantizationResult:
    """Quantize ``model`` (path or ``onnx.ModelProto``) as ``config`` says.

    ``calibration`` (needed by :class:`Int8Config` and :class:`Int16x8Config`) is an ``.npz`` path,
    an image folder, a dict of arrays, or any iterable of input dicts. ``plan`` (int8 and int16x8
    only) builds the model a given :class:`QuantizationPlan` describes instead of calibrating: one
    from an earlier result, or :func:`read_plan` of a QDQ model (quantization-aware training).
    """
    if not isinstance(config, _Config):
        raise EdgeoptError(f"config must be one of Float16Config, DynamicConfig, Int8Config, Int16x8Config; "
                           f"got {type(config).__name__}")
    if type(config) not in _HANDLERS:
        raise EdgeoptError(f"{type(config).__name__} is not a quantize() mode; QATConfig is for "
                           "edgeopt.torch.prepare_qat (the torch extra)")
    handler = _HANDLERS[type(config)]
    if plan is not None and not isinstance(config, Int8Config):
        raise EdgeoptError(f"plan= needs Int8Config or Int16x8Config; got {type(config).__name__}")
    if plan is not None and not isinstance(plan, QuantizationPlan):
        raise EdgeoptError(f"plan must be a QuantizationPlan (from a result or read_plan); got {type(plan).__name__}")
    source = load_model(model)
    if plan is None and isinstance(config, Int8Config) and _is_qdq(source):
        source, plan = _float_and_plan(source)
        # the QDQ model's own decisions, with the inputs and outputs the config asks for
        # (make_integer_io refuses a plan that leaves a float operator)
        plan.integer_only = config.integer_only
    _check_not_quantized(source)
    _check_has_float_weights(source)
    full_check = passes_full_check(source)
    started = time.perf_counter()
    prepared = onnx.ModelProto()
    prepared.CopyFrom(source)
    prepare(prepared)
    result = handler(prepared, config, calibration, plan) if plan is not None else \
        handler(prepared, config, calibration)
    try:
        external_data.check(result.model, full_check=full_check)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"the {config.mode} model edgeopt built fails onnx's checker ({first}); "
                           "please report this with the model") from None
    result.report.update({
        "mode": config.mode, "config": config.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
        "size_bytes": {"float": external_data.byte_size(source), "quantized": external_data.byte_size(result.model)},
    })
    return result


#: Operators only a quantizer writes: a model holding them is already quantized.
QUANTIZED_OPERATORS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                       "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                       "DynamicQuantizeLSTM", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                       "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
                       "QLinearSoftmax", "QAttention", "MatMulNBits"}


def _is_qdq(model: onnx.ModelProto) -> bool:
    """A QDQ model edgeopt's own pass wrote (its plan in the metadata): quantized only by
    QuantizeLinear/DequantizeLinear pairs, no integer kernels. Other tools' QDQ models are
    refused: their pairs sit where their own graph passes left tensors (ONNX Runtime's quantizer
    quantizes a Conv output before a BatchNormalization that edgeopt's preparation folds)."""
    found = {node.op_type for node in model.graph.node} & QUANTIZED_OPERATORS
    return found == {"QuantizeLinear", "DequantizeLinear"} and any(
        entry.key == PLAN_METADATA_KEY for entry in model.metadata_props)


def _float_and_plan(model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantizationPlan]:
    """A QDQ model (a quantization-aware training export, or edgeopt's own) as the float graph and
    the plan its pairs describe; absorbed Relu/Clip nodes are not in it, so none is absorbed."""
    plan = read_plan(model)
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    strip_qdq(stripped)
    plan.nodes = [name for name in plan.nodes if name not in plan.absorbed]
    plan.absorbed = {}
    logger.info("the model is QDQ: rebuilding it from its own plan (%d quantized tensors)", len(plan.activations))
    return stripped, plan


def _check_not_quantized(model: onnx.ModelProto) -> None:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPERATORS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if counts:
        found = ", ".join(f"{op} x{count}" for op, count in sorted(counts.items()))
        hint = ("; to rebuild a QDQ model from its own decisions, pass the float model with "
                "plan=edgeopt.read_plan(qdq_model)") if "DequantizeLinear" in counts else ""
        raise EdgeoptError(f"the model is already quantized ({found}); expected a float model{hint}")


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
    check_exclusions(GraphView(model), exclude)
    return {name for node in excluded_nodes(model, exclude) for name in node.input}


@register_handler(Float16Config)
def _float16(model: onnx.ModelProto, config: Float16Config, calibration) -> QuantizationResult:
    stored = weights.store_float16(model, config.min_elements, skip=_excluded_weights(model, config.exclude))
    return QuantizationResult(model, {"float16_weights": len(stored)})


@register_handler(DynamicConfig)
def _dynamic(model: onnx.ModelProto, config: DynamicConfig, calibration) -> QuantizationResult:
    skip = _excluded_weights(model, config.exclude)
    original = {init.name for init in model.graph.initializer}
    rewritten = dynamic.quantize_matmuls(model, config.per_channel, config.min_elements, config.exclude,
                                         config.activation_granularity, config.weight_range)
    stored = weights.store_int8(model, config.min_elements, skip=skip, per_channel=config.per_channel,
                                only=original)
    return QuantizationResult(model, {"dynamic_matmuls": rewritten, "int8_stored_weights": len(stored)})


@register_handler(Int8Config)
@register_handler(Int16x8Config)
def _static(model: onnx.ModelProto, config: Int8Config, calibration, given_plan=None) -> QuantizationResult:
    if given_plan is not None:
        return _from_plan(model, config, given_plan)
    if calibration is None:
        raise EdgeoptError(f"mode {config.mode} needs calibration data (--calibration DATA.npz or an image folder)")
    view = GraphView(model)
    check_exclusions(view, config.exclude)
    dtypes = tensor_dtypes(model)
    everything = select(view, dtypes, integer_only=config.integer_only,
                        per_channel=config.per_channel, exclude=config.exclude)
    if not everything.nodes:
        return _weights_only(model, config)
    if config.integer_only:
        _check_integer_kernels(view, dtypes, everything)
    feeds = iterate_feeds(calibration, input_specs(model), "calibration data")
    measured = calibrate(model, everything, feeds, max_samples=config.max_calibration_samples,
                         bias_correction=config.bias_correction,
                         compensated_rounding=config.weight_rounding == "compensated")
    sentinels = {name: reason for name, reason in measured.sentinels().items() if name in everything.activations}
    if sentinels and config.integer_only:
        name = next(iter(sentinels))
        raise EdgeoptError(f"integer-only: tensor {name!r} {sentinels[name]}")
    # Integer-only models must quantize everything; elsewhere normalization statistics and the
    # inside of decomposed activations stay float.
    float_by_design = {} if config.integer_only else {
        name: reason for name, reason in {**pointwise_interiors(view), **normalization_statistics(view)}.items()
        if name in everything.activations}
    builder = CandidateBuilder(model, config, measured, {**float_by_design, **sentinels}, dtypes)
    chosen, scores, decision = _search(builder, config)
    builder.progress.close()
    built = builder.build(chosen.but(keep_float=frozenset(decision.keep_float)))
    built.plan.kept_float.update(decision.keep_float)
    qdq.record_plan(built.model, built.plan)
    final_score = builder.score(chosen.but(keep_float=frozenset(decision.keep_float)))
    report = _static_report(model, built, chosen, scores, decision, measured.samples, final_score)
    if decision.worst_cosine < config.target_cosine:
        logger.warning("worst output cosine %.4f is below the target %.4f", decision.worst_cosine,
                       config.target_cosine)
    return QuantizationResult(built.model, report, built.plan)


def _check_integer_kernels(view: GraphView, dtypes: dict[str, int], selection) -> None:
    """Integer-only: refuse before calibrating (seconds on a large model) a model with an operator
    no integer kernel runs (LSTM, LayerNormalization, ...); the built model is checked again."""
    selected = {node.name for node in selection.nodes}
    for node in view.graph.node:
        if node.name in selected or node.op_type in NON_COMPUTE or rule_for(node) is not None:
            continue
        if any(name and dtypes.get(name) in FLOAT_TYPES and not view.is_constant(name) for name in node.input):
            raise EdgeoptError(f"integer-only: operator {node.op_type} (node {node.name!r}) cannot run in integer "
                               "arithmetic; quantize without --integer-only or remove it from the model")


def _search(builder: CandidateBuilder, config: Int8Config):
    """Ranges, then refinements, then the fallback; returns the candidate, every score by label,
    and the fallback's decision. With scope ``auto``, a model that still misses the target is
    tried with MatMul/Gemm inputs only, and the closer of the two results wins."""
    scopes = _scopes(builder, config)
    chosen, scores, decision = _search_scopes(builder, config, scopes)
    if decision.worst_cosine < config.target_cosine and scopes == ("all",) and config.scope == "auto" \
            and _matmul_inputs_apply(builder, config):
        other, other_scores, other_decision = _search_scopes(builder, config, ("matmul-inputs",))
        scores.update(other_scores)
        final = builder.score(chosen.but(keep_float=frozenset(decision.keep_float)))
        if builder.score(other.but(keep_float=frozenset(other_decision.keep_float))).error < final.error:
            chosen, decision = other, other_decision
    if config.attribution and not decision.attribution:
        decision.attribution = fallback.attribute(list(builder.plan(chosen).activations), simulated(builder, chosen))
    return chosen, scores, decision


def _search_scopes(builder: CandidateBuilder, config: Int8Config, scopes: tuple[str, ...]):
    """Ranges, refinements and the fallback within ``scopes``. With method ``auto``, a model that
    still misses the target after the fallback on clipped ranges is tried once more on minmax
    ranges, and the closer result wins: keeping a tensor float undoes a range an outlier
    stretched, not clipping spread over every tensor (PP-OCRv5's detector, held out: 0.9706 on
    percentile ranges with the fallback, 0.9764 on minmax)."""
    methods = AUTO_CALIBRATION_METHODS if config.calibration_method == "auto" else (config.calibration_method,)
    base = Candidate(scope=scopes[0], method=methods[0], bias_correction=config.bias_correction,
                     compensated_rounding=config.weight_rounding == "compensated")
    chosen, scores, screened = search.choose_ranges(base, scopes, methods, builder.score, config.target_cosine,
                                                    screen=builder.screen)
    builder.close_screening()
    scores.update({f"{label}/screened": score for label, score in screened.items()})
    chosen, decision = _refine_and_fall_back(builder, config, chosen, scores)
    if decision.worst_cosine < config.target_cosine and FULL_RANGE_METHOD in methods \
            and chosen.method != FULL_RANGE_METHOD and config.fallback and not config.integer_only:
        other, other_decision = _refine_and_fall_back(
            builder, config, base.but(scope=chosen.scope, method=FULL_RANGE_METHOD), scores)
        if _final_score(builder, other, other_decision).error < _final_score(builder, chosen, decision).error:
            logger.info("minmax ranges with the fallback are closer to float than %s ranges with it", chosen.method)
            chosen, decision = other, other_decision
    return chosen, scores, decision


def _refine_and_fall_back(builder: CandidateBuilder, config: Int8Config, chosen: Candidate, scores: dict):
    """Bias correction and compensated rounding for ``chosen``, then the fallback (``scores``
    gains the refinements' scores)."""
    # No weight had input moments (too few samples beyond the check samples): nothing to compensate.
    chosen = chosen.but(compensated_rounding=chosen.compensated_rounding and builder.can_compensate(chosen.scope))
    chosen, refinements = search.choose_refinements(chosen, builder.score)
    scores.update({f"{chosen.label()}/{label}": score for label, score in refinements.items()})
    if config.integer_only or not config.fallback:
        cosine = builder.score(chosen).worst_cosine
        return chosen, fallback.FallbackDecision(worst_cosine=cosine,
                                                 steps=[{"kept_float": 0, "worst_cosine": round(cosine, 6)}])
    return chosen, _fallback(builder, chosen, config)


def _final_score(builder: CandidateBuilder, chosen: Candidate, decision: fallback.FallbackDecision):
    return builder.score(chosen.but(keep_float=frozenset(decision.keep_float)))


def simulated(builder: CandidateBuilder, chosen: Candidate):
    return lambda keep: builder.simulated_score(chosen.but(keep_float=keep))


def _fallback(builder: CandidateBuilder, chosen: Candidate, config: Int8Config) -> fallback.FallbackDecision:
    """The fallback decides on the simulation; its choice is then built and measured for real, and
    dropped if the real model is not better than all-int8."""
    candidates = list(builder.plan(chosen).activations)
    real = builder.score(chosen)
    if real.worst_cosine >= config.target_cosine:
        return fallback.FallbackDecision(worst_cosine=real.worst_cosine,
                                         steps=[{"kept_float": 0, "worst_cosine": round(real.worst_cosine, 6)}])
    decision = fallback.choose(candidates, simulated(builder, chosen),
                               fallback.simulated_target(config.target_cosine, builder.simulated_score(chosen), real),
                               config.fallback_max_fraction)
    if decision.keep_float:
        if builder.score(chosen.but(keep_float=frozenset(decision.keep_float))).error >= real.error:
            logger.info("fallback: the model built with %d tensors float is no better than all-int8; keeping none",
                        len(decision.keep_float))
            decision.keep_float = {}
    decision.worst_cosine = builder.score(chosen.but(keep_float=frozenset(decision.keep_float))).worst_cosine
    return decision


def _matmul_inputs_apply(builder: CandidateBuilder, config: Int8Config) -> bool:
    return not config.integer_only and config.activation_type != "int16" and \
        bool(builder.selection(Candidate(scope="matmul-inputs")).nodes)


def _scopes(builder: CandidateBuilder, config: Int8Config) -> tuple[str, ...]:
    """``auto``: quantize only MatMul/Gemm inputs when quantizing everything misses the target on
    a model without convolutions (a transformer's residual stream and normalisations hold
    outliers a per-tensor int8 grid cannot; MatMulIntegerToFloat keeps the speed); models with
    convolutions try it after the fallback (see :func:`_search`)."""
    if config.scope == "matmul-inputs" and not builder.selection(Candidate(scope="matmul-inputs")).nodes:
        raise EdgeoptError("scope 'matmul-inputs': the model has no MatMul or Gemm with a constant weight and "
                           "float inputs to quantize")
    if config.scope != "auto":
        return (config.scope,)
    convolutions = any(node.op_type in ("Conv", "ConvTranspose") for node in builder.selection(Candidate()).nodes)
    if _matmul_inputs_apply(builder, config) and not convolutions:
        return ("all", "matmul-inputs")
    return ("all",)


def _static_report(model, built, chosen: Candidate, scores: dict, decision, samples: int, final_score) -> dict:
    errors = {label: score.error for label, score in scores.items() if label.count("/") == 1 and "=" not in label}
    return {
        "calibration_samples": samples,
        "quantized_nodes": _count_ops(model, built.plan.nodes),
        "absorbed_activations": len(built.plan.absorbed),
        "scope": chosen.scope,
        "calibration_method": chosen.method,
        # "scope/method" -> relative output error on the check samples, for every build compared
        "calibration_errors": {label: round(error, 8) for label, error in errors.items()},
        # "scope/method" -> the same on the first few check samples, for every pair screened (only
        # those close to the best screened one are scored on all check samples)
        "screening_errors": {label[:-len("/screened")]: round(score.error, 8) for label, score in scores.items()
                             if label.endswith("/screened")},
        "candidate_scores": {label: score.to_dict() for label, score in scores.items()},
        "fidelity_measure": ("pooled over the check samples, per output: error = squared error over signal "
                             "energy, cosine = cosine of all samples as one vector; the worst output counts. "
                             "worst_sample_cosine: lowest per-sample cosine, silent samples left out"),
        "bias_correction": chosen.bias_correction,
        "weight_rounding": "compensated" if chosen.compensated_rounding else "nearest",
        "kept_float": built.plan.kept_float,
        "worst_output_cosine_on_calibration": round(decision.worst_cosine, 6),
        "worst_sample_cosine_on_calibration": round(final_score.worst_sample_cosine, 6),
        "fallback_steps": decision.steps,
        # per block of tensors in graph order: the output error it adds when quantized on top of
        # the blocks before it (computed when the fallback runs, or with attribution=True)
        "attribution": decision.attribution,
        "integer_io": built.io_params,
        "plan": built.plan.to_dict(),
    }


def _weights_only(model: onnx.ModelProto, config: Int8Config) -> QuantizationResult:
    """Nothing to calibrate (e.g. all compute inside If/Loop bodies): still shrink the weights."""
    if config.integer_only:
        raise EdgeoptError("integer-only: no operator in the main graph can be quantized (none of Conv, "
                           "MatMul, Gemm, Add, ... with float inputs)")
    stored = weights.store_int8(model, skip=_excluded_weights(model, config.exclude), per_channel=config.per_channel)
    logger.warning("no operator can be quantized statically; stored %d weights as int8 only", len(stored))
    return QuantizationResult(model, {"quantized_nodes": {}, "int8_stored_weights": len(stored),
                                      "kept_float": {"*": "no operator in the main graph can be quantized "
                                                          "statically; weights stored as int8 only"}})


def _from_plan(model: onnx.ModelProto, config: Int8Config, given: QuantizationPlan) -> QuantizationResult:
    """Build the int8 model a given plan describes (no calibration, no search)."""
    check_exclusions(GraphView(model), config.exclude)
    check_plan_fits(model, given)
    if given.integer_only != config.integer_only:
        raise EdgeoptError(f"the plan is for a model with {'integer' if given.integer_only else 'float'} inputs and "
                           f"outputs; the config has integer_only={config.integer_only}")
    if given.activation_type != config.activation_type:
        raise EdgeoptError(f"the plan quantizes activations to {given.activation_type}; the config asks for "
                           f"{config.activation_type}")
    if config.shared_add_scale:
        raise EdgeoptError("shared_add_scale applies when calibrating; a given plan (or the plan of an edgeopt "
                           "QDQ model) keeps its own scales: quantize the float model with calibration data")
    builder = CandidateBuilder(model, config, Calibration({}, 0), {})
    built = builder.build_plan(given)
    report = {"quantized_nodes": _count_ops(model, given.nodes), "absorbed_activations": len(given.absorbed),
              "kept_float": given.kept_float, "integer_io": built.io_params, "plan": given.to_dict(),
              "from_plan": True}
    return QuantizationResult(built.model, report, given)


def _count_ops(model, names) -> dict[str, int]:
    wanted = set(names)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in wanted:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
