"""Selection: what static quantization touches, and what it leaves float on purpose."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import edgeopt
import models
from edgeopt.quantization.graph import GraphView
from edgeopt.quantization.select import normalization_statistics, pointwise_interiors


def _one_in_one_out(nodes, inits, name: str, x_shape: list, y_shape: list, opset: int):
    """A model of ``nodes`` reading float ``x`` and writing float ``y``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


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
    return _one_in_one_out(nodes, inits, "layer_norm", [None, 8, 16], [None, 8, 16], opset=18)


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


def _tanh_gelu_between_matmuls():
    """x -> MatMul -> GELU written out with tanh (as jax2tf and tf2onnx export it) -> MatMul."""
    rng = np.random.default_rng(3)
    constant = {"half": 0.5, "one": 1.0, "cubic": 0.044715, "root": float(np.sqrt(2 / np.pi))}
    inits = [numpy_helper.from_array(np.float32(value), name) for name, value in constant.items()]
    inits += [numpy_helper.from_array(rng.normal(0, 0.5, (16, 32)).astype(np.float32), "w1"),
              numpy_helper.from_array(rng.normal(0, 0.3, (32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
             helper.make_node("Mul", ["h", "h"], ["h2"], name="square"),
             helper.make_node("Mul", ["h2", "h"], ["h3"], name="cube"),
             helper.make_node("Mul", ["h3", "cubic"], ["h3c"], name="cube_scale"),
             helper.make_node("Add", ["h", "h3c"], ["inner"], name="inner"),
             helper.make_node("Mul", ["inner", "root"], ["scaled"], name="scale"),
             helper.make_node("Tanh", ["scaled"], ["t"], name="tanh"),
             helper.make_node("Add", ["t", "one"], ["t1"], name="plus_one"),
             helper.make_node("Mul", ["h", "half"], ["hh"], name="half"),
             helper.make_node("Mul", ["hh", "t1"], ["gelu"], name="gelu"),
             helper.make_node("MatMul", ["gelu", "w2"], ["y"], name="down")]
    return _one_in_one_out(nodes, inits, "gelu", [None, 16], [None, 8], opset=17)


def test_the_inside_of_a_decomposed_gelu_is_found_but_not_its_input_or_result():
    found = pointwise_interiors(GraphView(_tanh_gelu_between_matmuls()))
    assert set(found) == {"h2", "h3", "h3c", "inner", "scaled", "t", "t1", "hh"}


def test_a_residual_addition_and_a_lone_scaling_are_not_activation_interiors():
    # conv_net adds a convolution's output to its input: two variable sources, no chain
    assert pointwise_interiors(GraphView(models.CASES["conv_net"].build())) == {}
    model = _tanh_gelu_between_matmuls()
    lone = helper.make_node("Mul", ["y", "half"], ["z"], name="lone")  # a chain of one node
    model.graph.node.append(lone)
    model.graph.output[0].name = "z"
    assert "y" not in pointwise_interiors(GraphView(model))


def test_int8_quantizes_a_decomposed_gelu_at_its_input_and_result_only():
    model = _tanh_gelu_between_matmuls()
    x = np.random.default_rng(4).normal(0, 1, (128, 16)).astype(np.float32)
    result = edgeopt.quantize(model, edgeopt.Int8Config(scope="all"), calibration={"x": x})
    assert {"h3", "t", "inner"} <= set(result.plan.kept_float)
    assert {"h", "gelu"} <= set(result.plan.activations)
    integer_only = edgeopt.quantize(model, edgeopt.Int8Config(integer_only=True), calibration={"x": x})
    assert "h3" in integer_only.plan.activations  # integer-only quantizes everything


def test_the_inside_of_silu_stays_float_its_input_and_result_are_quantized():
    """x * sigmoid(x): the sigmoid's output is inside the chain; h and y are not."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Sigmoid", ["h"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["h", "s"], ["y"], name="silu")]
    model = _one_in_one_out(nodes, inits, "silu", [None, 16], [None, 16], opset=17)
    assert set(pointwise_interiors(GraphView(model))) == {"s"}
