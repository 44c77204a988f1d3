"""Compensated (GPTQ-style) int8 weight rounding: the algorithm, the moments it needs, its use."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.quantization import rounding

import models


def _nearest(rows, scales):
    return np.clip(np.rint(rows / scales[..., None]), -127, 127)


def test_uncorrelated_inputs_round_to_nearest():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1, 8, 16))
    scales = np.abs(rows).max(axis=2) / 127
    # Identity moments: no input explains another, so there is nothing to compensate.
    integers = rounding.compensated_round(rows, scales, np.eye(16)[None])
    np.testing.assert_array_equal(integers, _nearest(rows, scales))


def test_correlated_inputs_lower_the_output_error():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4096, 4))
    x = np.concatenate([base, base, base + 0.01 * rng.standard_normal((4096, 4))], axis=1)  # 12 inputs
    rows = rng.standard_normal((1, 32, 12))
    scales = np.abs(rows).max(axis=2) / 127
    moments = (x.T @ x / len(x))[None]
    integers = rounding.compensated_round(rows, scales, moments)
    compensated = integers * scales[..., None]
    nearest = _nearest(rows, scales) * scales[..., None]

    def error(q):
        return np.mean((x @ (q[0] - rows[0]).T) ** 2)

    # Three copies of each input: the first two copies' rounding errors are absorbed by the copies
    # after them; the last copy has none left, so the error can fall to about a third (measured
    # 2.5x lower); 2x leaves a margin.
    assert error(compensated) < error(nearest) / 2
    assert np.abs(integers).max() <= 127


def _sequential_reference(rows, scales, moments):
    """GPTQ without blocking: every rounding error updates all later columns at once."""
    weights = np.array(rows, dtype=np.float64)
    hessian = np.array(moments, dtype=np.float64)
    hessian += rounding.DAMPING * np.einsum("gii->gi", hessian).mean(axis=1)[:, None, None] * np.eye(rows.shape[2])
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).transpose(0, 2, 1)
    integers = np.empty(rows.shape)
    for i in range(rows.shape[2]):
        q = np.clip(np.rint(weights[:, :, i] / scales), -127, 127)
        integers[:, :, i] = q
        error = (weights[:, :, i] - q * scales) / upper[:, None, i, i]
        weights[:, :, i + 1:] -= error[..., None] * upper[:, None, i, i + 1:]
    return integers


def test_blocked_rounding_matches_the_sequential_algorithm():
    rng = np.random.default_rng(4)
    inputs = 2 * rounding.BLOCK + 37  # two full blocks and a partial one
    x = rng.standard_normal((2, 4096, 24)) @ rng.standard_normal((2, 24, inputs))  # correlated inputs
    moments = np.einsum("gnd,gne->gde", x, x) / 4096
    rows = rng.standard_normal((2, 16, inputs))
    scales = np.abs(rows).max(axis=2) / 127
    blocked = rounding.compensated_round(rows, scales, moments)
    expected = _sequential_reference(rows, scales, moments)
    # Same arithmetic in another order: float64 rounding differences can move a value sitting on a
    # rounding boundary by one step; allow one such integer in a thousand.
    assert np.mean(blocked != expected) < 1e-3
    assert np.abs(blocked - expected).max() <= 1


@pytest.mark.parametrize("group, stride, pads", [(1, 1, (1, 1, 1, 1)), (2, 2, (0, 0, 1, 1)), (4, 1, (0, 0, 0, 0))])
def test_conv_patch_moments_match_explicit_patches(group, stride, pads):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    moments, count = rounding.conv_patch_moments(x, group, (3, 3), (stride, stride), pads, (1, 1))
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cg = 4 // group
    expected = np.zeros((group, cg * 9, cg * 9))
    patches = 0
    for n in range(2):
        for i in range(0, padded.shape[2] - 2, stride):
            for j in range(0, padded.shape[3] - 2, stride):
                patches += 1
                for g in range(group):
                    p = padded[n, g * cg:(g + 1) * cg, i:i + 3, j:j + 3].reshape(-1).astype(np.float64)
                    expected[g] += np.outer(p, p)
    assert count == patches
    np.testing.assert_allclose(moments, expected, rtol=1e-5, atol=1e-4)  # float32 patches



def test_conv_patch_moments_subsample_estimates_the_full_moments():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 4, 32, 32)).astype(np.float32)
    full, full_count = rounding.conv_patch_moments(x, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    part, count = rounding.conv_patch_moments(x, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), patches_per_sample=256)
    assert (full_count, count) == (4 * 32 * 32, 4 * 256)
    # Entries of E[p p^T] for unit normals: the mean of 1024 products has a standard error of about
    # 1/32 (0.045 on the diagonal); 0.2 is more than four standard errors.
    assert np.abs(part / count - full / full_count).max() < 0.2
    again, _ = rounding.conv_patch_moments(x, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), patches_per_sample=256)
    np.testing.assert_array_equal(part, again)  # seeded: the same patches every time

def _grey_conv_model(dead_channel: bool = False):
    """A 3-channel Conv fed grey images (three equal channels), with colour-opponent filters: the
    layer's effective filter is the small sum of three large weights, as in an ImageNet stem.
    ``dead_channel``: one output channel has zero weights and a bias, as BatchNorm folding leaves
    a pruned channel (its int32 bias needs a wider weight scale)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    w[:, 2] = -(w[:, 0] + w[:, 1]) + 0.05 * rng.standard_normal((16, 3, 3)).astype(np.float32)
    bias = np.zeros(16, np.float32)
    if dead_channel:
        w[5], bias[5] = 0.0, 0.7
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "grey", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 12, 12])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    def grey(seed, count):
        image = np.random.default_rng(seed).random((count, 1, 12, 12), dtype=np.float32)
        return {"x": np.repeat(image, 3, axis=1)}
    return model, grey


@pytest.mark.parametrize("dead_channel", [False, True])
def test_compensated_rounding_on_grey_input_and_the_report(dead_channel):
    model, grey = _grey_conv_model(dead_channel)
    held_out = grey(9, 32)
    reference = models.run(model, held_out)[0]

    def sqnr(config):
        # 64 check samples first, then the samples compensated rounding fits its moments on.
        result = edgeopt.quantize(model, config, calibration=[grey(100 + i, 16) for i in range(12)])
        onnx.checker.check_model(result.model, full_check=True)
        output = models.run(result.model, held_out)[0]
        return 10 * np.log10(np.sum(reference ** 2) / np.sum((output - reference) ** 2)), result.report

    nearest, nearest_report = sqnr(edgeopt.Int8Config(weight_rounding="nearest", fallback=False))
    compensated, report = sqnr(edgeopt.Int8Config(fallback=False))
    assert nearest_report["weight_rounding"] == "nearest"
    assert report["weight_rounding"] == "compensated"
    assert report["plan"]["compensated_weights"] == ["conv:1"]
    # Same scales either way: only the integers differ (a dead channel's scale is widened for
    # its bias in both; the other channels keep their compensated integers).
    assert report["plan"]["weights"] == nearest_report["plan"]["weights"]
    # Measured 16.0 dB with nearest rounding, 20.2 dB compensated (the uint8 activations and the
    # last, uncompensated input of each kernel position limit it); 2 dB leaves a margin.
    assert compensated > nearest + 2, (compensated, nearest)


def test_unknown_weight_rounding_is_refused():
    with pytest.raises(edgeopt.EdgeoptError, match="weight_rounding must be one of compensated, nearest"):
        edgeopt.Int8Config(weight_rounding="adaround")


def test_a_weight_shared_by_two_layers_is_stored_once_with_nearest_rounding():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 64)).astype(np.float32) / 8
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="first"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    base = rng.standard_normal((256, 16)).astype(np.float32)
    x = np.repeat(base, 4, axis=1)  # correlated inputs: compensation would pick other integers
    result = edgeopt.quantize(model, edgeopt.Int8Config(fallback=False),
                              calibration=[{"x": x[i:i + 32]} for i in range(0, 256, 32)])
    assert result.report["plan"]["compensated_weights"] == []
    int8 = [init for init in result.model.graph.initializer if init.data_type == TensorProto.INT8
            and list(init.dims) == [64, 64]]
    assert len(int8) == 1  # one stored copy for both readers


def test_no_compensation_without_samples_beyond_the_check_samples():
    """The keep-or-drop decision is made on the first 64 samples; with no samples after them
    there is nothing held out to fit on, so the weights are rounded to nearest."""
    model, grey = _grey_conv_model()
    result = edgeopt.quantize(model, edgeopt.Int8Config(fallback=False), calibration=[grey(8, 16) for _ in range(4)])
    assert result.report["weight_rounding"] == "nearest"
    assert result.report["plan"]["compensated_weights"] == []
