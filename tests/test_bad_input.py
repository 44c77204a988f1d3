"""Bad input, through the CLI and the API: exit status 2, exactly one ``edgeopt: error:`` line on
stderr, no output file, and every input file byte-for-byte unchanged."""

from __future__ import annotations

import pathlib

import models
import numpy as np
import onnx
import pytest
from conftest import fingerprint

import edgeopt
from edgeopt.cli import entry_point


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = entry_point([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def workspace(tmp_path: pathlib.Path, conv_files) -> pathlib.Path:
    """A folder of good and bad inputs for conv_net (input "input", shape (N, 3, 16, 16))."""
    case = models.CASES["conv_net"]
    good = conv_files["model"].read_bytes()
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    onnx.save(models.no_float_weights(), str(tmp_path / "relu_only.onnx"))
    onnx.save(models.lstm(), str(tmp_path / "lstm.onnx"))
    np.savez(tmp_path / "lstm_calibration.npz", **models.CASES["lstm"].feeds(seed=1, count=8))
    samples = case.feeds(seed=1, count=8)["input"]
    np.savez(tmp_path / "wrong_name.npz", image=samples)
    np.savez(tmp_path / "wrong_shape.npz", input=samples[:, :, :15, :])
    np.savez(tmp_path / "wrong_rank.npz", input=samples[:, 0])
    np.savez(tmp_path / "float64.npz", input=samples.astype(np.float64))
    np.savez(tmp_path / "empty.npz", input=samples[:0])
    np.savez(tmp_path / "bad_labels.npz", input=samples, labels=np.zeros(3, dtype=np.int64))
    np.savez(tmp_path / "relu_calibration.npz", x=np.ones((4, 4), np.float32))
    (tmp_path / "not_an_archive.npz").write_bytes(b"this is not a zip file")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "random.tflite").write_bytes(np.random.default_rng(1).bytes(4096))
    unranked = models.conv_net()
    unranked.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(unranked, str(tmp_path / "no_rank.onnx"))
    wide = models.conv_net()
    wide.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    onnx.save(wide, str(tmp_path / "dynamic_width.onnx"))
    return tmp_path


def _cases():
    conv, out = "conv.onnx", ["-o", "out.onnx"]
    float16 = ["--mode", "float16"]
    int16x8 = ["--mode", "int16x8", "--calibration"]

    def int8(data):
        return ["--mode", "int8", "--calibration", data]

    return {
        "not an ONNX file": ["quantize", "random.onnx", *out, *float16],
        "truncated ONNX file": ["quantize", "truncated.onnx", *out, *float16],
        "missing model file": ["quantize", "missing.onnx", *out, *float16],
        "no float weights float16": ["quantize", "relu_only.onnx", *out, *float16],
        "no float weights dynamic": ["quantize", "relu_only.onnx", *out, "--mode", "dynamic"],
        "no float weights int8": ["quantize", "relu_only.onnx", *out, *int8("relu_calibration.npz")],
        "calibration wrong input name": ["quantize", conv, *out, *int8("wrong_name.npz")],
        "calibration wrong shape": ["quantize", conv, *out, *int8("wrong_shape.npz")],
        "calibration wrong rank": ["quantize", conv, *out, *int8("wrong_rank.npz")],
        "calibration float64": ["quantize", conv, *out, *int8("float64.npz")],
        "calibration empty": ["quantize", conv, *out, *int8("empty.npz")],
        "calibration empty int16x8": ["quantize", conv, *out, *int16x8, "empty.npz"],
        "calibration bad labels": ["quantize", conv, *out, *int8("bad_labels.npz")],
        "calibration missing file": ["quantize", conv, *out, *int8("missing.npz")],
        "calibration not an archive": ["quantize", conv, *out, *int8("not_an_archive.npz")],
        "output folder does not exist": ["quantize", conv, "-o", "no_such_folder/out.onnx", *float16],
        "output is an existing folder": ["quantize", conv, "-o", "a_folder", *float16],
        "int8 without calibration": ["quantize", conv, *out, "--mode", "int8"],
        "int16x8 without calibration": ["quantize", conv, *out, "--mode", "int16x8"],
        "unknown mode": ["quantize", conv, *out, "--mode", "int4"],
        "unknown calibration method": ["quantize", conv, *out, *int8("calibration.npz"),
                                       "--calibration-method", "nope"],
        "output equals the model": ["quantize", conv, "-o", conv, *float16],
        "output equals the model spelt differently": ["quantize", conv, "-o", "./a_folder/../conv.onnx",
                                                      *float16],
        "output equals the calibration": ["quantize", conv, "-o", "calibration.npz",
                                          *int8("calibration.npz")],
        "report equals the model": ["quantize", conv, *out, *float16, "--report", conv],
        "integer-only with float16": ["quantize", conv, *out, *float16, "--integer-only"],
        "integer-only with int16x8": ["quantize", conv, *out, *int16x8, "calibration.npz", "--integer-only"],
        "shared Add scale with dynamic": ["quantize", conv, *out, "--mode", "dynamic", "--add-scales", "shared"],
        "integer-only impossible (LSTM)": ["quantize", "lstm.onnx", *out, *int8("lstm_calibration.npz"),
                                           "--integer-only"],
        "exclude matches nothing": ["quantize", conv, *out, *int8("calibration.npz"), "--exclude", "nope"],
        "unknown scope": ["quantize", conv, *out, *int8("calibration.npz"), "--scope", "nope"],
        "scope with float16": ["quantize", conv, *out, *float16, "--scope", "all"],
        "scope matmul-inputs with integer-only": ["quantize", conv, *out, *int8("calibration.npz"),
                                                  "--scope", "matmul-inputs", "--integer-only"],
        "missing -o": ["quantize", conv, *float16],
        "unknown command": ["compress", conv],
        "no command": [],
        "evaluate wrong dtype": ["evaluate", conv, "--data", "float64.npz"],
        "evaluate missing data": ["evaluate", conv, "--data", "missing.npz"],
        "evaluate not an ONNX file": ["evaluate", "random.onnx", "--data", "evaluation.npz"],
        "evaluate reference not ONNX": ["evaluate", conv, "--data", "evaluation.npz",
                                        "--reference", "truncated.onnx", "--runs", "1"],
        "evaluate zero runs": ["evaluate", conv, "--data", "evaluation.npz", "--runs", "0"],
        "evaluate json equals the model": ["evaluate", conv, "--data", "evaluation.npz", "--json", conv],
        "evaluate json folder does not exist": ["evaluate", conv, "--data", "evaluation.npz",
                                                "--json", "no_such_folder/e.json"],
        "demo json folder does not exist": ["demo", "--output-dir", "demo",
                                            "--json", "no_such_folder/d.json"],
        "prune sparsity 1": ["prune", conv, *out, "--sparsity", "1"],
        "prune negative sparsity": ["prune", conv, *out, "--sparsity", "-0.1"],
        "prune pattern N >= M": ["prune", conv, *out, "--pattern", "4:2"],
        "prune unknown pattern": ["prune", conv, *out, "--pattern", "2x2"],
        "prune layers match nothing": ["prune", conv, *out, "--layers", "nope*"],
        "prune exclude matches nothing": ["prune", conv, *out, "--exclude", "nope"],
        "prune nothing prunable": ["prune", "relu_only.onnx", *out],
        "prune data-aware without data": ["prune", conv, *out, "--method", "data-aware"],
        "prune data wrong shape": ["prune", conv, *out, "--data", "wrong_shape.npz"],
        "prune data wrong name": ["prune", conv, *out, "--data", "wrong_name.npz"],
        "prune global 2:4": ["prune", conv, *out, "--ranking", "global", "--pattern", "2:4"],
        "prune output equals the model": ["prune", conv, "-o", conv],
        "prune not an ONNX file": ["prune", "random.onnx", *out],
        "cluster one cluster": ["cluster", conv, *out, "--clusters", "1"],
        "cluster 257 clusters": ["cluster", conv, *out, "--clusters", "257"],
        "cluster bits not below log2 clusters": ["cluster", conv, *out, "--clusters", "16", "--bits", "4"],
        "cluster bits zero": ["cluster", conv, *out, "--bits", "0"],
        "cluster bits with channel codebook": ["cluster", conv, *out, "--bits", "2", "--codebook", "channel"],
        "cluster global allocation without bits": ["cluster", conv, *out, "--allocation", "global"],
        "cluster layers match nothing": ["cluster", conv, *out, "--layers", "nope*"],
        "cluster exclude matches nothing": ["cluster", conv, *out, "--exclude", "nope"],
        "cluster nothing to cluster": ["cluster", "relu_only.onnx", *out],
        "cluster data-aware without data": ["cluster", conv, *out, "--method", "data-aware"],
        "cluster data wrong shape": ["cluster", conv, *out, "--data", "wrong_shape.npz"],
        "cluster output equals the model": ["cluster", conv, "-o", conv],
        "cluster not an ONNX file": ["cluster", "random.onnx", *out],
        "export an unsupported operator (LSTM)": ["export", "lstm.onnx", "-o", "out.tflite"],
        "export an input without a rank": ["export", "no_rank.onnx", "-o", "out.tflite"],
        "export a dynamic width without --input-shape": ["export", "dynamic_width.onnx", "-o", "out.tflite"],
        "export --input-shape naming no input": ["export", conv, "-o", "out.tflite", "--input-shape", "x:1,3,16,16"],
        "export --input-shape malformed": ["export", conv, "-o", "out.tflite", "--input-shape", "input:1,3,a"],
        "export --input-shape of the wrong rank": ["export", conv, "-o", "out.tflite", "--input-shape", "input:1,3"],
        "export not an ONNX file": ["export", "random.onnx", "-o", "out.tflite"],
        "export to a folder that does not exist": ["export", conv, "-o", "missing/out.tflite"],
        "export to a name that is not .tflite": ["export", conv, "-o", "out.onnx"],
        "quantize int8 to .tflite without calibration": ["quantize", conv, "-o", "out.tflite", "--mode", "int8"],
        "evaluate a .tflite that is not one": ["evaluate", "random.tflite", "--data", "wrong_name.npz"],
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_cli_input_exits_2_with_one_line_and_touches_nothing(name, workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    before = fingerprint(workspace)
    code, out, err = run_cli(capsys, CASES[name])
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeopt: error: ")
    assert out == ""
    # No file created (out.onnx, reports, demo folder...) and every input unchanged, byte for byte.
    assert fingerprint(workspace) == before
    assert not (workspace / "demo").exists()


def test_report_path_equal_to_output_path_is_refused(workspace, capsys, monkeypatch):
    """Writing the report over the model just written would lose the model (exit 0 today)."""
    monkeypatch.chdir(workspace)
    before = fingerprint(workspace)
    code, _, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "same.onnx", "--mode", "float16",
                                    "--report", "same.onnx"])
    assert code == 2
    assert err.startswith("edgeopt: error: ") and len(err.splitlines()) == 1
    assert fingerprint(workspace) == before


def test_data_for_a_fixed_leading_dimension_is_handled_in_one_line(tmp_path, capsys, monkeypatch):
    """A time-major LSTM takes x of shape (4, N, 16): calibration data of exactly that shape must
    either calibrate or be refused with one error line; today ONNX Runtime's InvalidArgument
    escapes (traceback, exit 1), because the data set slices it along axis 0 into (1, N, 16)."""
    monkeypatch.chdir(tmp_path)
    onnx.save(models.lstm(time_major=True), "lstm_time_major.onnx")
    np.savez("sequence.npz", x=np.random.default_rng(0).standard_normal((4, 8, 16)).astype(np.float32))
    try:
        code, _, err = run_cli(capsys, ["quantize", "lstm_time_major.onnx", "-o", "out.onnx",
                                        "--mode", "int8", "--calibration", "sequence.npz"])
    except Exception as exc:  # noqa: BLE001 - the point is that nothing escapes entry_point
        pytest.fail(f"entry_point raised {type(exc).__name__}: {str(exc).splitlines()[0]}")
    assert code in (0, 2)
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("edgeopt: error: ")
        assert not pathlib.Path("out.onnx").exists()


# --- the same checks through the API ------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv():
    return models.conv_net()


def _samples(count=8):
    return models.CASES["conv_net"].feeds(seed=1, count=count)["input"]


@pytest.mark.parametrize("calibration, message", [
    ({"image": _samples()}, "do not match"),
    ({"input": _samples().astype(np.float64)}, "float64"),
    ({"input": _samples()[:, :, :8]}, "shape"),
    ({"input": _samples()[:0]}, "empty"),
    ({"input": _samples(), "extra": _samples()}, "do not match"),
    ([], "empty"),
    (iter([]), "empty"),
    ([{"input": _samples().astype(np.float64)}], "float64"),
    ([{"wrong": _samples()}], "do not match"),
    ([{"input": _samples().tolist()}], "numpy array"),
    ([_samples()], "dict"),
    (42, "expected a path"),
    ("no_such_file.npz", "no such file"),
], ids=["name", "dtype", "shape", "empty-array", "extra-array", "empty-list", "empty-iterator", "item-dtype",
        "item-name", "item-list", "item-array", "number", "missing-file"])
def test_bad_calibration_raises_edgeopt_error(conv, calibration, message):
    with pytest.raises(edgeopt.EdgeoptError, match=message) as info:
        edgeopt.quantize(conv, edgeopt.Int8Config(), calibration=calibration)
    assert "\n" not in str(info.value)


def test_static_modes_need_calibration(conv):
    for config in (edgeopt.Int8Config(), edgeopt.Int16x8Config()):
        with pytest.raises(edgeopt.EdgeoptError, match="calibration"):
            edgeopt.quantize(conv, config)


def test_quantize_rejects_what_is_not_a_config(conv):
    with pytest.raises(edgeopt.EdgeoptError, match="config"):
        edgeopt.quantize(conv, {"type": "Int8Config"})


def test_quantize_rejects_a_model_without_float_weights():
    with pytest.raises(edgeopt.EdgeoptError, match="no float weights"):
        edgeopt.quantize(models.no_float_weights(), edgeopt.Float16Config())


def test_quantize_rejects_an_invalid_model_proto():
    model = models.conv_net()
    del model.graph.node[:]
    with pytest.raises(edgeopt.EdgeoptError):
        edgeopt.quantize(model, edgeopt.Float16Config())


def test_evaluate_rejects_bad_settings(conv_files):
    with pytest.raises(edgeopt.EdgeoptError):
        edgeopt.evaluate(conv_files["model"], conv_files["evaluation"], threads=0)
    with pytest.raises(edgeopt.EdgeoptError):
        edgeopt.evaluate(conv_files["model"], conv_files["evaluation"], warmup=-1)


def test_an_already_quantized_model_is_refused(tmp_path, capsys):
    # What onnxruntime's dynamic quantizer writes (ConvInteger, MatMulInteger): quantizing it again
    # would stack a second rounding on the first; the float original is what to quantize.
    from onnxruntime.quantization import quantize_dynamic

    source = tmp_path / "float.onnx"
    onnx.save(models.CASES["conv_net"].build(), str(source))
    quantized = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(source), str(quantized))
    before = quantized.read_bytes()
    output = tmp_path / "again.onnx"
    code = entry_point(["quantize", str(quantized), "-o", str(output), "--mode", "float16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not output.exists() and quantized.read_bytes() == before
    assert len(err.splitlines()) == 1 and "already quantized" in err and "expected a float model" in err
