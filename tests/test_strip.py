"""quantize(qdq_model, Int8Config()): an int8 model edgeopt wrote is rebuilt from its own plan,
without calibration data (what a quantization-aware training export will go through)."""

from __future__ import annotations

import models
import numpy as np
import pytest

import edgeopt
from edgeopt.errors import EdgeoptError

CALIBRATION_SEED, HELD_OUT_SEED = 1, 7


@pytest.mark.parametrize("case_name", ["conv_net", "attention", "two_io"])
def test_a_qdq_model_is_rebuilt_from_its_own_plan(case_name):
    case = models.CASES[case_name]
    first = edgeopt.quantize(case.build(), edgeopt.Int8Config(), calibration=case.feeds(CALIBRATION_SEED, 96))
    before = first.model.SerializeToString()
    again = edgeopt.quantize(first.model, edgeopt.Int8Config())
    assert first.model.SerializeToString() == before  # the input is left as it was
    assert again.report["from_plan"]
    # Absorbed Relu nodes are not in a QDQ model: the rebuilt plan has none, all else is equal.
    assert [line for line in again.plan.differences(first.plan)
            if not line.startswith(("absorbed", "nodes differ"))] == []
    assert set(first.plan.nodes) - set(again.plan.nodes) == set(first.plan.absorbed)
    feeds = case.feeds(HELD_OUT_SEED, 32)
    for ours, theirs in zip(models.run(again.model, feeds), models.run(first.model, feeds)):
        np.testing.assert_array_equal(ours, theirs)


def test_integer_only_and_foreign_qdq_models_are_refused():
    case = models.CASES["conv_net"]
    integer = edgeopt.quantize(case.build(), edgeopt.Int8Config(integer_only=True),
                               calibration=case.feeds(CALIBRATION_SEED, 96))
    with pytest.raises(EdgeoptError, match="integer inputs"):
        edgeopt.quantize(integer.model, edgeopt.Int8Config())
    foreign = edgeopt.quantize(case.build(), edgeopt.Int8Config(), calibration=case.feeds(CALIBRATION_SEED, 96)).model
    del foreign.metadata_props[:]  # as another tool's QDQ model: no edgeopt.plan
    with pytest.raises(EdgeoptError, match="already quantized.*plan=edgeopt.read_plan"):
        edgeopt.quantize(foreign, edgeopt.Int8Config())
    with pytest.raises(EdgeoptError, match="already quantized"):
        edgeopt.quantize(integer.model, edgeopt.DynamicConfig())
