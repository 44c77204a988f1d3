"""The ``edgeopt`` command: quantize in every mode, then ``evaluate --json``; options; and the exit
status seen by a real shell (subprocess)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest

import edgeopt

from edgeopt.cli import entry_point

from conftest import fingerprint

MODE_ARGS = {
    "float16": ["--mode", "float16"],
    "dynamic": ["--mode", "dynamic"],
    "int8": ["--mode", "int8", "--calibration", "calibration.npz"],
    "int8-integer-only": ["--mode", "int8", "--integer-only", "--calibration", "calibration.npz"],
    "int8-shared-add-scale": ["--mode", "int8", "--add-scales", "shared", "--calibration", "calibration.npz"],
    "int16x8": ["--mode", "int16x8", "--calibration", "calibration.npz"],
}
EVALUATION_KEYS = {"schema_version", "model", "samples", "threads", "size", "latency_ms", "top1", "fidelity"}


def run_cli(capsys, args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = entry_point([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("mode", list(MODE_ARGS))
def test_quantize_then_evaluate_json(mode, conv_files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    inputs_before = fingerprint(tmp_path)
    code, out, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "out.onnx", *MODE_ARGS[mode],
                                      "--report", "report.json"])
    assert code == 0, err
    assert out.startswith("out.onnx: ")
    assert "x float" in out
    assert {k: v for k, v in fingerprint(tmp_path).items() if k in inputs_before} == inputs_before
    model = onnx.load("out.onnx")
    onnx.checker.check_model(model, full_check=True)
    report = json.loads(pathlib.Path("report.json").read_text())
    assert report["mode"] == MODE_ARGS[mode][1]
    assert report["size_bytes"]["quantized"] == pathlib.Path("out.onnx").stat().st_size

    code, out, err = run_cli(capsys, ["evaluate", "out.onnx", "--data", "evaluation.npz",
                                      "--reference", "conv.onnx", "--json", "evaluation.json",
                                      "--runs", "3", "--warmup", "1"])
    assert code == 0, err
    assert "top-1:" in out and "vs reference" in out
    result = json.loads(pathlib.Path("evaluation.json").read_text())
    assert EVALUATION_KEYS <= set(result)
    assert result["schema_version"] == 1
    assert result["model"] == "out.onnx"
    assert result["samples"] == 24
    assert result["threads"] == 1
    assert set(result["size"]) == {"raw_bytes", "gzip_bytes"}
    assert result["size"]["raw_bytes"] == pathlib.Path("out.onnx").stat().st_size
    assert 0 < result["size"]["gzip_bytes"]
    assert set(result["latency_ms"]) == {"median", "p90", "runs", "warmup"}
    assert (result["latency_ms"]["runs"], result["latency_ms"]["warmup"]) == (3, 1)
    assert result["latency_ms"]["median"] > 0  # a value is measured; its size is not tested
    assert isinstance(result["top1"], float) and 0.0 <= result["top1"] <= 1.0
    fidelity = result["fidelity"]
    # Random weights and random labels: top-1 itself means nothing, but the outputs must follow the
    # float model's. 0.97 is the int8 bound, the loosest of the modes.
    assert fidelity["cosine_worst"] >= 0.97
    assert 0.0 <= fidelity["top1_agreement"] <= 1.0


def test_evaluate_without_reference_or_labels(conv_files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, ["evaluate", "conv.onnx", "--data", "calibration.npz",
                                      "--json", "e.json", "--runs", "2", "--warmup", "0", "--threads", "2"])
    assert code == 0, err
    result = json.loads(pathlib.Path("e.json").read_text())
    assert EVALUATION_KEYS <= set(result)
    assert result["top1"] is None and result["fidelity"] is None
    assert result["threads"] == 2 and result["samples"] == 32
    assert "top-1" not in out


def test_evaluate_the_float_model_against_itself_is_exact(conv_files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, ["evaluate", "conv.onnx", "--data", "evaluation.npz",
                                    "--reference", "conv.onnx", "--json", "e.json",
                                    "--runs", "1", "--warmup", "0"])
    assert code == 0, err
    fidelity = json.loads(pathlib.Path("e.json").read_text())["fidelity"]
    # Same model, same runtime, same data: identical outputs, so these are exact.
    assert fidelity["top1_agreement"] == 1.0
    assert fidelity["cosine_worst"] == pytest.approx(1.0, abs=1e-12)  # float64 rounding of the cosine


@pytest.mark.parametrize("options", [
    ["--calibration-method", "entropy"], ["--calibration-method", "auto"], ["--calibration-method", "mse"],
    ["--per-tensor"], ["--no-fallback"],
    ["--activation-type", "int8"], ["--exclude", "fc2"], ["--exclude", "Gemm", "MaxPool"],
    ["--scope", "matmul-inputs"],
], ids=" ".join)
def test_int8_options(options, conv_files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, ["-v", "quantize", "conv.onnx", "-o", "out.onnx", "--mode", "int8",
                                    "--calibration", "calibration.npz", "--report", "report.json", *options])
    assert code == 0, err
    onnx.checker.check_model(onnx.load("out.onnx"), full_check=True)
    report = json.loads(pathlib.Path("report.json").read_text())
    config = report["config"]
    if options[0] == "--calibration-method":
        assert config["calibration_method"] == options[1]
    if options[0] == "--per-tensor":
        assert config["per_channel"] is False
        assert all(not isinstance(w["scale"], list) for w in report["plan"]["weights"].values())
    if options[0] == "--no-fallback":
        assert config["fallback"] is False and len(report["fallback_steps"]) == 1
    if options[0] == "--activation-type":
        assert {a["dtype"] for a in report["plan"]["activations"].values()} == {"int8"}
    if options[0] == "--scope":
        assert config["scope"] == report["scope"] == "matmul-inputs"
        op_types = {node.name: node.op_type for node in onnx.load("conv.onnx").graph.node}
        assert {op_types[name] for name in report["plan"]["nodes"]} <= {"MatMul", "Gemm"}
    if options[0] == "--exclude":
        excluded = set(options[1:])
        assert config["exclude"] == options[1:]
        op_types = {node.name: node.op_type for node in onnx.load("conv.onnx").graph.node}
        quantized_nodes = report["plan"]["nodes"]
        assert quantized_nodes  # something is still quantized
        assert not excluded & set(quantized_nodes)
        assert not excluded & {op_types[name] for name in quantized_nodes}


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_dynamic_per_tensor(conv_files, capsys, monkeypatch, tmp_path, granularity):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "out.onnx", "--mode", "dynamic",
                                    "--per-tensor", "--activation-granularity", granularity,
                                    "--report", "report.json"])
    assert code == 0, err
    config = json.loads(pathlib.Path("report.json").read_text())["config"]
    assert config["per_channel"] is False and config["activation_granularity"] == granularity
    model = onnx.load("out.onnx")
    matmul_integer = [node for node in model.graph.node if node.op_type == "MatMulInteger"]
    assert len(matmul_integer) == 2  # fc1 (65 536 weights) and fc2 (1 280): both >= 256 elements
    initializers = {init.name: init for init in model.graph.initializer}
    scale_muls = [node for node in model.graph.node if node.op_type == "Mul"
                  and node.name.endswith("_weight_scale" if granularity == "row" else "_scale_product")]
    assert len(scale_muls) == 2
    for node in scale_muls:  # one weight scale per tensor
        assert list(initializers[node.input[1]].dims) == []
    assert sum(node.op_type == "DynamicQuantizeLinear" for node in model.graph.node) == \
        (2 if granularity == "tensor" else 0)


def test_quantize_overwrites_an_existing_output_file(conv_files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    pathlib.Path("out.onnx").write_bytes(b"old")
    code, _, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "out.onnx", "--mode", "float16"])
    assert code == 0, err
    onnx.checker.check_model(onnx.load("out.onnx"))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # the atomic write leaves no temporary file behind


# --- through a real process ------------------------------------------------------------------------


def _environment() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_error_exit_status_reaches_the_shell(conv_files, tmp_path):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01not onnx at all" * 50)
    before = fingerprint(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "edgeopt.cli", "quantize", "garbage.onnx", "-o", "out.onnx",
         "--mode", "float16"],
        cwd=tmp_path, capture_output=True, text=True, env=_environment(), timeout=120, check=False)
    assert completed.returncode == 2
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeopt: error: "), completed.stderr
    assert completed.stdout == ""
    assert fingerprint(tmp_path) == before


def test_success_exit_status_reaches_the_shell(conv_files, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "edgeopt.cli", "quantize", "conv.onnx", "-o", "out.onnx", "--mode", "int8",
         "--calibration", "calibration.npz"],
        cwd=tmp_path, capture_output=True, text=True, env=_environment(), timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")), full_check=True)


def test_console_script_reports_errors_with_status_2(tmp_path):
    script = pathlib.Path(sys.executable).parent / "edgeopt"
    assert script.exists(), "the edgeopt console script is installed with the package"
    completed = subprocess.run(
        [str(script), "quantize", "missing.onnx", "-o", "out.onnx", "--mode", "dynamic"],
        cwd=tmp_path, capture_output=True, text=True, env=_environment(), timeout=120, check=False)
    assert completed.returncode == 2
    assert completed.stderr.startswith("edgeopt: error: ") and len(completed.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# --- demo ------------------------------------------------------------------------------------------


def test_demo_command_writes_the_table(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, ["demo", "--output-dir", "demo", "--json", "rows.json", "--no-qat"])
    assert code == 0, err
    assert "| model | top-1 |" in out
    rows = json.loads(pathlib.Path("rows.json").read_text())
    assert [row["row"] for row in rows] == ["float", "float16", "dynamic", "int8", "int8 integer-only"]
    assert (tmp_path / "demo" / "results.md").is_file()



@pytest.mark.parametrize("rounding", ["compensated", "nearest"])
def test_weight_rounding_option(conv_files, capsys, monkeypatch, tmp_path, rounding):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "out.onnx", "--mode", "int8", "--calibration",
                                    "calibration.npz", "--weight-rounding", rounding, "--report", "report.json"])
    assert code == 0, err
    report = json.loads(pathlib.Path("report.json").read_text())
    assert report["config"]["weight_rounding"] == rounding
    if rounding == "nearest":
        assert report["weight_rounding"] == "nearest" and report["plan"]["compensated_weights"] == []
    else:  # kept only when it measurably helps; the plan lists the weights it changed
        assert report["weight_rounding"] in ("compensated", "nearest")
        assert bool(report["plan"]["compensated_weights"]) == (report["weight_rounding"] == "compensated")


@pytest.mark.parametrize("weight_range,largest", [("half", 64), ("full", 127)])
def test_weight_range_option_bounds_the_stored_integers(weight_range, largest, conv_files, tmp_path, capsys):
    output = tmp_path / "out.onnx"
    code = entry_point(["quantize", str(conv_files["model"]), "-o", str(output), "--mode", "int8",
                        "--calibration", str(conv_files["calibration"]), "--weight-range", weight_range])
    assert code == 0, capsys.readouterr().err
    plan = edgeopt.read_plan(onnx.load(str(output)))
    assert max(int(np.abs(entry.values.astype(np.int32)).max()) for entry in plan.weights.values()) == largest


def test_weight_range_and_attribution_are_refused_where_they_do_not_apply(conv_files, tmp_path, capsys):
    output = tmp_path / "out.onnx"
    assert entry_point(["quantize", str(conv_files["model"]), "-o", str(output), "--mode", "float16",
                        "--weight-range", "full"]) == 2
    assert entry_point(["quantize", str(conv_files["model"]), "-o", str(output), "--mode", "dynamic",
                        "--attribution"]) == 2
    assert not output.exists()


def test_attribution_is_reported_on_request(conv_files, tmp_path, capsys):
    output, report = tmp_path / "out.onnx", tmp_path / "report.json"
    code = entry_point(["quantize", str(conv_files["model"]), "-o", str(output), "--mode", "int8", "--calibration",
                        str(conv_files["calibration"]), "--attribution", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    attribution = json.loads(report.read_text())["attribution"]
    assert attribution and all({"tensors", "error_added"} <= set(block) for block in attribution)


def test_int8_without_calibration_rebuilds_an_edgeopt_qdq_model_and_refuses_a_float_one(
        conv_files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "out.onnx", "--mode", "int8"])
    assert code != 0 and not pathlib.Path("out.onnx").exists()
    assert len(err.strip().splitlines()) == 1 and "needs calibration data" in err
    code, _, err = run_cli(capsys, ["quantize", "conv.onnx", "-o", "int8.onnx", *MODE_ARGS["int8"]])
    assert code == 0, err
    code, out, err = run_cli(capsys, ["quantize", "int8.onnx", "-o", "again.onnx", "--mode", "int8"])
    assert code == 0, err
    assert out.startswith("again.onnx: ")


@pytest.mark.parametrize("command", [
    ["prune", "--sparsity", "0.5", "--data", "calibration.npz"],
    ["prune", "--sparsity", "0.5", "--ranking", "global", "--data", "calibration.npz"],
    ["prune", "--pattern", "2:4"],
    ["cluster", "--clusters", "16", "--bits", "2.5", "--data", "calibration.npz"],
    ["cluster", "--clusters", "8", "--codebook", "channel"],
], ids=["prune-data", "prune-global-data", "prune-2of4", "cluster-bits-data", "cluster-channel"])
def test_one_shot_commands_write_the_model_and_report(command, conv_files, capsys, monkeypatch, tmp_path):
    """``edgeopt prune`` and ``edgeopt cluster`` succeed: the model and the report are written, the
    inputs untouched, and the line printed says what the report holds."""
    monkeypatch.chdir(tmp_path)
    inputs_before = fingerprint(tmp_path)
    code, out, err = run_cli(capsys, [command[0], "conv.onnx", "-o", "out.onnx", *command[1:], "--report", "r.json"])
    assert code == 0, err
    assert {k: v for k, v in fingerprint(tmp_path).items() if k in inputs_before} == inputs_before
    onnx.checker.check_model(onnx.load("out.onnx"), full_check=True)
    report = json.loads(pathlib.Path("r.json").read_text())
    assert report["method"] == ("data-aware" if "--data" in command else "nearest" if command[0] == "cluster"
                                else "magnitude")
    if command[0] == "prune":
        assert out.startswith(f"out.onnx: {report['method']} pruning, {100 * report['sparsity']:.1f}% ")
        assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    else:
        clusters = int(command[2])
        assert report["max_distinct"] <= clusters
        assert f"indices {report['index_bits']:.2f} bits per weight" in out
        # bits: the data-aware sweep snaps with the rate's penalty, its entropy lands near the target
        # (measured 2.52); 8 clusters per channel unconstrained spend about 2.8 of log2(8) = 3
        assert report["index_bits"] <= (2.6 if "--bits" in command else 3.0)
