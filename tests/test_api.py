"""The public Python API: a light import, a clean ``__all__``, and config objects that validate and
serialise."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import edgeopt
from edgeopt.config import _Config
from edgeopt.data import input_specs

import models

CONFIG_TYPES = [edgeopt.Float16Config, edgeopt.DynamicConfig, edgeopt.Int8Config, edgeopt.Int16x8Config]


def test_import_does_not_load_onnxruntime_or_torch():
    code = ("import sys, edgeopt, edgeopt.cli; "
            "print([m for m in ('onnxruntime', 'torch') if m in sys.modules])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                               timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_all_names_exist():
    missing = [name for name in edgeopt.__all__ if not hasattr(edgeopt, name)]
    assert missing == []
    assert len(set(edgeopt.__all__)) == len(edgeopt.__all__)


def test_all_has_no_private_names():
    assert [name for name in edgeopt.__all__ if name.startswith("_")] == []


def test_main_entry_points_are_exported():
    for name in ("quantize", "evaluate", "QuantizationResult", "Float16Config", "DynamicConfig", "Int8Config",
                 "Int16x8Config", "EdgeoptError"):
        assert name in edgeopt.__all__


@pytest.mark.parametrize("config", [
    edgeopt.Float16Config(), edgeopt.Float16Config(min_elements=4, exclude=("fc1", "Conv")),
    edgeopt.DynamicConfig(), edgeopt.DynamicConfig(per_channel=False, min_elements=64),
    edgeopt.Int8Config(), edgeopt.Int8Config(calibration_method="entropy", percentile=99.9, per_channel=False,
                                             activation_type="int8", integer_only=True, fallback=False,
                                             target_cosine=0.9, max_calibration_samples=10, exclude=["fc2"]),
    edgeopt.Int16x8Config(), edgeopt.Int16x8Config(calibration_method="mse"),
], ids=lambda c: type(c).__name__)
def test_config_round_trips_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert data["type"] == type(config).__name__
    assert data["version"] == 4
    for restored in (_Config.from_dict(data), type(config).from_dict(data)):
        assert type(restored) is type(config)
        assert restored == config
        assert restored.to_dict() == config.to_dict()


def test_from_dict_without_type_uses_the_class():
    assert edgeopt.Int8Config.from_dict({"percentile": 99.0}) == edgeopt.Int8Config(percentile=99.0)


@pytest.mark.parametrize("cls", CONFIG_TYPES, ids=lambda c: c.__name__)
def test_from_dict_rejects_unknown_keys(cls):
    with pytest.raises(edgeopt.EdgeoptError, match="unknown"):
        cls.from_dict({"type": cls.__name__, "colour": "blue"})


@pytest.mark.parametrize("data", [
    {"type": "Int4Config"}, {"type": "QuantizationResult"}, {"type": "_Config"}, {"type": ""},
], ids=lambda d: d["type"] or "empty")
def test_from_dict_rejects_unknown_types(data):
    with pytest.raises(edgeopt.EdgeoptError, match="unknown config type"):
        _Config.from_dict(data)


def test_from_dict_rejects_a_type_of_another_class_and_other_versions():
    with pytest.raises(edgeopt.EdgeoptError):
        edgeopt.Float16Config.from_dict({"type": "Int8Config"})
    with pytest.raises(edgeopt.EdgeoptError, match="version"):
        edgeopt.Int8Config.from_dict({"type": "Int8Config", "version": 5})


def test_version_1_config_dicts_keep_their_behaviour():
    # Version 2 added int8's scope and made the calibration method "auto" by default: a saved
    # version-1 dict without those keys still means what it meant.
    config = edgeopt.Int8Config.from_dict({"type": "Int8Config", "version": 1, "percentile": 99.9})
    assert (config.scope, config.calibration_method, config.percentile) == ("all", "percentile", 99.9)
    assert edgeopt.Int8Config.from_dict({"type": "Int8Config", "version": 1, "scope": "auto"}).scope == "auto"


def test_older_config_dicts_keep_their_weight_range():
    # Version 3 made int8 weights "safe" ([-64, 64]) by default; older dicts meant [-127, 127].
    # Version 4 renamed that range "half" ("safe" now limits the pairs x86 kernels add).
    for version in (1, 2):
        assert edgeopt.Int8Config.from_dict({"type": "Int8Config", "version": version}).weight_range == "full"
        assert edgeopt.DynamicConfig.from_dict({"type": "DynamicConfig", "version": version}).weight_range == "full"
    for data in ({}, {"weight_range": "safe"}, {"weight_range": "half"}):
        for kind in ("Int8Config", "DynamicConfig"):
            config = edgeopt.Int8Config.from_dict if kind == "Int8Config" else edgeopt.DynamicConfig.from_dict
            assert config({"type": kind, "version": 3, **data}).weight_range == "half"
    assert edgeopt.Int8Config.from_dict({"type": "Int8Config", "version": 3, "weight_range": "full"}).weight_range == "full"
    assert edgeopt.Int8Config.from_dict({"type": "Int8Config", "version": 4}).weight_range == "safe"
    with pytest.raises(edgeopt.EdgeoptError, match="weight_range"):
        edgeopt.Int8Config(weight_range="7bit")


@pytest.mark.parametrize("make", [
    lambda: edgeopt.Int8Config(calibration_method="nope"),
    lambda: edgeopt.Int8Config(percentile=50.0),
    lambda: edgeopt.Int8Config(percentile=100.5),
    lambda: edgeopt.Int8Config(activation_type="int16"),
    lambda: edgeopt.Int16x8Config(activation_type="uint8"),
    lambda: edgeopt.Int8Config(target_cosine=0.0),
    lambda: edgeopt.Int8Config(max_calibration_samples=0),
    lambda: edgeopt.Float16Config(min_elements=0),
    lambda: edgeopt.DynamicConfig(exclude="fc1"),
    lambda: edgeopt.Int8Config(exclude=[1]),
    lambda: _Config.from_dict({"type": "Int8Config", "calibration_method": "nope"}),
    lambda: edgeopt.Int8Config(scope="nope"),
    lambda: edgeopt.Int8Config(scope="matmul-inputs", integer_only=True),
    lambda: edgeopt.Int16x8Config(scope="matmul-inputs"),
], ids=["method", "percentile-low", "percentile-high", "int8-activation", "int16-activation", "target",
        "max-samples", "min-elements", "exclude-string", "exclude-int", "from-dict-method", "scope",
        "scope-integer-only", "scope-int16x8"])
def test_invalid_config_values_raise_edgeopt_error(make):
    with pytest.raises(edgeopt.EdgeoptError):
        make()


def test_configs_are_frozen():
    config = edgeopt.Int8Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.percentile = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("cls", CONFIG_TYPES, ids=lambda c: c.__name__)
def test_exclude_matching_no_node_raises(cls):
    case = models.CASES["conv_net"]
    with pytest.raises(edgeopt.EdgeoptError, match="no_such_node"):
        edgeopt.quantize(case.build(), cls(exclude=("no_such_node",)), calibration=case.feeds(1, 8))


def test_exclude_by_name_and_type_keeps_those_nodes_float():
    case = models.CASES["conv_net"]
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(exclude=("fc2", "MaxPool")),
                              calibration=case.feeds(1, 16))
    quantized = set(result.report["plan"]["nodes"])
    assert "fc2" not in quantized
    assert not {"pool1", "pool2"} & quantized
    assert {"conv1", "conv2", "fc1"} <= quantized


@pytest.mark.parametrize("exclude", [("conv1",), ("conv2",), ("fc1",), ("Gemm",)], ids="-".join)
def test_excluded_nodes_stay_float_in_the_graph_onnxruntime_runs(exclude, tmp_path):
    # ONNX Runtime gives a Conv/Gemm whose input comes from a DequantizeLinear int8 per-tensor
    # weights at load (its WeightBiasQuantization pass), float weight or not: an excluded node
    # must not read a DequantizeLinear, or it would run quantized after all.
    import onnx
    import onnxruntime as ort

    case = models.CASES["conv_net"]
    result = edgeopt.quantize(case.build(), edgeopt.Int8Config(exclude=exclude, fallback=False),
                              calibration=case.feeds(1, 16))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ran = {node.name: node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}
    float_op = {"conv1": "Conv", "conv2": "Conv", "fc1": "Gemm", "fc2": "Gemm"}
    for name, op_type in float_op.items():
        excluded = name in exclude or op_type in exclude
        assert (ran[name] == op_type) == excluded, (name, ran[name])


def test_quantization_result_save_and_report(tmp_path):
    case = models.CASES["two_io"]
    result = edgeopt.quantize(case.build(), edgeopt.DynamicConfig())
    assert isinstance(result, edgeopt.QuantizationResult)
    json.dumps(result.report)  # JSON-serialisable
    path = tmp_path / "model.onnx"
    result.save(path)
    assert path.read_bytes() == result.model.SerializeToString()
    assert edgeopt.__version__ == "0.1.0"


def test_evaluate_in_python_takes_a_dataset_and_a_model_proto(tmp_path):
    case = models.CASES["conv_net"]
    model = case.build()
    specs = input_specs(model)
    dataset = edgeopt.Dataset(case.feeds(3, 10), specs)
    result = edgeopt.evaluate(model, dataset, runs=2, warmup=0)
    assert result["samples"] == 10 and result["top1"] is None
    assert result["size"]["raw_bytes"] == model.ByteSize()
