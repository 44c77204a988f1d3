"""The switched simulation answers keep-float variants like the real builds do."""

from __future__ import annotations

import re

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
    branch-local constants (ONNX Runtime prepacks only constants it sees as its own); the float
    copy of a Conv reads the float tensor, the quantized copy the dequantized one; no Where or
    weight DequantizeLinear is left to run."""
    from edgeopt.quantization.simulation import SwitchedModel

    builder = _builder("conv_net")
    plan = builder.plan(Candidate(), absorb=False)
    switched = SwitchedModel(builder.model, plan, builder.dtypes)
    simulated = switched.model
    indices: dict[str, set] = {}
    for table in (plan.weights, plan.biases, plan.constants):
        for name, index in table:
            indices.setdefault(name, set()).add(index)
    float_nodes = {node.name: node for node in builder.model.graph.node}
    switched_nodes, switched_tensors = {}, set()
    for node in simulated.graph.node:
        if node.op_type == "If":
            bodies = {a.name: a.g for a in node.attribute}
            inner = bodies["then_branch"].node[0]
            if inner.op_type == "Identity":  # an activation's switch passes a tensor on
                switched_tensors.add(node.output[0])
            else:
                switched_nodes[re.sub(r"_q(_\d+)?$", "", inner.name)] = bodies
    assert set(switched_nodes) == set(indices) and indices
    for name, bodies in switched_nodes.items():
        original = float_nodes[name]
        for body in bodies.values():
            local = {init.name for init in body.initializer}
            assert all(body.node[0].input[index] in local for index in indices[name])
        quantized_input, float_input = (bodies[key].node[0].input[0] for key in ("then_branch", "else_branch"))
        if original.op_type in ("Conv", "Gemm") and original.input[0] in plan.activations:
            assert quantized_input in switched_tensors
            assert float_input != quantized_input and float_input in switched._float_source.values()
    assert not any(node.op_type == "Where" for node in simulated.graph.node)
    outer_constants = {init.name for init in simulated.graph.initializer}
    assert not [node for node in simulated.graph.node
                if node.op_type == "DequantizeLinear" and node.input[0] in outer_constants]


def test_variants_that_set_the_same_switches_run_once(monkeypatch):
    from edgeopt.quantization.simulation import SwitchedModel

    builder = _builder("conv_net")
    base = Candidate()
    builder.simulated_score(base)
    runs = []
    original = SwitchedModel.run
    monkeypatch.setattr(SwitchedModel, "run", lambda self, *a: runs.append(1) or original(self, *a))
    tensor = next(iter(builder.plan(base).activations))
    first = builder.simulated_score(base.but(keep_float=frozenset({tensor})))
    assert runs == [1]
    # a name no tensor has changes no switch
    same = builder.simulated_score(base.but(keep_float=frozenset({tensor, "no such tensor"})))
    assert runs == [1] and same == first


def test_a_screened_session_scores_like_a_fresh_build():
    """The session screening kept open serves the full score: the same score a fresh builder gets."""
    builder = _builder("conv_net")
    candidate = Candidate(method="mse")
    builder.screen(candidate)
    assert builder._open is not None and builder._open[0] == candidate
    reused = builder.score(candidate)
    assert builder._open is None
    assert reused == _builder("conv_net").score(candidate)


def test_layers_reading_one_input_share_its_factor_and_round_the_same():
    import numpy as np

    from edgeopt.quantization import planner

    builder = _builder("attention")
    selection = builder.selection(Candidate(scope="matmul-inputs"))
    observers = builder.calibration.observers
    nodes = {node.name: node for node in selection.nodes}
    keys = [observers[nodes[key[0]].input[0]].moment_key(key[0]) for key in selection.weights]
    assert len(set(keys)) < len(keys)  # q, k and v read x
    shared = planner.round_weights(builder.view, selection, observers)
    for key, (name, axis) in selection.weights.items():
        alone = planner._compensated(builder.view, nodes[key[0]], name, axis, observers, "safe", {})
        assert (alone is None) == (key not in shared)
        if alone is not None:
            np.testing.assert_array_equal(alone, shared[key])
