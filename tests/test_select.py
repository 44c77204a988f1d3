"""Selection: what static quantization touches, and what it leaves float on purpose."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import edgeopt
import models
from edgeopt.quantization.graph import GraphView
from edgeopt.quantization.select import normalization_statistics


def _decomposed_layer_norm():
    """x -> LayerNorm written out (as tf2onnx and keras2onnx export it) -> MatMul."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.float32(1e-5), "eps"),
             numpy_helper.from_array(rng.normal(1, 0.1, 16).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("ReduceMean", ["h", "axes"], ["mean"], name="mean"),
             helper.make_node("Sub", ["h", "mean"], ["centered"], name="center"),
             helper.make_node("Mul", ["centered", "centered"], ["squared"], name="square"),
             helper.make_node("ReduceMean", ["squared", "axes"], ["variance"], name="variance"),
             helper.make_node("Add", ["variance", "eps"], ["variance_eps"], name="add_eps"),
             helper.make_node("Sqrt", ["variance_eps"], ["std"], name="sqrt"),
             helper.make_node("Div", ["centered", "std"], ["normalized"], name="divide"),
             helper.make_node("Mul", ["normalized", "gamma"], ["scaled"], name="gamma_mul"),
             helper.make_node("Add", ["scaled", "beta"], ["y"], name="beta_add")]
    graph = helper.make_graph(nodes, "layer_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_decomposed_layer_norm_statistics_are_found():
    found = normalization_statistics(GraphView(_decomposed_layer_norm()))
    assert set(found) == {"mean", "variance", "variance_eps", "std", "squared"}


def test_global_average_pooling_by_reduce_mean_is_not_a_statistic():
    # conv_net's head with its pooling written as ReduceMean: nothing meets it again elementwise.
    model = models.CASES["conv_net"].build()
    model.graph.node.append(helper.make_node("ReduceMean", ["logits"], ["pooled"], name="gap", keepdims=0))
    model.graph.output[0].name = "pooled"
    assert normalization_statistics(GraphView(model)) == {}


def test_int8_keeps_the_statistics_float_and_stays_close_to_float():
    model = _decomposed_layer_norm()
    x = np.random.default_rng(1).normal(0, 1, (96, 8, 16)).astype(np.float32)
    result = edgeopt.quantize(model, edgeopt.Int8Config(scope="all"), calibration={"x": x})
    assert {"squared", "variance_eps"} <= set(result.plan.kept_float)  # the ones a quantizable op makes
    assert "proj" in result.plan.nodes and "square" not in result.plan.nodes
    test = np.random.default_rng(2).normal(0, 1, (16, 8, 16)).astype(np.float32)
    reference = models.run(model, {"x": test})
    # Measured 0.9994; per-tensor uint8 on O(1) normalized values bounds it well above 0.99.
    assert models.worst_cosine(reference, models.run(result.model, {"x": test})) > 0.99
