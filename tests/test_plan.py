"""The typed plan: read back from the QDQ model, and rebuilt from without calibration data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgeopt
import models

CONFIGS = {
    "int8": edgeopt.Int8Config(),
    "int8-nearest-minmax": edgeopt.Int8Config(calibration_method="minmax", weight_rounding="nearest"),
    "int8-int8-activations": edgeopt.Int8Config(activation_type="int8", weight_range="full"),
    "integer-only": edgeopt.Int8Config(integer_only=True),
    "excluded": edgeopt.Int8Config(exclude=("fc2", "MaxPool")),
    "int16x8": edgeopt.Int16x8Config(),
}


def _quantize(case_name: str, config):
    case = models.CASES[case_name]
    return case, edgeopt.quantize(case.build(), config, calibration=case.feeds(1, 96))


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_read_plan_of_the_quantized_model_equals_the_result_plan(config):
    _, result = _quantize("conv_net", config)
    read = edgeopt.read_plan(result.model)
    assert read == result.plan, read.differences(result.plan)
    assert read.kept_float == result.plan.kept_float
    assert result.plan.nodes and result.plan.weights and result.plan.biases


@pytest.mark.parametrize("case_name,config", [
    ("attention", edgeopt.Int8Config(scope="matmul-inputs")),
    ("attention", edgeopt.Int8Config(scope="all")),
    ("two_io", edgeopt.Int8Config()),
])
def test_read_plan_on_other_graphs(case_name, config):
    _, result = _quantize(case_name, config)
    read = edgeopt.read_plan(result.model)
    assert read == result.plan, read.differences(result.plan)


@pytest.mark.parametrize("config", [CONFIGS["int8"], CONFIGS["integer-only"], CONFIGS["excluded"]],
                         ids=["int8", "integer-only", "excluded"])
def test_quantize_with_a_plan_builds_the_same_model_without_calibration(config):
    case, result = _quantize("conv_net", config)
    again = edgeopt.quantize(case.build(), config, plan=result.plan)
    assert again.model.SerializeToString() == result.model.SerializeToString()
    assert again.report["from_plan"] is True
    # and from the plan read back out of the saved model
    reread = edgeopt.quantize(case.build(), config, plan=edgeopt.read_plan(result.model))
    feeds = case.feeds(7, 8)
    run = models.run_integer_only if config.integer_only else models.run
    np.testing.assert_array_equal(run(reread.model, feeds)[0], run(result.model, feeds)[0])


def test_a_plan_for_another_model_is_refused():
    _, result = _quantize("conv_net", CONFIGS["int8"])
    other = models.CASES["attention"].build()
    with pytest.raises(edgeopt.EdgeoptError, match="the plan names nodes the model does not have"):
        edgeopt.quantize(other, edgeopt.Int8Config(), plan=result.plan)


def test_a_plan_needs_a_static_config_and_a_plan_object():
    case, result = _quantize("conv_net", CONFIGS["int8"])
    with pytest.raises(edgeopt.EdgeoptError, match="plan= needs Int8Config"):
        edgeopt.quantize(case.build(), edgeopt.DynamicConfig(), plan=result.plan)
    with pytest.raises(edgeopt.EdgeoptError, match="must be a QuantizationPlan"):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(), plan=result.plan.to_dict())
    with pytest.raises(edgeopt.EdgeoptError, match="activations to uint8"):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(activation_type="int8"), plan=result.plan)
    with pytest.raises(edgeopt.EdgeoptError, match="integer_only=True"):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(integer_only=True), plan=result.plan)


def test_an_inconsistent_bias_scale_is_refused():
    import dataclasses

    case, result = _quantize("conv_net", CONFIGS["int8"])
    key, entry = next(iter(result.plan.biases.items()))
    broken = dataclasses.replace(result.plan, biases={**result.plan.biases, key: dataclasses.replace(
        entry, params=dataclasses.replace(entry.params, scale=entry.params.scale * 2))})
    with pytest.raises(edgeopt.EdgeoptError, match="input scale x weight scale"):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(), plan=broken)


def test_read_plan_of_another_tools_qdq_model():
    # A QDQ model in the form onnxruntime's quantizer writes (no edgeopt metadata): activations are
    # named by what the QuantizeLinear reads, the float model's tensor.
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["x_q"], name="q"),
        helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x_dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "ws"], ["w_dq"], name="wdq", axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="mm"),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["y_q"], name="q2"),
        helper.make_node("DequantizeLinear", ["y_q", "ys", "yz"], ["y_dq"], name="dq2"),
    ]
    inits = [numpy_helper.from_array(np.float32(0.1), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(weight, "w_q"),
             numpy_helper.from_array(np.full(4, 0.05, np.float32), "ws"),
             numpy_helper.from_array(np.float32(0.2), "ys"), numpy_helper.from_array(np.uint8(120), "yz")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y_dq", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    plan = edgeopt.read_plan(model)
    assert set(plan.activations) == {"x", "y"}
    assert float(plan.activations["x"].scale) == pytest.approx(0.1)
    assert plan.nodes == ["mm"]
    entry = plan.weights[("mm", 1)]
    assert entry.params.axis == 1 and entry.values.dtype == np.int8
    np.testing.assert_array_equal(entry.values, weight)


@pytest.mark.parametrize("weight_range", ["safe", "half"])
def test_limited_weight_ranges_keep_depthwise_convolutions_at_full_range(weight_range):
    # ONNX Runtime's depthwise kernel cannot saturate; the other convolutions stay in [-64, 64]
    # ("half") or have each pair of neighbouring input channels within 128 ("safe").
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "dw"),
             numpy_helper.from_array(rng.normal(size=(8, 8, 1, 1)).astype(np.float32), "pw")]
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "pw"], ["y"], name="pointwise")]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(32, 8, 8, 8)).astype(np.float32)
    config = edgeopt.Int8Config(weight_rounding="nearest", weight_range=weight_range)
    plan = edgeopt.quantize(model, config, calibration={"x": x}).plan
    assert int(np.abs(plan.weights[("depthwise", 1)].values.astype(np.int32)).max()) == 127
    pointwise = plan.weights[("pointwise", 1)].values.astype(np.int32)[:, :, 0, 0]
    if weight_range == "half":
        assert int(np.abs(pointwise).max()) == 64
    else:
        pairs = pointwise[:, 0::2] + pointwise[:, 1::2]
        same_sign = pointwise[:, 0::2] * pointwise[:, 1::2] > 0
        assert int(np.abs(np.where(same_sign, pairs, 0)).max()) <= 128 and int(np.abs(pointwise).max()) > 64


def test_nodes_the_fallback_keeps_float_keep_float_weights_and_the_plan_says_so():
    from onnx import numpy_helper

    from edgeopt.quantization.calibrate import calibrate
    from edgeopt.quantization.candidates import Candidate, CandidateBuilder
    from edgeopt.quantization.prepare import prepare
    from edgeopt.quantization.qdq import record_plan

    case = models.CASES["conv_net"]
    model = prepare(case.build())
    config = edgeopt.Int8Config()
    builder = CandidateBuilder(model, config, None, {})
    builder.calibration = calibrate(model, builder.selection(Candidate()), iter([case.feeds(1, 96)]),
                                    max_samples=None, bias_correction=True, compensated_rounding=False)
    candidate = Candidate(compensated_rounding=False, keep_float=frozenset({"input"}))  # conv1 reads it
    built = builder.build(candidate)
    assert built.plan.float_weight_nodes == ["conv1"]
    assert builder.plan(candidate.but(keep_float=frozenset())).float_weight_nodes == []
    stored = {init.name: init for init in built.model.graph.initializer}
    conv1 = next(node for node in built.model.graph.node if node.name == "conv1")
    np.testing.assert_array_equal(numpy_helper.to_array(stored[conv1.input[1]]),
                                  numpy_helper.to_array(next(i for i in model.graph.initializer
                                                             if i.name == conv1.input[1])))
    # every other weight is int8 (weight storage of float nodes, or the quantized nodes' own)
    assert any(init.data_type == onnx.TensorProto.INT8 for init in built.model.graph.initializer)
    record_plan(built.model, built.plan)
    read = edgeopt.read_plan(built.model)
    assert read == built.plan and read.float_weight_nodes == ["conv1"], read.differences(built.plan)
    again = edgeopt.quantize(case.build(), config, plan=read)
    assert next(i for i in again.model.graph.initializer if i.name == conv1.input[1]).data_type == \
        onnx.TensorProto.FLOAT
