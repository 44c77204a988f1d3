"""Weights that x86 kernels without VNNI add exactly (``weight_range="safe"``).

The unit tests check the arithmetic; the end-to-end test quantizes adversarial weights (same-sign
neighbours at the top of the range) with edgeopt and compares ONNX Runtime's fused integer
kernels against the same QDQ model run unfused (dequantize, float operator, quantize), which
cannot saturate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
import models
from edgeopt.quantization.numerics import quantize
from edgeopt.quantization.saturation import (PAIR_LIMIT, fit_pairs, from_kernel_order, pair_peaks,
                                             paired_params, to_kernel_order)
from edgeopt.runtimes.onnxruntime import make_session

CONV = ((0, 2, 3, 1), 3)  # the layout operators.py gives Conv


def _same_sign_sums(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.int32)
    if rows.shape[-1] % 2:
        rows = np.concatenate([rows, np.zeros(rows.shape[:-1] + (1,), np.int32)], axis=-1)
    first, second = rows[..., 0::2], rows[..., 1::2]
    return np.where(first * second > 0, np.abs(first + second), 0)


def test_kernel_order_round_trips_and_puts_input_channels_fastest():
    weight = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    rows = to_kernel_order(weight, CONV)
    assert rows.shape == (2, 1, 12)
    assert rows[0, 0, :3].tolist() == weight[0, :, 0, 0].tolist()  # one kernel position, all channels
    np.testing.assert_array_equal(from_kernel_order(rows, weight.shape, CONV), weight)


@pytest.mark.parametrize("seed", range(5))
def test_nearest_rounding_with_paired_scales_never_exceeds_the_pair_limit(seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((16, 7, 3, 3)).astype(np.float32)
    weight[:, :, 0, 0] = np.abs(weight[:, :, 0, 0]) + 2.0  # same-sign neighbours, larger than the rest
    rows = to_kernel_order(weight, CONV)
    params = paired_params(rows, 0)
    integers = quantize(rows, type(params)(params.scale.reshape(-1, 1, 1), params.zero_point.reshape(-1, 1, 1),
                                           "int8"))
    assert _same_sign_sums(integers).max() <= PAIR_LIMIT
    assert np.abs(integers.astype(np.int32)).max() <= 127
    # and the limit is reached: the scale is no coarser than it must be
    assert _same_sign_sums(integers).max(axis=(1, 2)).min() >= PAIR_LIMIT - 1


def test_fit_pairs_moves_only_the_larger_weight_of_an_overflowing_pair():
    rows = np.array([[[100, 40, -90, -60, 127, -127, 70, 58, 5]]], np.int8)
    fitted = fit_pairs(rows)
    assert fitted.tolist() == [[[88, 40, -68, -60, 127, -127, 70, 58, 5]]]
    assert fit_pairs(fitted) is fitted or np.array_equal(fit_pairs(fitted), fitted)
    assert pair_peaks(np.array([[[1.0, 2.0, -3.0, 4.0]]])).tolist() == [3.0]


def _adversarial_model(rng) -> "onnx.ModelProto":
    """Conv 3x3 over 5 channels (pairs cross kernel positions), a grouped 1x1 Conv, Gemm with
    transB, and MatMul: every weight has runs of large same-sign neighbours."""
    def weight(*shape):
        values = rng.standard_normal(shape).astype(np.float32) * 0.1
        flat = values.reshape(-1)
        flat[: flat.size // 2] = np.abs(flat[: flat.size // 2]) + 0.4
        return values

    initializers = [numpy_helper.from_array(weight(16, 5, 3, 3), "w1"),
                    numpy_helper.from_array(weight(16, 8, 1, 1), "w2"),
                    numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
                    numpy_helper.from_array(weight(32, 256), "w3"),
                    numpy_helper.from_array(weight(32, 24), "w4")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], group=2, name="grouped"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Reshape", ["r2", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w3"], ["g"], transB=1, name="gemm"),
             helper.make_node("Relu", ["g"], ["r3"]),
             helper.make_node("MatMul", ["r3", "w4"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "adversarial", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 24])], initializers)
    return models.finish(graph, opset=13)


def _fused_error_in_steps(weight_range: str) -> tuple[float, dict]:
    """How far ONNX Runtime's fused integer kernels are from the unfused QDQ model, in output steps."""
    rng = np.random.default_rng(0)
    model = _adversarial_model(rng)
    data = {"x": rng.uniform(0.0, 1.0, (32, 5, 4, 4)).astype(np.float32)}
    config = edgeopt.Int8Config(weight_range=weight_range, calibration_method="minmax", fallback=False,
                                weight_rounding="nearest", bias_correction=False)
    result = edgeopt.quantize(model, config, calibration=data)
    fused = make_session(result.model).run(None, data)[0]
    unfused = make_session(result.model, optimize=False).run(None, data)[0]
    step = float(np.abs(unfused).max()) / 127
    return float(np.abs(fused - unfused).max()) / step, {key[0]: e.values for key, e in result.plan.weights.items()}


# The unfused model computes the same integers in float; the fused kernels may differ by the
# rounding of one requantization per layer (4 layers). A saturated pair is off by >= 128 x 255 in
# accumulator units: "full" weights are 47 steps off on this machine (AVX2 without VNNI).
TOLERANCE_STEPS = 4


@pytest.mark.parametrize("weight_range", ["safe", "half"])
def test_safe_weights_run_exactly_in_onnxruntimes_integer_kernels(weight_range):
    error, integers = _fused_error_in_steps(weight_range)
    assert int(np.abs(integers["grouped"].astype(np.int32)).max()) == (127 if weight_range == "safe" else 64)
    assert error <= TOLERANCE_STEPS


def test_full_range_weights_saturate_on_a_cpu_without_vnni():
    # The control for the test above: the comparison does see saturation where the CPU has it.
    error, _ = _fused_error_in_steps("full")
    if error <= TOLERANCE_STEPS:
        pytest.skip("this CPU adds uint8 x int8 products in 32 bits (VNNI or ARM): nothing saturates")
    assert error > 10 * TOLERANCE_STEPS


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_dynamic_safe_weights_do_not_saturate_matmulinteger(granularity):
    # Dynamic models call MatMulInteger themselves (no unfused twin to compare with), so compare
    # with float: on this CPU full-range weights are 8% of the output's scale off, safe and half
    # ones 0.2-0.24% (their rounding); the bound, 3x half's error, sits far from saturation.
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((256, 32)).astype(np.float32) * 0.1
    weight[:128] = np.abs(weight[:128]) + 0.4
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
                              [numpy_helper.from_array(weight, "w")])
    model = models.finish(graph, opset=13)
    x = rng.uniform(0, 1, (16, 256)).astype(np.float32)
    reference = make_session(model).run(None, {"x": x})[0]

    def error(weight_range):
        config = edgeopt.DynamicConfig(weight_range=weight_range, activation_granularity=granularity)
        output = make_session(edgeopt.quantize(model, config).model).run(None, {"x": x})[0]
        return float(np.abs(output - reference).max() / np.abs(reference).max())

    assert error("safe") <= 3 * error("half")


def _conv_with_signs(signs: np.ndarray) -> "onnx.ModelProto":
    """One 3x3 convolution over 6 channels, weights ``signs`` (shape [8, 6, 3, 3]) times 0.8-1.0."""
    rng = np.random.default_rng(7)
    weight = (signs * rng.uniform(0.8, 1.0, signs.shape)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 5, 5])],
                              [numpy_helper.from_array(weight, "w")])
    return models.finish(graph, opset=13)


def _conv_error_in_steps(model) -> float:
    data = {"x": np.random.default_rng(8).uniform(0.0, 1.0, (16, 6, 5, 5)).astype(np.float32)}
    config = edgeopt.Int8Config(calibration_method="minmax", fallback=False, weight_rounding="nearest",
                                bias_correction=False)
    result = edgeopt.quantize(model, config, calibration=data)
    fused = make_session(result.model).run(None, data)[0]
    unfused = make_session(result.model, optimize=False).run(None, data)[0]
    return float(np.abs(fused - unfused).max()) / (float(np.abs(unfused).max()) / 127)


# CHANNEL_SIGNS alternate along the input channels: neighbours in ONNX Runtime's order (kernel
# position, then channels fastest) have opposite signs, neighbours in ONNX's own order (channel,
# row, column) mostly the same sign. PAIRED_SIGNS are the reverse: the same sign for channels 2i
# and 2i+1 at each kernel position, alternating along ONNX's order, with small weights at the two
# positions where ONNX's order crosses from one channel to the next.
CHANNEL_SIGNS = np.broadcast_to(np.where(np.arange(6) % 2, -1.0, 1.0)[None, :, None, None], (8, 6, 3, 3))
_POSITION = np.arange(9).reshape(3, 3)
PAIRED_SIGNS = (np.where(_POSITION % 2, -1.0, 1.0)[None, None] * np.where((np.arange(6) // 2) % 2, -1.0, 1.0)[
    None, :, None, None] * np.where((_POSITION == 0) | (_POSITION == 8), 0.1, 1.0)[None, None]) * np.ones((8, 1, 1, 1))


@pytest.mark.parametrize("signs", [CHANNEL_SIGNS, PAIRED_SIGNS], ids=["channel-signs", "paired-signs"])
def test_the_claimed_accumulation_order_is_the_one_onnxruntime_pairs(signs):
    # With channel signs, safe weights reach +-127 (no same-sign pair in the claimed order): exact
    # only if ONNX Runtime does not pair in ONNX's order. With paired signs, the claimed order has
    # same-sign pairs and safe limits them: exact only if it pairs those channels.
    assert _conv_error_in_steps(_conv_with_signs(signs)) <= TOLERANCE_STEPS


def test_a_wrong_accumulation_order_saturates(monkeypatch):
    # The control for the test above: told ONNX's own order (channel, row, column), "safe" sees
    # alternating signs where the kernel pairs same-sign neighbours, and ONNX Runtime saturates.
    from edgeopt.quantization import operators

    rule = operators.RULES["Conv"]
    monkeypatch.setitem(operators.RULES, "Conv", dataclasses.replace(
        rule, accumulation=lambda node, rank: (tuple(range(rank)), rank - 1)))
    error = _conv_error_in_steps(_conv_with_signs(PAIRED_SIGNS))
    if error <= TOLERANCE_STEPS and _fused_error_in_steps("full")[0] <= TOLERANCE_STEPS:
        pytest.skip("this CPU adds uint8 x int8 products in 32 bits (VNNI or ARM): nothing saturates")
    assert error > 10 * TOLERANCE_STEPS


def _pair_model(first: int, second: int) -> "onnx.ModelProto":
    """QDQ MatMul [1, 16] x [16, 1] with integer weights given directly: weights 0 and 1 are
    ``first`` and ``second``, the rest 0; activations quantize with scale 1 (values 0..255)."""
    weight = np.zeros((16, 1), np.int8)
    weight[0, 0], weight[1, 0] = first, second
    initializers = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                    numpy_helper.from_array(np.array(0, np.uint8), "zero"),
                    numpy_helper.from_array(np.array(0, np.int8), "wzero"),
                    numpy_helper.from_array(weight, "wq"),
                    numpy_helper.from_array(np.array(129.0, np.float32), "out_scale")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "one", "wzero"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "out_scale", "zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "out_scale", "zero"], ["out"])]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])], initializers)
    return models.finish(graph, opset=13)


def test_a_pair_summing_to_128_is_exact_and_129_is_not():
    # 255 x 128 = 32,640 fits in 16 bits, 255 x 129 = 32,895 does not; the output scale 129 makes
    # the exact result 255 (for 129) and the saturated one 254.
    x = {"x": np.full((1, 16), 255.0, np.float32)}

    def off(first, second):
        model = _pair_model(first, second)
        return float(np.abs(make_session(model).run(None, x)[0] - make_session(model, optimize=False).run(None, x)[0]).max())

    assert off(64, 64) == 0.0 and off(127, -127) == 0.0 and off(1, 127) == 0.0
    if off(64, 65) == 0.0:
        pytest.skip("this CPU adds uint8 x int8 products in 32 bits (VNNI or ARM): nothing saturates")
    assert off(64, 65) == 129.0  # one output step: 32,767 instead of 32,895
