"""One-shot pruning of ONNX weights (``edgeopt.prune``): the patterns, magnitude and data-aware
methods, the untouched input, and int8 keeping the zeros."""

from __future__ import annotations

import models
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgeopt


def _weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _pruned_weights(model, result):
    nodes = {node.name: node for node in model.graph.node}
    return {name: _weights(result.model)[nodes[name].input[1]] for name in result.report["layers"]}


def test_magnitude_pruning_zeroes_the_smallest_of_each_layer_and_leaves_the_input():
    model = models.conv_net()
    before = model.SerializeToString()
    result = edgeopt.prune(model, edgeopt.PruneConfig(sparsity=0.6))
    assert model.SerializeToString() == before
    assert result.report["method"] == "magnitude"
    originals = {node.name: _weights(model)[node.input[1]] for node in model.graph.node if node.op_type in ("Conv", "Gemm")}
    for name, weight in _pruned_weights(model, result).items():
        original = originals[name]
        assert abs(np.mean(weight == 0) - 0.6) < 1.0 / weight.size + 1e-9
        kept = weight != 0
        assert np.array_equal(weight[kept], original[kept])  # kept weights unchanged
        assert np.abs(original[~kept]).max() <= np.abs(original[kept]).min()
    onnx.checker.check_model(result.model, full_check=True)


def test_two_of_four_along_input_channels_and_blocks():
    model = models.conv_net()
    result = edgeopt.prune(model, edgeopt.PruneConfig(pattern="2:4"))
    # conv1 reads 3 channels: no group of 4 fits, it stays dense with the reason
    assert "3 input channels per group are not a multiple of 4" in result.report["skipped"]["conv1"]
    nodes = {node.name: node for node in model.graph.node}
    for name, weight in _pruned_weights(model, result).items():
        groups = _rows(nodes[name], weight).reshape(-1, 4)  # 4 consecutive inputs (channels for a Conv)
        assert np.all(np.sum(groups != 0, axis=1) <= 2), name
    blocks = edgeopt.prune(model, edgeopt.PruneConfig(sparsity=0.5, pattern="4x1", layers=("Gemm",)))
    for name, weight in _pruned_weights(model, blocks).items():
        rows = _rows(nodes[name], weight)
        zero_blocks = (rows.reshape(-1, 4, rows.shape[1]) == 0).all(axis=1)  # 4 outputs x 1 input
        assert np.mean(zero_blocks) == pytest.approx(0.5, abs=0.02)
        assert np.mean(rows == 0) == pytest.approx(np.mean(zero_blocks), abs=0.01)


def _rows(node, weight: np.ndarray) -> np.ndarray:
    """Outputs x inputs, a Conv's input channels innermost."""
    if node.op_type == "Conv":
        return np.moveaxis(weight, 1, -1).reshape(weight.shape[0], -1)
    transposed = any(a.name == "transB" and a.i for a in node.attribute)
    return weight if transposed else weight.T


def test_global_ranking_uses_one_threshold():
    model = models.conv_net()
    result = edgeopt.prune(model, edgeopt.PruneConfig(sparsity=0.5, ranking="global"))
    assert result.report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(set(result.report["layers"].values())) > 1  # layers end at different sparsities


def _sqnr(reference, output) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((output - reference) ** 2)))


def test_data_aware_pruning_keeps_the_output_closer_than_magnitude():
    """Held-out inputs, 50% of every layer: the data-aware result is closer to the float model
    (measured 9.9 dB against 6.0 dB on this model; 2 dB leaves a margin), and each output row
    loses the same fraction."""
    case = models.CASES["conv_net"]
    model = case.build()
    calibration = case.feeds(seed=1, count=64)
    held_out = case.feeds(seed=2, count=32)
    reference = models.run(model, held_out)[0]
    config = edgeopt.PruneConfig(sparsity=0.5)
    data_aware = edgeopt.prune(model, config, calibration=calibration)
    magnitude = edgeopt.prune(model, config)
    assert data_aware.report["method"] == "data-aware"
    ours, theirs = (_sqnr(reference, models.run(r.model, held_out)[0]) for r in (data_aware, magnitude))
    assert ours > theirs + 2, (ours, theirs)
    nodes = {node.name: node for node in model.graph.node}
    for name, weight in _pruned_weights(model, data_aware).items():
        rows = _rows(nodes[name], weight)
        np.testing.assert_allclose(np.mean(rows == 0, axis=1), 0.5, atol=1.0 / rows.shape[1] + 1e-9)


def test_int8_of_a_pruned_model_keeps_every_zero():
    """Through compensated rounding (which alone could move a zero) and BatchNorm folding (which
    scales each channel), every pruned weight is 0 in the int8 plan."""
    case = models.CASES["conv_net"]
    model = case.build()
    # 64 check samples, then the rounding's moments; the search keeps compensated rounding only
    # where it measures lower error, which it does on these samples (seed 3) and not on seeds 1, 2
    calibration = case.feeds(seed=3, count=256)
    pruned = edgeopt.prune(model, edgeopt.PruneConfig(sparsity=0.5), calibration=calibration).model
    result = edgeopt.quantize(pruned, edgeopt.Int8Config(fallback=False), calibration=calibration)
    assert result.plan.compensated_weights
    floats = {node.name: _weights(pruned)[node.input[1]] for node in pruned.graph.node
              if node.op_type in ("Conv", "Gemm")}
    checked = 0
    for (node_name, _), constant in result.plan.weights.items():
        zeros = floats[node_name] == 0
        assert zeros.mean() > 0.4 and np.all(constant.values[zeros] == 0), node_name
        checked += 1
    assert checked == 4


def test_bad_configs_are_one_line_errors():
    for kwargs, message in [({"sparsity": 1.0}, "sparsity must be in"), ({"pattern": "3:2"}, "N:M with 0 < N < M"),
                            ({"method": "nope"}, "method must be one of"),
                            ({"ranking": "global", "pattern": "2:4"}, "ranking='global'")]:
        with pytest.raises(edgeopt.EdgeoptError, match=message):
            edgeopt.PruneConfig(**kwargs)
    with pytest.raises(edgeopt.EdgeoptError, match="config must be a PruneConfig"):
        edgeopt.prune(models.conv_net(), edgeopt.Int8Config())
    assert edgeopt.PruneConfig.from_dict(edgeopt.PruneConfig(pattern="2:4").to_dict()) == \
        edgeopt.PruneConfig(pattern="2:4")


def test_data_aware_global_ranking_shares_the_sparsity_by_relative_output_cost():
    """``ranking="global"`` with data: 60% of all the weights go, layers at different shares, and
    the output closer than with 60% of every layer (measured 15.4 dB against 9.2 dB on this model,
    whose convolutions hold few weights and keep nearly all of them; 3 dB leaves a margin)."""
    case = models.CASES["conv_net"]
    model = case.build()
    calibration, held_out = case.feeds(seed=1, count=64), case.feeds(seed=2, count=32)
    reference = models.run(model, held_out)[0]
    shared = edgeopt.prune(model, edgeopt.PruneConfig(sparsity=0.6, ranking="global"), calibration=calibration)
    each = edgeopt.prune(model, edgeopt.PruneConfig(sparsity=0.6), calibration=calibration)
    assert shared.report["method"] == "data-aware"
    assert shared.report["sparsity"] == pytest.approx(0.6, abs=0.01)  # each row of a block rounds its share
    assert len({round(v, 2) for v in shared.report["layers"].values()}) > 1
    ours, theirs = (_sqnr(reference, models.run(r.model, held_out)[0]) for r in (shared, each))
    assert ours > theirs + 3, (ours, theirs)
