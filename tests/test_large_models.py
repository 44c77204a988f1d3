"""Models over protobuf's 2 GiB limit, exercised on a small model with the limit lowered: every
step that would serialise the model (checker, shape inference, sessions, sizes, saving) goes
through disk instead. benchmarks/large_model.py runs the same on a real 2.4 GB model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgeopt
import models
from edgeopt import external_data
from edgeopt.measure import file_size
from edgeopt.model_io import save_model
from edgeopt.quantization.graph import tensor_dtypes
from edgeopt.runtimes.onnxruntime import make_session


@pytest.fixture
def tiny_limit(monkeypatch):
    monkeypatch.setattr(external_data, "PROTOBUF_LIMIT", 1000)


def test_writing_with_external_data_leaves_the_model_as_it_was(tmp_path):
    model = models.CASES["conv_net"].build()
    before = model.SerializeToString()
    external_data.write(model, tmp_path / "m.onnx", "m.onnx.data")
    assert model.SerializeToString() == before
    assert (tmp_path / "m.onnx").stat().st_size < 10_000 and (tmp_path / "m.onnx.data").stat().st_size > 50_000
    again = onnx.load(str(tmp_path / "m.onnx"))
    for ours, theirs in zip(model.graph.initializer, again.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(ours), onnx.numpy_helper.to_array(theirs))


def test_checks_shapes_and_sessions_of_a_model_over_the_limit_go_through_disk(tiny_limit):
    case = models.CASES["conv_net"]
    model = case.build()
    assert external_data.too_large(model)
    external_data.check(model, full_check=True)
    assert tensor_dtypes(model)["c1"] == onnx.TensorProto.FLOAT  # an intermediate: inferred
    feeds = case.feeds(4, 4)
    session = make_session(model)
    # the same model from memory, with the same (optimizing) session options: the same outputs
    monkeypatch_limit = external_data.PROTOBUF_LIMIT
    external_data.PROTOBUF_LIMIT = 1 << 40
    try:
        expected = make_session(model).run(None, feeds)[0]
    finally:
        external_data.PROTOBUF_LIMIT = monkeypatch_limit
    np.testing.assert_array_equal(session.run(None, feeds)[0], expected)


@pytest.mark.parametrize("config", [edgeopt.Float16Config(), edgeopt.DynamicConfig(), edgeopt.Int8Config()],
                         ids=lambda c: c.mode)
def test_every_mode_on_a_model_over_the_limit(config, tiny_limit, tmp_path):
    case = models.CASES["conv_net"]
    result = edgeopt.quantize(case.build(), config, calibration=case.feeds(1, 32))
    path = tmp_path / "out.onnx"
    result.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    feeds = case.feeds(3, 8)
    assert models.worst_cosine(models.run(case.build(), feeds), models.run(str(path), feeds)) > 0.99


def test_file_size_counts_the_external_data(tmp_path):
    model = models.CASES["conv_net"].build()
    save_model(model, tmp_path / "inline.onnx")
    save_model(model, tmp_path / "split.onnx", external_above=0)
    inline, split = file_size(tmp_path / "inline.onnx"), file_size(tmp_path / "split.onnx")
    # the same tensors, a few hundred bytes of external-data references more
    assert inline["raw_bytes"] <= split["raw_bytes"] < inline["raw_bytes"] + 2_000
    assert split["gzip_bytes"] == pytest.approx(inline["gzip_bytes"], rel=0.05)
