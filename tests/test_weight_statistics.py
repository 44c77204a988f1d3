"""weight_statistics: sparsity and distinct values per output channel, read through the nodes
that widen stored weights (DequantizeLinear, Cast, a scale Mul)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.weight_statistics import weight_statistics


def _conv_model(weight_nodes, initializers, weight_name):
    nodes = list(weight_nodes) + [helper.make_node("Conv", ["x", weight_name], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weight():
    """4 output channels x 2 x 3 x 3; channel 0 holds 3 distinct values and 6 zeros."""
    weight = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    weight[0] = np.array([0.0, 1.0, 2.0] * 6, np.float32).reshape(2, 3, 3)
    return weight


def test_float_weights():
    weight = _weight()
    stats = weight_statistics(_conv_model([], [numpy_helper.from_array(weight, "w")], "w"))
    assert stats["layers"] == 1 and stats["weights"] == weight.size
    assert stats["sparsity"] == pytest.approx(6 / weight.size)
    assert stats["distinct_per_channel_max"] == 18  # the random channels
    assert stats["distinct_per_channel_mean"] == pytest.approx((3 + 18 * 3) / 4)


@pytest.mark.parametrize("widening", ["DequantizeLinear", "Cast+Mul"])
def test_integers_behind_the_nodes_that_widen_them(widening):
    integers = np.clip(np.round(_weight() * 20), -127, 127).astype(np.int8)
    integers[1] = 5  # one value in the whole channel
    scale = numpy_helper.from_array(np.full(4, 0.05, np.float32), "s")
    if widening == "DequantizeLinear":
        nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], axis=0)]
    else:
        nodes = [helper.make_node("Cast", ["wq"], ["wide"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["wide", "s4"], ["w"])]
        scale = numpy_helper.from_array(np.full((4, 1, 1, 1), 0.05, np.float32), "s4")
    stats = weight_statistics(_conv_model(nodes, [numpy_helper.from_array(integers, "wq"), scale], "w"))
    per_channel = [len(np.unique(row)) for row in integers.reshape(4, -1)]
    assert stats["distinct_per_channel_max"] == max(per_channel)
    assert stats["distinct_per_channel_mean"] == pytest.approx(np.mean(per_channel))
    assert stats["sparsity"] == pytest.approx(np.mean(integers == 0))


def test_no_weights():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    stats = weight_statistics(helper.make_model(graph))
    assert stats["layers"] == 0 and stats["sparsity"] is None
