"""Measurement behind the runner protocol: a runtime plugs into evaluate without touching it."""

from __future__ import annotations

import numpy as np
import pytest

import edgeopt
from edgeopt.data import InputSpec
from edgeopt.runtimes import Runner, open_runner, register_runtime


class FakeRunner:
    """A 'runtime' that returns twice its input's row sums: enough to check what evaluate does with it."""

    opened: list = []

    def __init__(self, path, threads):
        self.input_specs = [InputSpec("x", np.dtype(np.float32), (None, 4))]
        self.output_names = ["scores"]
        self.prepared = 0
        FakeRunner.opened.append((str(path), threads))

    def run(self, feed):
        x = feed["x"]
        return [np.stack([x.sum(axis=1), -x.sum(axis=1)], axis=1) * 2.0]

    def prepare(self, feed):
        self.prepared += 1
        return feed

    def run_prepared(self, prepared):
        return self.run(prepared)


@pytest.fixture
def fake_runtime():
    register_runtime("fake", (".fake",), FakeRunner)
    FakeRunner.opened.clear()
    yield
    from edgeopt.runtimes import base

    base._RUNTIMES.pop("fake", None)


def test_a_registered_runtime_is_measured_by_evaluate(fake_runtime, tmp_path):
    model = tmp_path / "model.fake"
    model.write_bytes(b"weights" * 100)
    data = tmp_path / "data.npz"
    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    labels = (x.sum(axis=1) < 0).astype(np.int64)
    np.savez(data, x=x, labels=labels)
    result = edgeopt.evaluate(model, data, reference=model, runs=5, warmup=1)
    assert FakeRunner.opened == [(str(model), 1), (str(model), 1)]
    assert result["top1"] == 1.0  # argmax of [2s, -2s] is 1 exactly when s < 0
    assert result["size"]["raw_bytes"] == 700
    assert result["latency_ms"]["runs"] == 5
    assert result["fidelity"]["cosine_worst"] == pytest.approx(1.0)
    assert isinstance(open_runner(model), Runner)


def test_unknown_runtime_and_suffix_are_one_line_errors(tmp_path):
    with pytest.raises(edgeopt.EdgeoptError, match="unknown runtime 'tvm'"):
        open_runner(tmp_path / "m.onnx", runtime="tvm")
    with pytest.raises(edgeopt.EdgeoptError, match=r"no runtime opens \.pb"):
        open_runner(tmp_path / "m.pb")


def test_onnxruntime_runner_follows_the_protocol(conv_files):
    runner = open_runner(conv_files["model"])
    assert isinstance(runner, Runner)
    assert [spec.name for spec in runner.input_specs] == ["input"]
