"""Dynamic-range quantization with one activation range per row (the default) or per tensor.

Tiny inline models, seeded inputs. The tolerances follow from the arithmetic: with a row range
[lo, hi] the activation step is (hi - lo) / 255, and per-channel int8 weights have a step of
max|w| / 127 per column.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt

import models


def _matmul_model(opset: int, rank: int = 3, gemm: bool = False) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    if gemm:
        bias = (rng.standard_normal(32) * 0.1).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)
        inits = [numpy_helper.from_array(w.T.copy(), "W"), numpy_helper.from_array(bias, "b")]
        shape_in, shape_out = ["N", 64], ["N", 32]
    else:
        node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
        inits = [numpy_helper.from_array(w, "W")]
        shape_in, shape_out = (["N", 6, 64], ["N", 6, 32]) if rank == 3 else (["N", 64], ["N", 32])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, w


def _rows(rng: np.random.Generator, shape) -> np.ndarray:
    """Rows whose magnitudes span 1e-3 .. 1e2, as tokens of a transformer's hidden state can."""
    x = rng.standard_normal(shape).astype(np.float32)
    return x * np.logspace(-3, 2, int(np.prod(shape[:-1]))).astype(np.float32).reshape(*shape[:-1], 1)


@pytest.mark.parametrize("opset", [13, 17, 18, 21])  # ReduceMin/ReduceMax take axes as an input from 18
@pytest.mark.parametrize("layout", ["matmul-2d", "matmul-3d", "gemm"])
def test_row_ranges_keep_every_row_accurate(opset, layout):
    model, _ = _matmul_model(opset, rank=3 if layout == "matmul-3d" else 2, gemm=layout == "gemm")
    x = _rows(np.random.default_rng(1), (4, 6, 64) if layout == "matmul-3d" else (24, 64))
    reference = models.run(model, {"x": x})[0]
    result = edgeopt.quantize(model, edgeopt.DynamicConfig())
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["dynamic_matmuls"] == [model.graph.node[0].name]
    output = models.run(result.model, {"x": x})[0]
    # Each row's worst error relative to that row's own largest output: uint8 steps of 1/255 of
    # the row's range and int8 weights (1/127 of each column's range), summed over 64 products,
    # give 1.6% here (the same for every opset and layout); 3% leaves room for rounding-order
    # differences between kernels. One range for the whole tensor rounds the small rows' inputs
    # to (nearly) nothing: errors of 116-128% of their output (measured).
    magnitude = np.abs(reference).max(axis=-1)
    row_error = (np.abs(output - reference).max(axis=-1) / magnitude).max()
    assert row_error < 0.03, row_error
    tensor = edgeopt.quantize(model, edgeopt.DynamicConfig(activation_granularity="tensor")).model
    tensor_error = (np.abs(models.run(tensor, {"x": x})[0] - reference).max(axis=-1) / magnitude).max()
    assert tensor_error > 0.5, tensor_error  # the comparison above can fail


def test_a_samples_result_does_not_depend_on_its_batch():
    model, _ = _matmul_model(17, rank=3)
    rng = np.random.default_rng(2)
    sample = rng.standard_normal((1, 6, 64)).astype(np.float32)
    outlier = 1000 * rng.standard_normal((1, 6, 64)).astype(np.float32)
    for granularity, independent in (("row", True), ("tensor", False)):
        quantized = edgeopt.quantize(model, edgeopt.DynamicConfig(activation_granularity=granularity)).model
        alone = models.run(quantized, {"x": sample})[0]
        batched = models.run(quantized, {"x": np.concatenate([sample, outlier])})[0][:1]
        # The integer product is exact and the float epilogue is elementwise per row, so row
        # ranges give the same numbers up to float rounding order (1e-6 relative).
        assert np.allclose(alone, batched, rtol=1e-6, atol=1e-6 * np.abs(alone).max()) == independent


def test_one_quantization_serves_every_matmul_reading_the_same_input():
    model = models.attention()
    result = edgeopt.quantize(model, edgeopt.DynamicConfig())
    ops = [node.op_type for node in result.model.graph.node]
    assert ops.count("MatMulInteger") == 4
    # q, k and v read x: one row quantization; the output projection reads the context: another.
    assert ops.count("ReduceMin") == 2 and ops.count("ReduceMax") == 2
    feeds = models.CASES["attention"].feeds(seed=3, count=16)
    # The int8 weights and 8-bit rows keep every sample's output direction (measured worst cosine
    # 0.9999); 0.999 is the bound a wrong shared quantization (another input's codes) breaks.
    assert models.worst_cosine(models.run(model, feeds), models.run(result.model, feeds)) > 0.999


def test_a_constant_row_is_exact():
    model, w = _matmul_model(17, rank=2)
    x = np.zeros((3, 64), np.float32)
    x[1] = 0.25  # every entry equal: zero spread, the row is its minimum
    x[2] = -3.0
    output = models.run(edgeopt.quantize(model, edgeopt.DynamicConfig()).model, {"x": x})[0]
    assert np.isfinite(output).all()
    # Only the int8 weights round (step max|w| / 127 per column, half a step of error per weight).
    bound = np.abs(x).sum(axis=1, keepdims=True) * np.abs(w).max(axis=0) / 254 + 1e-6
    assert (np.abs(output - x @ w) <= bound).all()


def test_unknown_granularity_is_refused():
    with pytest.raises(edgeopt.EdgeoptError, match="activation_granularity must be one of row, tensor"):
        edgeopt.DynamicConfig(activation_granularity="column")
