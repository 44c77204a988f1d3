"""Graph passes: preparation (BN folding, Constant lifting, opset upgrade, constant folding), the
structure of the int8 QDQ model, and integer-only models.

Every numeric comparison runs ONNX Runtime with graph optimizations disabled, so the graph that
runs is the graph edgeopt wrote, not one ONNX Runtime has rewritten.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.quantization.graph import opset_version
from edgeopt.quantization.prepare import prepare

import models


def prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return prepare(copy)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


# --- preparation -------------------------------------------------------------------------------


def test_batch_norm_folds_into_conv_with_the_same_outputs():
    model = models.conv_net()
    folded = prepared(model)
    assert "BatchNormalization" not in op_types(folded)
    assert op_types(folded).count("Conv") == 2
    onnx.checker.check_model(folded, full_check=True)
    feeds = models.CASES["conv_net"].feeds(seed=3, count=16)
    reference = models.run(model, feeds)[0]
    result = models.run(folded, feeds)[0]
    # Folding only reorders float32 arithmetic (w * gamma / sqrt(var + eps) rounded once, sums of up
    # to 512 products): a few float32 ulps of the output's magnitude. 1e-5 of the largest output leaves
    # ~80x float32 epsilon of headroom; a wrong fold (e.g. a missing beta) is off by O(0.1).
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5 * scale)


def test_batch_norm_fold_alone_is_float32_exact_to_1e_5():
    # A single Conv + BN on unit-variance inputs gives O(1) outputs, so the absolute tolerance 1e-5
    # is ~100 float32 ulps at that magnitude: room for the reordered arithmetic, none for a wrong fold.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 2, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "gamma"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "beta"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2.0, 4).astype(np.float32), "var")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn",
                          epsilon=1e-3)],
        "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folded = prepared(model)
    assert op_types(folded) == ["Conv"]
    feeds = {"x": rng.standard_normal((3, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(models.run(folded, feeds)[0], models.run(model, feeds)[0], rtol=0, atol=1e-5)


def test_constant_nodes_are_lifted_to_initializers():
    model = models.constant_weights()
    lifted = prepared(model)
    assert "Constant" not in op_types(lifted)
    initializers = {init.name: init for init in lifted.graph.initializer}
    assert {"w1", "b1", "w2"} <= set(initializers)
    assert list(initializers["w1"].dims) == [64, 128]
    feeds = models.CASES["constant_weights"].feeds(seed=3, count=8)
    # Same kernels on the same values: the outputs are bit-identical.
    np.testing.assert_array_equal(models.run(lifted, feeds)[0], models.run(model, feeds)[0])


def test_constant_weights_get_quantized():
    model = models.constant_weights()
    calibration = models.CASES["constant_weights"].feeds(1, 32)
    result = edgeopt.quantize(model, edgeopt.Int8Config(), calibration=calibration)
    # 2-D int8 tensors are the weights (1-D ones are their per-channel zero points).
    int8_weights = [init for init in result.model.graph.initializer
                    if init.data_type == TensorProto.INT8 and len(init.dims) == 2]
    assert sorted(tuple(init.dims) for init in int8_weights) == [(64, 128), (128, 16)]
    assert "Constant" not in op_types(result.model)


def test_opset_11_is_upgraded_to_13():
    model = models.opset11_mlp()
    assert opset_version(model) == 11
    upgraded = prepared(model)
    assert opset_version(upgraded) == 13
    onnx.checker.check_model(upgraded, full_check=True)
    feeds = models.CASES["opset11"].feeds(seed=3, count=8)
    np.testing.assert_array_equal(models.run(upgraded, feeds)[0], models.run(model, feeds)[0])
    calibration = models.CASES["opset11"].feeds(1, 32)
    quantized = edgeopt.quantize(model, edgeopt.Int8Config(), calibration=calibration)
    assert opset_version(quantized.model) >= 13


def test_constant_subgraphs_are_folded():
    # The weight is stored transposed and turned around by a Transpose of a constant: the pass must
    # compute it once so that the MatMul sees (and edgeopt quantizes) a constant weight.
    rng = np.random.default_rng(1)
    stored = rng.standard_normal((32, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w_stored"], ["w"], name="turn", perm=[1, 0]),
         helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "folding", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(stored, "w_stored")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folded = prepared(model)
    assert op_types(folded) == ["MatMul"]
    initializers = {init.name: numpy_helper.to_array(init) for init in folded.graph.initializer}
    weight = initializers[folded.graph.node[0].input[1]]
    np.testing.assert_array_equal(weight, stored.T)


# --- structure of the int8 model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_conv():
    case = models.CASES["conv_net"]
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(), calibration=case.feeds(seed=1, count=64))
    return result


def test_int8_conv_net_is_qdq_with_relu_absorbed(int8_conv):
    ops = op_types(int8_conv.model)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "Relu" not in ops  # all three Relu clamp through their producer's uint8 range
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 2
    assert int8_conv.report["absorbed_activations"] == 3
    assert int8_conv.report["kept_float"] == {}
    onnx.checker.check_model(int8_conv.model, full_check=True)


def _dequantize_inputs(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, onnx.TensorProto]]:
    """consumer node name -> (DequantizeLinear node, its integer initializer), for weights and biases."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        for slot, name in zip(("weight", "bias"), node.input[1:3], strict=True):
            dq = producers.get(name)
            assert dq is not None and dq.op_type == "DequantizeLinear", f"{node.name} {slot} not dequantized"
            found[(node.name, slot)] = (dq, initializers[dq.input[0]])
    return found


def test_int8_weights_are_per_channel_and_biases_int32(int8_conv):
    initializers = {init.name: init for init in int8_conv.model.graph.initializer}
    found = _dequantize_inputs(int8_conv.model)
    # Output channels: conv1 16, conv2 32, fc1 128 (transB=1, axis 0), fc2 10 (axis 1).
    expected = {"conv1": (16, 0), "conv2": (32, 0), "fc1": (128, 0), "fc2": (10, 1)}
    for node_name, (channels, axis) in expected.items():
        dq, weight = found[(node_name, "weight")]
        assert weight.data_type == TensorProto.INT8
        attributes = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        assert attributes.get("axis") == axis
        scale = numpy_helper.to_array(initializers[dq.input[1]])
        assert scale.shape == (channels,)
        assert np.all(scale > 0)
        values = numpy_helper.to_array(weight)
        assert values.min() >= -127  # restricted symmetric range
        _, bias = found[(node_name, "bias")]
        assert bias.data_type == TensorProto.INT32
        assert list(bias.dims) == [channels]


def test_int8_conv_net_stays_close_to_float(int8_conv):
    case = models.CASES["conv_net"]
    feeds = case.feeds(seed=2, count=32)  # held out: calibration used seed 1
    cosine = models.worst_cosine(models.run(case.build(), feeds), models.run(int8_conv.model, feeds))
    # uint8 activations over ~6 quantized tensors and int8 per-channel weights give an SQNR of
    # roughly 30 dB on this net, i.e. cosine ~0.999; 0.99 is the bound for the worst sample,
    # loose enough for run-to-run kernel differences and strict enough to catch a wrong scale or axis.
    assert cosine >= 0.99


def test_int8_report_plan_is_json_serialisable(int8_conv):
    text = json.dumps(int8_conv.report)
    assert json.loads(text)["mode"] == "int8"


# --- integer-only -----------------------------------------------------------------------------------


def test_integer_only_has_uint8_io_and_scales_in_metadata():
    case = models.CASES["conv_net"]
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(integer_only=True),
                              calibration=case.feeds(seed=1, count=64))
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    assert [v.type.tensor_type.elem_type for v in model.graph.input] == [TensorProto.UINT8]
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [TensorProto.UINT8]
    metadata = {entry.key: json.loads(entry.value) for entry in model.metadata_props}
    for name, role in (("input", "input"), ("logits", "output")):
        params = metadata[f"edgeopt.io.{name}"]
        assert params["role"] == role
        assert params["dtype"] == "uint8"
        assert params["scale"] > 0 and 0 <= params["zero_point"] <= 255
    feeds = case.feeds(seed=2, count=16)
    cosine = models.worst_cosine(models.run(case.build(), feeds), models.run_integer_only(model, feeds))
    assert cosine >= 0.99  # same bound and reasoning as the float-I/O int8 model


def test_integer_only_rejects_lstm_but_plain_int8_accepts_it():
    case = models.CASES["lstm"]
    calibration = case.feeds(seed=1, count=32)
    with pytest.raises(edgeopt.EdgeoptError, match="LSTM"):
        edgeopt.quantize(case.build(), edgeopt.Int8Config(integer_only=True), calibration=calibration)
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(), calibration=calibration)
    assert "LSTM" in op_types(result.model)
    feeds = case.feeds(seed=2, count=16)
    # The int8 bound (LSTM stays float; only its input ranges and the Gemm are quantized).
    assert models.worst_cosine(models.run(case.build(), feeds), models.run(result.model, feeds)) >= 0.97
