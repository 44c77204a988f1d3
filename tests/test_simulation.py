"""The switched simulation answers keep-float variants like the real builds do."""

from __future__ import annotations

import pytest

import edgeopt
import models
from edgeopt.quantization.calibrate import calibrate
from edgeopt.quantization.candidates import Candidate, CandidateBuilder
from edgeopt.quantization.prepare import prepare


def _builder(case_name: str, config=edgeopt.Int8Config()):
    case = models.CASES[case_name]
    model = prepare(case.build())
    builder = CandidateBuilder(model, config, None, {})
    everything = builder.selection(Candidate())
    builder.calibration = calibrate(model, everything, iter([case.feeds(1, 96)]), max_samples=None,
                                    bias_correction=True, compensated_rounding=True)
    return builder


@pytest.mark.parametrize("case_name", ["conv_net", "attention", "two_io"])
def test_simulated_variants_score_like_their_builds(case_name):
    builder = _builder(case_name)
    base = Candidate(method="mse")
    tensors = list(builder.plan(base).activations)
    variants = [frozenset(), frozenset(tensors[:1]), frozenset(tensors[1:3]), frozenset(tensors[-2:])]
    for keep in variants:
        simulated = builder.simulated_score(base.but(keep_float=keep))
        built = builder.score(base.but(keep_float=keep))
        # The simulation runs float kernels on dequantized values; the build runs ONNX Runtime's
        # integer kernels, which round the requantized output once more: within 25% of the error
        # (measured: 0-8% on these models) and 0.01 of the cosine.
        assert simulated.error == pytest.approx(built.error, rel=0.25, abs=1e-6), keep
        assert simulated.worst_cosine == pytest.approx(built.worst_cosine, abs=0.01), keep


def test_everything_switched_off_is_the_float_model():
    builder = _builder("conv_net")
    base = Candidate()
    everything = frozenset(builder.plan(base).activations)
    score = builder.simulated_score(base.but(keep_float=everything))
    assert score.error < 1e-12 and score.worst_cosine == pytest.approx(1.0)


@pytest.mark.parametrize("values,feeds_used", [(10, 4), (4096, 2)])
def test_dense_outputs_are_simulated_on_fewer_samples(values, feeds_used):
    import numpy as np

    from edgeopt.quantization.calibrate import Calibration

    builder = _builder("conv_net")
    feeds = [{"input": np.zeros((4, 3, 16, 16), np.float32)}] * 5
    builder.calibration = Calibration({}, 20, feeds, [[np.zeros((4, values), np.float32)]] * 5)
    used, reference = builder._simulation_samples()  # 16 samples, or 8 of a dense output
    assert len(used) == len(reference) == feeds_used


def test_switched_nodes_hold_their_constants_in_their_branches():
    """Every quantized node with constants becomes an If whose two branches hold a copy of it with
    branch-local constants (ONNX Runtime prepacks only constants it sees as its own), and no
    Where or weight DequantizeLinear is left for them to read at run time."""
    builder = _builder("conv_net")
    base = Candidate()
    builder.simulated_score(base)
    simulated = builder._simulations[base].model
    plan = builder._simulations[base].plan
    switched = {name for table in (plan.weights, plan.biases, plan.constants) for name, _ in table}
    branches = [node for node in simulated.graph.node if node.op_type == "If" and
                any(n.op_type in ("Conv", "Gemm", "MatMul") for a in node.attribute for n in a.g.node)]
    assert len(branches) == len(switched) > 0
    for node in branches:
        for attribute in node.attribute:
            inner = attribute.g.node[0]
            local = {init.name for init in attribute.g.initializer}
            assert inner.input[1] in local
    assert not any(node.op_type == "Where" for node in simulated.graph.node)
    outer_constants = {init.name for init in simulated.graph.initializer}
    dequantized = [node for node in simulated.graph.node if node.op_type == "DequantizeLinear"
                   and node.input[0] in outer_constants]
    assert not dequantized
