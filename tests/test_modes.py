"""Every quantization mode on every inline model: valid ONNX, runs in ONNX Runtime, smaller, and
close to float on held-out inputs. Also the forms calibration data may take.

Bounds on the worst per-sample output cosine against the float model (held-out inputs: the
calibration uses seed 1, the comparison seed 2) are the issue's: float16 >= 0.999, dynamic >=
0.98, int8 >= 0.97. Size bounds apply to these models because their weights are >= 64x64 and make
up nearly all of the file: int8 weights are 1/4 of float32 (plus scales and graph), float16 1/2.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import edgeopt

import models

MODES = {
    # The test models' layers are all below the default 4096-element floor, which would keep every
    # weight float32; 16 stores them as float16 so the size bound below means something.
    "float16": lambda: edgeopt.Float16Config(min_elements=16),
    "dynamic": lambda: edgeopt.DynamicConfig(),
    "int8": lambda: edgeopt.Int8Config(),
    "int8_integer_only": lambda: edgeopt.Int8Config(integer_only=True),
    "int16x8": lambda: edgeopt.Int16x8Config(),
}
# Worst-sample cosine bounds from the issue; int16x8 has int8 weights and finer activations, so it
# is held to the int8 bound (it is never worse than int8 by construction).
COSINE_BOUND = {"float16": 0.999, "dynamic": 0.98, "int8": 0.97, "int8_integer_only": 0.97, "int16x8": 0.97}
# File size relative to float: float16 halves weights (0.5 + graph and small tensors kept float32);
# int8 weights are a quarter (0.25 + per-channel scales, zero points, graph).
SIZE_BOUND = {"float16": 0.55, "dynamic": 0.4, "int8": 0.4, "int8_integer_only": 0.4, "int16x8": 0.4}
# Integer-only needs every operator to run on integers: LSTM and a Gather on a float table cannot.
# refused before calibration: the first operator no integer kernel runs
INTEGER_ONLY_IMPOSSIBLE = {"lstm": "operator LSTM", "embedding": "operator ReduceMean"}

CALIBRATION_SEED, HELD_OUT_SEED = 1, 2

_results: dict[tuple[str, str], edgeopt.QuantizationResult] = {}


def quantized(case_name: str, mode: str) -> edgeopt.QuantizationResult:
    """Quantize once per (model, mode) and share the result between the tests below."""
    key = (case_name, mode)
    if key not in _results:
        case = models.CASES[case_name]
        _results[key] = edgeopt.quantize(case.build(), MODES[mode](),
                                         calibration=case.feeds(CALIBRATION_SEED, 64))
    return _results[key]


def combinations():
    for case_name in models.CASES:
        for mode in MODES:
            if mode == "int8_integer_only" and case_name in INTEGER_ONLY_IMPOSSIBLE:
                continue
            yield pytest.param(case_name, mode, id=f"{case_name}-{mode}")


def outputs(result: edgeopt.QuantizationResult, feeds, optimize: bool) -> list[np.ndarray]:
    if result.report.get("integer_io"):
        return models.run_integer_only(result.model, feeds, optimize=optimize)
    return models.run(result.model, feeds, optimize=optimize)


@pytest.mark.parametrize("case_name, mode", list(combinations()))
def test_mode_gives_a_valid_model_close_to_float(case_name, mode):
    case = models.CASES[case_name]
    result = quantized(case_name, mode)
    onnx.checker.check_model(result.model, full_check=True)
    feeds = case.feeds(HELD_OUT_SEED, 32)
    reference = models.run(case.build(), feeds)
    # As written (no graph rewrites) and as deployed (ONNX Runtime fuses Q/DQ into integer kernels).
    for optimize in (False, True):
        result_outputs = outputs(result, feeds, optimize)
        assert [o.shape for o in result_outputs] == [r.shape for r in reference]
        cosine = models.worst_cosine(reference, result_outputs)
        assert cosine >= COSINE_BOUND[mode], f"optimize={optimize}: worst cosine {cosine:.5f}"


@pytest.mark.parametrize("case_name, mode", list(combinations()))
def test_mode_shrinks_the_file(case_name, mode):
    case = models.CASES[case_name]
    result = quantized(case_name, mode)
    ratio = len(result.model.SerializeToString()) / len(case.build().SerializeToString())
    assert ratio <= SIZE_BOUND[mode]
    assert result.report["size_bytes"]["quantized"] == result.model.ByteSize()


@pytest.mark.parametrize("case_name, mode", list(combinations()))
def test_report_is_complete(case_name, mode):
    result = quantized(case_name, mode)
    report = result.report
    assert report["mode"] == MODES[mode]().mode
    assert report["config"] == MODES[mode]().to_dict()
    if mode in ("int8", "int8_integer_only", "int16x8"):
        assert isinstance(report["kept_float"], dict)
        assert report["calibration_samples"] == 64


@pytest.mark.parametrize("case_name", sorted(INTEGER_ONLY_IMPOSSIBLE))
def test_integer_only_names_the_operator_it_cannot_quantize(case_name):
    case = models.CASES[case_name]
    with pytest.raises(edgeopt.EdgeoptError, match=INTEGER_ONLY_IMPOSSIBLE[case_name]):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(integer_only=True),
                         calibration=case.feeds(CALIBRATION_SEED, 16))


def test_integer_only_two_inputs_two_outputs_are_all_integers():
    result = quantized("two_io", "int8_integer_only")
    assert {v.name: v.type.tensor_type.elem_type for v in result.model.graph.input} == \
        {"a": TensorProto.UINT8, "b": TensorProto.UINT8}
    assert {v.name: v.type.tensor_type.elem_type for v in result.model.graph.output} == \
        {"out_sum": TensorProto.UINT8, "out_b": TensorProto.UINT8}


def test_int16x8_uses_16_bit_activations():
    result = quantized("conv_net", "int16x8")
    activation_types = {p["dtype"] for p in result.report["plan"]["activations"].values()}
    assert activation_types == {"int16"}


def test_dynamic_rewrites_matmuls_to_integer_kernels():
    result = quantized("attention", "dynamic")
    ops = [node.op_type for node in result.model.graph.node]
    # q, k, v and output projections: four constant-weight MatMuls; scores and context stay float.
    assert ops.count("MatMulInteger") == 4
    assert ops.count("MatMul") == 2


@pytest.mark.parametrize("options", [
    {"calibration_method": "minmax"}, {"calibration_method": "entropy"}, {"calibration_method": "mse"},
    {"activation_type": "int8"}, {"per_channel": False}, {"fallback": False},
    {"max_calibration_samples": 16},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_int8_options_stay_close_to_float(options):
    case = models.CASES["conv_net"]
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(**options),
                              calibration=case.feeds(CALIBRATION_SEED, 64))
    feeds = case.feeds(HELD_OUT_SEED, 32)
    cosine = models.worst_cosine(models.run(case.build(), feeds), models.run(result.model, feeds))
    assert cosine >= COSINE_BOUND["int8"]
    if "max_calibration_samples" in options:
        # Batches are 16 samples; calibration stops at the first batch that reaches the limit.
        assert result.report["calibration_samples"] == 16


def test_float16_keeps_excluded_nodes_float32():
    # Config docs: "exclude: Node names or operator types to keep in float".
    model = models.conv_net()
    result = edgeopt.quantize(model, edgeopt.Float16Config(exclude=("fc1",)))
    types = {init.name: init.data_type for init in result.model.graph.initializer}
    assert types.get("fc1_w") == TensorProto.FLOAT


# --- calibration data forms ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_calibration():
    return models.CASES["conv_net"].feeds(CALIBRATION_SEED, 48)


@pytest.fixture(scope="module")
def plan_from_dict(conv_calibration):
    result = edgeopt.quantize(models.conv_net(), edgeopt.Int8Config(), calibration=conv_calibration)
    return result.report["plan"]


def test_calibration_as_iterable_of_dicts(conv_calibration, plan_from_dict):
    array = conv_calibration["input"]

    def batches():  # a generator, consumed once; batches of 16 as the dict form uses
        for start in range(0, len(array), 16):
            yield {"input": array[start:start + 16]}

    result = edgeopt.quantize(models.conv_net(), edgeopt.Int8Config(), calibration=batches())
    assert result.report["calibration_samples"] == 48
    # The same values in the same batches give the same histograms and so the same plan.
    assert result.report["plan"] == plan_from_dict


def test_calibration_as_list_of_single_samples(conv_calibration):
    samples = [{"input": conv_calibration["input"][i:i + 1]} for i in range(12)]
    result = edgeopt.quantize(models.conv_net(), edgeopt.Int8Config(), calibration=samples)
    assert result.report["calibration_samples"] == 12


def test_calibration_as_npz_path(tmp_path, conv_calibration, plan_from_dict):
    path = tmp_path / "calibration.npz"
    np.savez(path, **conv_calibration)
    for source in (path, str(path)):
        result = edgeopt.quantize(models.conv_net(), edgeopt.Int8Config(), calibration=source)
        assert result.report["calibration_samples"] == 48
        assert result.report["plan"] == plan_from_dict


def test_npz_with_a_single_array_named_x_feeds_a_one_input_model(tmp_path, conv_calibration, plan_from_dict):
    path = tmp_path / "x.npz"
    np.savez(path, x=conv_calibration["input"])  # the model's input is named "input"
    result = edgeopt.quantize(models.conv_net(), edgeopt.Int8Config(), calibration=path)
    assert result.report["plan"] == plan_from_dict


def test_calibration_dict_for_two_inputs_and_model_from_path(tmp_path):
    case = models.CASES["two_io"]
    model_path = tmp_path / "two_io.onnx"
    onnx.save(case.build(), str(model_path))
    calibration = case.feeds(CALIBRATION_SEED, 20)
    result = edgeopt.quantize(model_path, edgeopt.Int16x8Config(), calibration=calibration)
    assert result.report["calibration_samples"] == 20
    out = tmp_path / "two_io.int16x8.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    assert out.read_bytes() == result.model.SerializeToString()


# --- calibration method "auto" ------------------------------------------------------------------


def _spiky_mlp():
    """x -> MatMul -> MatMul, with inputs whose rare large values carry much of the output: the
    case where clipping at a percentile (the usual best) loses the signal and minmax keeps it."""
    rng = np.random.default_rng(5)
    w1 = onnx.numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array((rng.standard_normal((64, 16)) / 8).astype(np.float32), "w2")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w1"], ["h"], "mm1"),
         onnx.helper.make_node("MatMul", ["h", "w2"], ["y"], "mm2")], "spiky",
        [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [w1, w2])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def _spiky_inputs(seed: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.standard_normal((count, 64))
    spikes = rng.random((count, 64)) < 0.0002  # about 6 in 512 calibration samples
    x[spikes] = rng.choice([-30.0, 30.0], size=int(spikes.sum()))
    return {"x": x.astype(np.float32)}


def _relative_error(reference, outputs) -> float:
    return float(np.sum((reference[0] - outputs[0]) ** 2) / np.sum(reference[0] ** 2))


def test_auto_calibration_keeps_the_method_closest_to_float():
    model = _spiky_mlp()
    calibration = _spiky_inputs(CALIBRATION_SEED, 512)
    result = edgeopt.quantize(model, edgeopt.Int8Config(fallback=False, scope="all"), calibration=calibration)
    screened = result.report["screening_errors"]
    assert set(screened) == {"all/percentile", "all/mse", "all/entropy", "all/minmax"}
    errors = result.report["calibration_errors"]  # the pairs screened close to the best, on every check sample
    assert min(screened, key=screened.get) in errors and set(errors) <= set(screened)
    chosen = result.report["calibration_method"]
    assert errors[f"all/{chosen}"] == min(errors.values())
    # Choosing is all "auto" does: the same model as asking for that method by name.
    explicit = edgeopt.quantize(model, edgeopt.Int8Config(calibration_method=chosen, fallback=False, scope="all"),
                                calibration=calibration)
    assert explicit.report["plan"]["activations"] == result.report["plan"]["activations"]
    assert list(explicit.report["calibration_errors"]) == [f"all/{chosen}"]
    # Percentile clips the spikes that carry the signal: on held-out inputs the chosen method's
    # error is well below percentile's (measured 0.061 against 0.88; a factor 5 leaves margin).
    held_out = _spiky_inputs(HELD_OUT_SEED, 256)
    reference = models.run(model, held_out)
    percentile = edgeopt.quantize(model, edgeopt.Int8Config(calibration_method="percentile", fallback=False,
                                                            scope="all"),
                                  calibration=calibration)
    assert chosen != "percentile"
    assert _relative_error(reference, models.run(result.model, held_out)) < \
        _relative_error(reference, models.run(percentile.model, held_out)) / 5


# --- scope: everything, or only MatMul/Gemm inputs ------------------------------------------------


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    """Operator types of the graph ONNX Runtime actually runs (after its fusions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_matmul_inputs_scope_runs_integer_matmuls_with_float_outputs(tmp_path):
    case = models.CASES["attention"]
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(scope="matmul-inputs"),
                              calibration=case.feeds(CALIBRATION_SEED, 64))
    assert result.report["scope"] == "matmul-inputs"
    ops = _optimized_ops(result.model, tmp_path)
    # The q, k, v and output projections (constant weights) run as integer products with float
    # outputs; the attention MatMuls, Softmax and the bias Adds stay float.
    assert ops.count("MatMulIntegerToFloat") == 4
    assert not [op for op in ops if op.startswith("QLinear")]
    assert set(result.report["plan"]["nodes"]) == {"q_matmul", "k_matmul", "v_matmul", "o_matmul"}
    feeds = case.feeds(HELD_OUT_SEED, 32)
    cosine = models.worst_cosine(models.run(case.build(), feeds), models.run(result.model, feeds))
    assert cosine >= COSINE_BOUND["int8"]


def test_auto_scope_tries_matmul_inputs_when_all_misses_the_target():
    # A target no int8 model reaches: "all" misses it, so "auto" tries "matmul-inputs" (on the
    # attention model beside "all"; on the CNN after the fallback) and keeps whichever is closer.
    impossible = dict(target_cosine=1.0, fallback=False)
    for case in (models.CASES["attention"], models.CASES["conv_net"]):
        result = edgeopt.quantize(case.build(), edgeopt.Int8Config(**impossible),
                                  calibration=case.feeds(CALIBRATION_SEED, 64))
        errors = result.report["calibration_errors"]
        assert {key.split("/")[0] for key in errors} == {"all", "matmul-inputs"}
        chosen = f"{result.report['scope']}/{result.report['calibration_method']}"
        assert errors[chosen] == min(errors.values())
    # A reachable target: the CNN stays "all" and "matmul-inputs" is never built.
    conv = models.CASES["conv_net"]
    result = edgeopt.quantize(conv.build(), edgeopt.Int8Config(target_cosine=0.9),
                              calibration=conv.feeds(CALIBRATION_SEED, 64))
    assert result.report["scope"] == "all"
    assert all(key.startswith("all/") for key in result.report["calibration_errors"])
    # int16 activations have no MatMulIntegerToFloat: "auto" never picks matmul-inputs for them.
    attention = models.CASES["attention"]
    result = edgeopt.quantize(attention.build(), edgeopt.Int16x8Config(scope="auto", **impossible),
                              calibration=attention.feeds(CALIBRATION_SEED, 64))
    assert result.report["scope"] == "all"


def test_matmul_inputs_scope_needs_a_matmul():
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"], "conv")], "conv_only",
                                   [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                                   [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])],
                                   [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    calibration = {"x": np.random.default_rng(1).standard_normal((16, 4, 8, 8)).astype(np.float32)}
    with pytest.raises(edgeopt.EdgeoptError, match="no MatMul or Gemm"):
        edgeopt.quantize(model, edgeopt.Int8Config(scope="matmul-inputs"), calibration=calibration)


def test_integer_only_refuses_before_it_reads_the_calibration_data():
    import numpy as np

    case = models.CASES["lstm"]
    wrong = {name: np.zeros((2, 3), np.float32) for name in case.feeds(CALIBRATION_SEED, 2)}  # would be refused
    with pytest.raises(edgeopt.EdgeoptError, match="integer-only: operator LSTM"):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(integer_only=True), calibration=wrong)
