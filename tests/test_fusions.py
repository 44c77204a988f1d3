"""Exporter patterns rewritten exactly: operator list, numbers (ONNX Runtime, optimizations off), checker."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import models
from edgeopt.quantization.fusions import fold_affine_into_conv, fuse_hard_swish


def _model(nodes, inits, opset=13):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _check_same(original, rewritten, ops):
    onnx.checker.check_model(rewritten)
    assert [node.op_type for node in rewritten.graph.node] == ops
    x = {"x": np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32)}
    # float32 arithmetic in another order: within 1e-5 of the output's scale
    np.testing.assert_allclose(models.run(rewritten, x)[0], models.run(original, x)[0], rtol=1e-5, atol=1e-5)


def test_scalar_and_per_channel_affine_after_a_conv_fold_into_it():
    rng = np.random.default_rng(1)
    inits = [_const("w", rng.normal(size=(6, 4, 3, 3))), _const("b", rng.normal(size=6)),
             _const("scale", [1.7]), _const("shift", rng.normal(size=(1, 6, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["scale", "c"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "shift"], ["y"], name="add")]
    original = _model(nodes, inits)
    rewritten = onnx.ModelProto.FromString(original.SerializeToString())
    assert fold_affine_into_conv(rewritten)
    _check_same(original, rewritten, ["Conv"])


def test_scalar_affine_before_an_unpadded_conv_folds_into_it_but_not_before_a_padded_one():
    rng = np.random.default_rng(2)
    inits = [_const("w", rng.normal(size=(6, 4, 1, 1))), _const("w3", rng.normal(size=(6, 6, 3, 3))),
             _const("scale", [0.6]), _const("shift", [-0.3])]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "shift"], ["a"], name="add"),
             helper.make_node("Conv", ["a", "w"], ["c"], name="pointwise"),
             helper.make_node("Add", ["c", "shift"], ["d"], name="add2"),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "shift"], ["e"], name="add3"),
             helper.make_node("Conv", ["e", "w3"], ["y"], name="padded", pads=[1, 1, 1, 1])]
    original = _model(nodes, inits)
    rewritten = onnx.ModelProto.FromString(original.SerializeToString())
    assert fold_affine_into_conv(rewritten)
    # add3's shift would not reach the zero padding of "padded": it stays
    _check_same(original, rewritten, ["Conv", "Relu", "Add", "Conv"])


def test_decomposed_hard_swish_becomes_one_operator():
    inits = [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["y"], name="div")]
    original = _model(nodes, inits)
    rewritten = onnx.ModelProto.FromString(original.SerializeToString())
    assert fuse_hard_swish(rewritten)
    assert rewritten.opset_import[0].version >= 14  # HardSwish exists from opset 14
    _check_same(original, rewritten, ["HardSwish"])


def test_a_clip_to_other_bounds_is_not_hard_swish():
    inits = [_const("three", 3.0), _const("zero", 0.0), _const("five", 5.0), _const("six", 6.0)]
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "five"], ["c"], name="clip"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["y"], name="div")]
    assert not fuse_hard_swish(_model(nodes, inits))


def test_hard_swish_in_a_model_with_unnamed_nodes_keeps_every_other_node():
    # Removal must go by node, not by name: unnamed nodes all share the name "".
    from edgeopt.quantization.prepare import prepare

    inits = [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0), _const("w", np.ones((4, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["h", "c"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    original = _model(nodes, inits)
    rewritten = prepare(onnx.ModelProto.FromString(original.SerializeToString()))
    _check_same(original, rewritten, ["Conv", "HardSwish", "Relu"])


def test_a_constant_that_broadcasts_onto_another_axis_is_not_folded():
    # (6, 1) right-aligns onto the H and W axes of (N, C, H, W), not onto the channels: no fold.
    rng = np.random.default_rng(3)
    inits = [_const("w", rng.normal(size=(6, 4, 1, 1))), _const("odd", rng.normal(size=(6, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "odd"], ["y"], name="mul")]
    assert not fold_affine_into_conv(_model(nodes, inits))
