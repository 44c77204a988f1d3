"""The TFLite writer, operator by operator: each tiny ONNX graph is written as .tflite and run on
LiteRT (XNNPACK, as apps run it), against ONNX Runtime on the same seeded input.

Tolerance: 1e-4 of the reference output's largest magnitude (issue 11's bound for float). Both
runtimes compute in float32 but sum in different orders (XNNPACK's tiled kernels, ONNX Runtime's
MLAS); on these graphs the differences are about 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import run
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ai_edge_litert")

from edgeopt.errors import EdgeoptError
from edgeopt.runtimes.litert import LiteRTRunner
from edgeopt.tflite import schema as fb
from edgeopt.tflite.export import TFLiteConfig, export

TOLERANCE = 1e-4


def finish(graph, opset=17):
    """The model of ``graph``, its output types filled in by shape inference, checked."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
    for output in model.graph.output:
        if output.name in inferred:
            output.CopyFrom(inferred[output.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    return finish(graph, opset)


def _w(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


def _check(model, io_layout="nchw", config=None):
    result = export(model, config or TFLiteConfig(io_layout=io_layout))
    rng = np.random.default_rng(1)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    expected = run(model, feeds)
    runner = LiteRTRunner(result.data)
    given = {k: (v.transpose(0, *range(2, v.ndim), 1) if io_layout == "nhwc" and v.ndim >= 3 else v)
             for k, v in feeds.items()}
    outputs = runner.run(given)
    for want, got in zip(expected, outputs):
        if io_layout == "nhwc" and want.ndim >= 3:
            want = want.transpose(0, *range(2, want.ndim), 1)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOLERANCE * max(np.abs(want).max(), 1e-6)
    return result


def _whole(data: bytes) -> bool:
    from edgeopt.runtimes.litert import delegation

    return delegation(LiteRTRunner(data))["whole"]


def _conv(name, x, out, weight_shape, seed=0, **attrs):
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name, **attrs), {
        f"{name}_w": _w(*weight_shape, seed=seed), f"{name}_b": _w(weight_shape[0], seed=seed + 1)}


CONV_CASES = {
    "same": dict(pads=[1, 1, 1, 1]),
    "valid_stride2": dict(strides=[2, 2]),
    "torch_stride2": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asymmetric": dict(pads=[0, 1, 2, 0]),
    "dilated": dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    "auto_same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_paddings(case):
    node, inits = _conv("c", "x", "y", (8, 4, 3, 3), **CONV_CASES[case])
    _check(_graph([node], [("x", [1, 4, 11, 11])], ["y"], inits))


@pytest.mark.parametrize("group,multiplier", [(8, 1), (8, 2), (2, 1)])
def test_depthwise_and_grouped_conv(group, multiplier):
    node, inits = _conv("c", "x", "y", (8 * multiplier, 8 // group, 3, 3), group=group, pads=[1, 1, 1, 1])
    result = _check(_graph([node], [("x", [1, 8, 10, 10])], ["y"], inits))
    expected = "DEPTHWISE_CONV_2D" if group == 8 else "CONV_2D"
    assert expected in result.report["operators"]


def test_conv_relu6_fuses_and_graph_has_one_transpose_each_end():
    conv, inits = _conv("c", "x", "h", (8, 4, 3, 3), pads=[1, 1, 1, 1])
    clip = helper.make_node("Clip", ["h", "lo", "hi"], ["r"])
    conv2, inits2 = _conv("d", "r", "y", (8, 8, 1, 1), seed=3)
    inits.update(inits2, lo=np.float32(0), hi=np.float32(6))
    result = _check(_graph([conv, clip, conv2], [("x", [1, 4, 8, 8])], ["y"], inits))
    assert result.report["operators"] == {"CONV_2D": 2, "TRANSPOSE": 2}
    assert _check(_graph([conv, clip, conv2], [("x", [1, 4, 8, 8])], ["y"], inits),
                  io_layout="nhwc").report["operators"] == {"CONV_2D": 2}


def test_conv_1d():
    node, inits = _conv("c", "x", "y", (6, 4, 3), pads=[1, 1], strides=[2])
    _check(_graph([node], [("x", [1, 4, 17])], ["y"], inits))


def test_conv_transpose():
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                            output_padding=[1, 1])
    _check(_graph([node], [("x", [1, 4, 6, 6])], ["y"], {"w": _w(4, 5, 3, 3), "b": _w(5)}))


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
])
def test_pools(op, attrs):
    _check(_graph([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", [1, 3, 9, 9])], ["y"]))


def test_global_pools_flatten_gemm():
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)]
    result = _check(_graph(nodes, [("x", [1, 6, 5, 5])], ["y"], {"w": _w(4, 6), "b": _w(4)}), io_layout="nhwc")
    assert "TRANSPOSE" not in result.report["operators"]  # [1, 6, 1, 1] flattens with no transpose


def test_flatten_of_a_spatial_map_transposes_back():
    node, inits = _conv("c", "x", "h", (3, 2, 1, 1))
    nodes = [node, helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    inits["w"] = _w(3 * 4 * 4, 5)
    _check(_graph(nodes, [("x", [1, 2, 4, 4])], ["y"], inits))


def test_squeeze_excitation_broadcast():
    conv, inits = _conv("c", "x", "h", (8, 8, 1, 1))
    nodes = [conv, helper.make_node("ReduceMean", ["h"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Sigmoid", ["m"], ["s"]), helper.make_node("Mul", ["h", "s"], ["y"])]
    result = _check(_graph(nodes, [("x", [1, 8, 6, 6])], ["y"], inits), io_layout="nhwc")
    assert "TRANSPOSE" not in result.report["operators"]


def test_binary_ops_with_constants_and_lower_rank_operands():
    nodes = [helper.make_node("Add", ["x", "bias"], ["a"]), helper.make_node("Sub", ["a", "v"], ["s"]),
             helper.make_node("Div", ["s", "two"], ["d"]), helper.make_node("Max", ["d", "v"], ["y"])]
    inits = {"bias": _w(5, 1, 1), "two": np.float32(2.0)}
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 3, 3]),
                                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    _check(finish(graph))


@pytest.mark.parametrize("op,attrs,extra", [
    ("Sigmoid", {}, {}), ("Tanh", {}, {}), ("HardSwish", {}, {}), ("LeakyRelu", {"alpha": 0.2}, {}),
    ("Relu", {}, {}), ("Exp", {}, {}), ("Abs", {}, {}), ("Neg", {}, {}),
])
def test_unary(op, attrs, extra):
    _check(_graph([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", [1, 4, 3, 3])], ["y"], extra))


def test_clip_general_prelu_batchnorm():
    conv, inits = _conv("c", "x", "h", (4, 4, 1, 1))
    nodes = [conv, helper.make_node("Clip", ["h", "lo", "hi"], ["k"]), helper.make_node("PRelu", ["k", "slope"], ["p"]),
             helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["n"]),
             helper.make_node("Add", ["p", "n"], ["y"])]
    inits.update(lo=np.float32(-0.5), hi=np.float32(0.7), slope=np.abs(_w(4, 1, 1)), g=_w(4) + 1, be=_w(4),
                 mu=_w(4), var=np.abs(_w(4)) + 0.5)
    _check(_graph(nodes, [("x", [1, 4, 5, 5])], ["y"], inits))


def test_concat_split_slice_pad_on_channels_last_tensors():
    a, inits = _conv("a", "x", "ha", (4, 3, 1, 1))
    b, inits_b = _conv("b", "x", "hb", (6, 3, 1, 1), seed=4)
    inits.update(inits_b, starts=np.array([1, 0], np.int64), ends=np.array([-1, 100], np.int64),
                 axes=np.array([1, 3], np.int64), steps=np.array([2, 1], np.int64),
                 pads=np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), sizes=np.array([3, 7], np.int64))
    nodes = [a, b, helper.make_node("Concat", ["ha", "hb"], ["c"], axis=1),
             helper.make_node("Split", ["c", "sizes"], ["s1", "s2"], axis=1),
             helper.make_node("Slice", ["s2", "starts", "ends", "axes", "steps"], ["sl"]),
             helper.make_node("Pad", ["sl", "pads"], ["y"], mode="reflect"),
             helper.make_node("Relu", ["s1"], ["z"])]
    result = _check(_graph(nodes, [("x", [1, 3, 6, 6])], ["y", "z"], inits), io_layout="nhwc")
    assert "TRANSPOSE" not in result.report["operators"]


@pytest.mark.parametrize("axis", [1, -1])
def test_softmax_on_any_axis(axis):
    conv, inits = _conv("c", "x", "h", (5, 3, 1, 1))
    _check(_graph([conv, helper.make_node("Softmax", ["h"], ["y"], axis=axis)], [("x", [1, 3, 4, 4])], ["y"], inits))


def test_reduce_without_keepdims_and_gather():
    conv, inits = _conv("c", "x", "h", (5, 3, 1, 1))
    nodes = [conv, helper.make_node("ReduceMean", ["h"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Gather", ["m", "i"], ["g"], axis=2), helper.make_node("Gather", ["g", "j"], ["y"], axis=1)]
    inits.update(i=np.array(-1, np.int64), j=np.array([4, 0, 2], np.int64))
    _check(_graph(nodes, [("x", [1, 3, 4, 6])], ["y"], inits))


def test_reduce_l2_on_channels_last_tensors():
    conv, inits = _conv("c", "x", "h", (5, 3, 1, 1))
    nodes = [conv, helper.make_node("ReduceL2", ["h"], ["n"], axes=[1], keepdims=1),
             helper.make_node("Div", ["h", "n"], ["y"])]
    result = _check(_graph(nodes, [("x", [1, 3, 4, 6])], ["y"], inits))
    assert {"SQRT", "SUM"} <= set(result.report["operators"])


def test_masking_with_where_and_or_isnan():
    """An attention mask as newer exporters write it: comparisons combined with And/Or, Where
    choosing a large negative score, IsNaN (TFLite has none: NOT_EQUAL(x, x))."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"]), helper.make_node("Less", ["x", "one"], ["small"]),
             helper.make_node("And", ["pos", "small"], ["both"]), helper.make_node("IsNaN", ["x"], ["nan"]),
             helper.make_node("Or", ["both", "nan"], ["keep"]),
             helper.make_node("Where", ["keep", "x", "low"], ["y"])]
    inits = {"zero": np.float32(0.0), "one": np.float32(1.0), "low": np.float32(-10.0)}
    result = _check(_graph(nodes, [("x", [2, 8])], ["y"], inits))
    assert {"LOGICAL_AND", "LOGICAL_OR", "NOT_EQUAL", "SELECT_V2"} <= set(result.report["operators"])


def test_isnan_finds_the_nans():
    nodes = [helper.make_node("IsNaN", ["x"], ["nan"]), helper.make_node("Where", ["nan", "zero", "x"], ["y"])]
    model = _graph(nodes, [("x", [2, 8])], ["y"], {"zero": np.float32(0.0)})
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    x[0, 1] = x[1, 5] = np.nan
    got = LiteRTRunner(export(model).data).run({"x": x})[0]
    np.testing.assert_array_equal(got, run(model, {"x": x})[0])
    assert got[0, 1] == 0 and got[1, 5] == 0


@pytest.mark.parametrize("form", ["div, (x * (1 + erf)) * 0.5", "mul, (x * 0.5) * (1 + erf)"])
def test_erf_gelu_becomes_one_gelu(form):
    """x * 0.5 * (1 + erf(x / sqrt(2))) spelt out as exporters before opset 20 write it."""
    divide = form.startswith("div")
    scaled = helper.make_node("Div" if divide else "Mul", ["h", "c"], ["t"])
    tail = ([helper.make_node("Mul", ["h", "e1"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])] if divide
            else [helper.make_node("Mul", ["h", "half"], ["m"]), helper.make_node("Mul", ["m", "e1"], ["y"])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), scaled, helper.make_node("Erf", ["t"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), *tail]
    inits = {"w": _w(16, 32), "c": np.float32(np.sqrt(2.0) if divide else 1 / np.sqrt(2.0)),
             "one": np.float32(1.0), "half": np.float32(0.5)}
    result = _check(_graph(nodes, [("x", [4, 16])], ["y"], inits))
    assert result.report["operators"].get("GELU") == 1 and "MUL" not in result.report["operators"]


def test_erf_gelu_with_an_intermediate_graph_output_is_left_alone():
    """x / sqrt(2) is also a graph output: fusing would drop its producer, so the chain stays and
    the lone Erf is refused by name."""
    nodes = [helper.make_node("Div", ["x", "c"], ["t"]), helper.make_node("Erf", ["t"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["x", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    inits = {"c": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)}
    with pytest.raises(EdgeoptError, match="Erf 'erf'"):
        export(_graph(nodes, [("x", [4, 16])], ["y", "t"], inits))


def test_erf_alone_is_refused_by_name():
    model = _graph([helper.make_node("Erf", ["x"], ["y"], name="lonely")], [("x", [1, 4])], ["y"])
    with pytest.raises(EdgeoptError, match="Erf 'lonely'.*GELU"):
        export(model)


def test_constant_folding_falls_back_to_onnx_runtime():
    """onnx's reference evaluator fails on this GatherElements (onnx 1.23); ONNX Runtime folds it,
    so the writer sees a constant and needs no GATHER_ELEMENTS (TFLite has none)."""
    from edgeopt.quantization.prepare import fold_constants

    positions = np.arange(512, dtype=np.int64).reshape(1, 512)
    nodes = [helper.make_node("GatherElements", ["positions", "index"], ["picked"], axis=1),
             helper.make_node("Cast", ["picked"], ["offset"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "offset"], ["y"])]
    model = _graph(nodes, [("x", [1, 48])], ["y"],
                   {"positions": positions, "index": np.arange(48, dtype=np.int64).reshape(1, 48)})
    assert fold_constants(model)
    assert "GatherElements" not in {node.op_type for node in model.graph.node}
    _check(model)


def test_transposes_from_an_nhwc_exporter_vanish():
    """keras2onnx / tf2onnx graphs: NHWC input, Transpose to NCHW, Conv, Transpose back."""
    conv, inits = _conv("c", "t", "h", (6, 3, 3, 3), pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), conv,
             helper.make_node("Transpose", ["h"], ["y"], perm=[0, 2, 3, 1])]
    result = _check(_graph(nodes, [("x", [1, 7, 7, 3])], ["y"], inits))
    assert result.report["operators"] == {"CONV_2D": 1}


@pytest.mark.parametrize("mode,transform,factor", [("nearest", "asymmetric", 2), ("nearest", "asymmetric", 8),
                                                   ("linear", "half_pixel", 2), ("linear", "align_corners", 2)])
def test_resize(mode, transform, factor):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=transform,
                            nearest_mode="floor")
    scales = np.array([1, 1, factor, factor], np.float32)
    result = _check(_graph([node], [("x", [1, 3, 5, 5])], ["y"], {"scales": scales}), io_layout="nhwc")
    if mode == "nearest":  # copies concatenated, in groups XNNPACK takes
        assert "RESIZE_NEAREST_NEIGHBOR" not in result.report["operators"]
        assert LiteRTRunner(result.data) and _whole(result.data)


def test_matmul_fully_connected_keeps_dims_and_batch_matmul():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Transpose", ["h"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "t"], ["y"])]
    result = _check(_graph(nodes, [("x", [1, 4, 6])], ["y"], {"w": _w(6, 5)}))
    assert set(result.report["operators"]) >= {"FULLY_CONNECTED", "BATCH_MATMUL"}


def test_reshape_computed_from_shape_folds():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write a flatten."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    result = _check(finish(graph))
    assert result.report["operators"] == {"RESHAPE": 1}


def test_same_model_gives_the_same_bytes_and_the_schema_rules_hold():
    conv, inits = _conv("c", "x", "y", (8, 4, 3, 3), pads=[1, 1, 1, 1])
    model = _graph([conv], [("x", [1, 4, 8, 8])], ["y"], inits)
    first, second = export(model).data, export(model).data
    assert first == second
    root = fb.module().Model.GetRootAs(first, 0)
    assert root.Buffers(0).DataLength() == 0
    for index in range(1, root.BuffersLength()):
        buffer = root.Buffers(index)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            assert start % 16 == 0
    for index in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(index)
        assert code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)


def test_writing_and_running_never_import_tensorflow(tmp_path):
    """TensorFlow is blocked in a fresh interpreter: the writer and LiteRT must not need it."""
    import subprocess
    import sys

    conv, inits = _conv("c", "x", "y", (4, 3, 3, 3), pads=[1, 1, 1, 1])
    onnx.save(_graph([conv], [("x", [1, 3, 8, 8])], ["y"], inits), str(tmp_path / "m.onnx"))
    script = ("import sys; sys.modules['tensorflow'] = None\n"
              "import numpy as np, edgeopt\n"
              "from edgeopt.runtimes.litert import LiteRTRunner\n"
              f"result = edgeopt.export({str(tmp_path / 'm.onnx')!r})\n"
              "out = LiteRTRunner(result.data).run({'x': np.ones((1, 3, 8, 8), np.float32)})\n"
              "assert out[0].shape == (1, 4, 8, 8)\n"
              "assert sys.modules['tensorflow'] is None\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cli_export_then_evaluate_has_the_onnx_keys(tmp_path, monkeypatch, capsys):
    import json

    from edgeopt.cli import entry_point

    monkeypatch.chdir(tmp_path)
    conv, inits = _conv("c", "x", "h", (4, 3, 3, 3), pads=[1, 1, 1, 1])
    nodes = [conv, helper.make_node("GlobalAveragePool", ["h"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    onnx.save(_graph(nodes, [("x", [1, 3, 8, 8])], ["y"], inits), "m.onnx")
    rng = np.random.default_rng(0)
    np.savez("data.npz", x=rng.standard_normal((6, 3, 8, 8)).astype(np.float32), labels=np.arange(6) % 4)
    assert entry_point(["export", "m.onnx", "-o", "m.tflite", "--report", "r.json"]) == 0
    assert "m.tflite: " in capsys.readouterr().out
    assert json.loads(open("r.json").read())["size_bytes"] == (tmp_path / "m.tflite").stat().st_size
    for model in ("m.onnx", "m.tflite"):
        assert entry_point(["evaluate", model, "--data", "data.npz", "--reference", "m.onnx", "--json",
                            f"{model}.json", "--runs", "2", "--warmup", "0"]) == 0
    onnx_result, tflite_result = (json.loads(open(f"{m}.json").read()) for m in ("m.onnx", "m.tflite"))
    assert set(tflite_result) == set(onnx_result)
    assert tflite_result["top1"] == onnx_result["top1"]
    assert tflite_result["fidelity"]["cosine_worst"] > 0.99999
