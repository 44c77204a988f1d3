"""Models whose tensors live in an external data file, in and out."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgeopt
import models
from edgeopt.model_io import save_model


@pytest.mark.parametrize("config", [edgeopt.Float16Config(), edgeopt.DynamicConfig(), edgeopt.Int8Config()],
                         ids=lambda c: c.mode)
def test_a_model_stored_with_external_data_goes_through_every_mode(config, tmp_path):
    case = models.CASES["conv_net"]
    source = tmp_path / "model.onnx"
    onnx.save(case.build(), str(source), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    assert source.stat().st_size < 10_000  # the weights really are outside
    result = edgeopt.quantize(source, config, calibration=case.feeds(1, 32))
    feeds = case.feeds(3, 8)
    assert models.worst_cosine(models.run(case.build(), feeds), models.run(result.model, feeds)) > 0.99


def test_a_model_over_the_limit_is_written_with_external_data_beside_it(tmp_path):
    model = models.CASES["conv_net"].build()
    path = tmp_path / "big.onnx"
    save_model(model, path, external_above=0)  # as if it were over 2 GB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert path.stat().st_size < 10_000
    feeds = models.CASES["conv_net"].feeds(4, 4)
    np.testing.assert_array_equal(models.run(str(path), feeds)[0], models.run(model, feeds)[0])
