"""``Int8Config(shared_add_scale=True)``: one scale for each Add's activation operands and result.

With the scales tied an int8 Add rescales nothing, so ONNX Runtime (QLinearAdd, rounding in float)
and LiteRT's XNNPACK (fixed point) compute the same integers: on a residual model with integer
inputs and outputs the two runtimes' outputs are compared for exact equality, no tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import finish, worst_cosine
from onnx import TensorProto, helper, numpy_helper

import edgeopt


def _residual_net(seed: int = 0) -> onnx.ModelProto:
    """Conv+Relu, then two residual blocks (Conv+Relu, Conv, Add, Relu), mean, Gemm; (N, 4, 12, 12)."""
    rng = np.random.default_rng(seed)

    def weight(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [weight("w0", (8, 4, 3, 3), 0.3), weight("b0", (8,), 0.1), weight("fc_w", (8, 5), 0.5)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="stem_relu")]
    stream = "r0"
    for block, spread in enumerate((0.2, 0.05)):  # the second branch is narrower than the stream
        a, b = f"blk{block}_a", f"blk{block}_b"
        inits += [weight(f"{a}_w", (8, 8, 3, 3), 0.2), weight(f"{b}_w", (8, 8, 1, 1), spread)]
        nodes += [helper.make_node("Conv", [stream, f"{a}_w"], [f"{a}_c"], name=a, pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{a}_c"], [f"{a}_r"], name=f"{a}_relu"),
                  helper.make_node("Conv", [f"{a}_r", f"{b}_w"], [f"{b}_c"], name=b),
                  helper.make_node("Add", [stream, f"{b}_c"], [f"blk{block}_sum"], name=f"blk{block}_add"),
                  helper.make_node("Relu", [f"blk{block}_sum"], [f"blk{block}_out"], name=f"blk{block}_relu")]
        stream = f"blk{block}_out"
    nodes += [helper.make_node("GlobalAveragePool", [stream], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return finish(graph)


def _feeds(seed: int, count: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(count)]


def _calibration():
    return {"x": np.concatenate([feed["x"] for feed in _feeds(1, 32)])}


def _scale(plan, name: str) -> float:
    return float(np.asarray(plan.activations[name].scale))


def _low(plan, name: str) -> float:
    """The real value of the integer range's lowest end (uint8: 0, int8: -128)."""
    params = plan.activations[name]
    qmin = -128 if params.dtype == "int8" else 0
    return (qmin - int(params.zero_point)) * float(np.asarray(params.scale))


def test_each_residual_stream_shares_one_scale():
    model = _residual_net()
    fixed = {"calibration_method": "minmax", "weight_rounding": "nearest"}  # no search: the same ranges
    tied = edgeopt.quantize(model, edgeopt.Int8Config(shared_add_scale=True, **fixed), calibration=_calibration()).plan
    plain = edgeopt.quantize(model, edgeopt.Int8Config(**fixed), calibration=_calibration()).plan
    # each block's output feeds the next Add; the Relu after each Add is absorbed into its range
    stream = ["r0", "blk0_b_c", "blk0_out", "blk1_b_c", "blk1_out"]
    scales = {name: _scale(tied, name) for name in stream if name in tied.activations}
    assert len(scales) == 5, sorted(tied.activations)
    assert len(set(scales.values())) == 1, scales
    # the group takes its widest member's scale, so no tied range is narrower than it was
    assert max(scales.values()) == pytest.approx(max(_scale(plain, name) for name in scales), rel=1e-6)
    assert len({_scale(plain, name) for name in scales}) > 1  # without the option the scales differ
    for name, scale in scales.items():  # each member keeps its low end, to half a step (rounding its zero point)
        assert abs(_low(tied, name) - _low(plain, name)) <= scale / 2 * (1 + 1e-5), name


def test_shared_scales_stay_close_to_float():
    from models import run

    model = _residual_net()
    result = edgeopt.quantize(model, edgeopt.Int8Config(shared_add_scale=True), calibration=_calibration())
    held_out = _feeds(2, 16)
    reference = [np.concatenate([run(model, feed)[0] for feed in held_out])]
    got = [np.concatenate([run(result.model, feed)[0] for feed in held_out])]
    # 8-bit activations through five layers: per-sample cosine to float above 0.999 (0.99987 measured)
    assert worst_cosine(reference, got) > 0.999


def test_tied_integer_only_tflite_equals_onnx_runtime_exactly():
    pytest.importorskip("ai_edge_litert")
    from edgeopt.runtimes.litert import LiteRTRunner
    from edgeopt.runtimes.onnxruntime import OnnxRuntimeRunner

    config = edgeopt.Int8Config(shared_add_scale=True, integer_only=True)
    result = edgeopt.quantize(_residual_net(), config, calibration=_calibration())
    ours, reference = LiteRTRunner(edgeopt.export(result.model).data), OnnxRuntimeRunner(result.model)
    for feed in _feeds(3, 24):
        np.testing.assert_array_equal(ours.run(feed)[0], reference.run(feed)[0])


def test_litert_inputs_are_quantized_like_onnx_runtime():
    """Float32 division, round half to even: values next to a half step land where ONNX Runtime's
    QuantizeLinear puts them (a float64 division rounds some of them the other way)."""
    from models import run

    from edgeopt.runtimes.litert import _encode

    scale, zero_point = np.float32(0.018658448), -14
    steps = np.arange(-100, 100, dtype=np.float32) + np.float32(0.5)
    values = np.concatenate([np.nextafter(steps * scale, np.float32(np.inf)), steps * scale,
                             np.nextafter(steps * scale, np.float32(-np.inf))]).astype(np.float32)
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(values)])],
                              [helper.make_tensor_value_info("q", TensorProto.INT8, [len(values)])],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                               numpy_helper.from_array(np.array(zero_point, np.int8), "z")])
    expected = run(finish(graph), {"x": values})[0]
    detail = {"dtype": np.int8, "quantization": (float(scale), zero_point)}
    np.testing.assert_array_equal(_encode(values, detail), expected)


def test_a_given_plan_refuses_shared_add_scale():
    result = edgeopt.quantize(_residual_net(), edgeopt.Int8Config(), calibration=_calibration())
    with pytest.raises(edgeopt.EdgeoptError, match="shared_add_scale applies when calibrating"):
        edgeopt.quantize(result.model, edgeopt.Int8Config(shared_add_scale=True))


def test_int8_activations_tie_too():
    config = edgeopt.Int8Config(shared_add_scale=True, activation_type="int8", calibration_method="minmax")
    plan = edgeopt.quantize(_residual_net(), config, calibration=_calibration()).plan
    stream = ["r0", "blk0_b_c", "blk0_out", "blk1_b_c", "blk1_out"]
    assert len({_scale(plan, name) for name in stream}) == 1
    assert {plan.activations[name].dtype for name in stream} == {"int8"}
    assert int(plan.activations["blk1_out"].zero_point) == -128  # the Relu's low end, 0, stays exact


def _add_scales(path) -> list[set]:
    """The distinct scales of each ADD's operands and result in a .tflite file."""
    from edgeopt.tflite import schema as fb

    model = fb.parse(path.read_bytes())
    graph = model.subgraphs[0]
    adds = [op for op in graph.operators if fb.builtin_name(model.operatorCodes[op.opcodeIndex].builtinCode) == "ADD"]
    return [{float(graph.tensors[i].quantization.scale[0]) for i in [*op.inputs, *op.outputs]} for op in adds]


@pytest.mark.parametrize("choice, shared", [(None, True), ("independent", False), ("shared", True)])
def test_cli_shares_add_scales_for_tflite_outputs_by_default(choice, shared, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgeopt.cli import entry_point

    onnx.save(_residual_net(), str(tmp_path / "residual.onnx"))
    np.savez(tmp_path / "calibration.npz", **_calibration())
    output = tmp_path / "residual.tflite"
    args = ["quantize", str(tmp_path / "residual.onnx"), "-o", str(output), "--mode", "int8",
            "--calibration", str(tmp_path / "calibration.npz")] + (["--add-scales", choice] if choice else [])
    assert entry_point(args) == 0
    scales = _add_scales(output)
    assert len(scales) == 2
    assert all(len(group) == 1 for group in scales) == shared, scales
