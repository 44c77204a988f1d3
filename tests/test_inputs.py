"""Inputs as other exporters declare them: dim_value -1 or 0 for dynamic dimensions."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeopt
from edgeopt.data import input_specs


def _paddle_style_conv(dynamic_value: int):
    """A Conv whose input is declared [dynamic, 3, dynamic, dynamic] the way Paddle2ONNX writes it."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dynamic_value, 3, dynamic_value, dynamic_value])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dynamic_value, 4, dynamic_value, dynamic_value])],
        [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dynamic_value", [-1, 0])
def test_minus_one_and_zero_dimensions_are_dynamic(dynamic_value):
    model = _paddle_style_conv(dynamic_value)
    assert input_specs(model)[0].shape == (None, 3, None, None)
    data = {"x": np.random.default_rng(1).normal(size=(32, 3, 48, 64)).astype(np.float32)}
    result = edgeopt.quantize(model, edgeopt.Int8Config(), calibration=data)
    assert result.report["quantized_nodes"] == {"Conv": 1, "Relu": 1}


def test_data_that_does_not_fit_names_the_input_and_both_shapes():
    model = _paddle_style_conv(-1)
    data = {"x": np.zeros((8, 1, 48, 64), np.float32)}
    with pytest.raises(edgeopt.EdgeoptError, match=r"'x' has shape \(8, 1, 48, 64\); the model expects \(\?, 3, \?, \?\)"):
        edgeopt.quantize(model, edgeopt.Int8Config(), calibration=data)
