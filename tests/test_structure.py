"""A pruned or clustered weight keeps its zeros and its clusters through int8, also where the
rounding compensates errors (the structure later issues' pruning and clustering rely on)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from test_rounding import _grey_conv_model

import edgeopt
from edgeopt.quantization import rounding
from edgeopt.quantization.structure import distinct_per_row, row_structure


def _correlated(seed: int, inputs: int = 36):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((4096, inputs // 3))
    x = np.concatenate([base, base, base + 0.01 * rng.standard_normal(base.shape)], axis=1)
    return (x.T @ x / len(x))[None]


def _pruned_and_clustered(rows: np.ndarray, clusters: int, rng) -> np.ndarray:
    """Half of each row zeroed at random, the rest snapped to ``clusters`` values per row."""
    rows = rows.copy()
    for row in rows.reshape(-1, rows.shape[-1]):
        row[rng.permutation(row.size)[: row.size // 2]] = 0.0
        live = row != 0
        centroids = np.quantile(row[live], np.linspace(0.05, 0.95, clusters))
        row[live] = centroids[np.abs(row[live, None] - centroids).argmin(axis=1)]
    return rows


def _output_error(moments, rows, scales, integers) -> float:
    return float(np.einsum("gri,gij,grj->", integers * scales[..., None] - rows, moments,
                           integers * scales[..., None] - rows))


def test_compensated_rounding_keeps_zeros_and_clusters_it_is_told():
    rng = np.random.default_rng(2)
    rows = _pruned_and_clustered(rng.standard_normal((1, 24, 36)), 6, rng)
    scales = np.abs(rows).max(axis=2) / 127
    moments = _correlated(5)
    free = rounding.compensated_round(rows, scales, moments)
    kept = rounding.compensated_round(rows, scales, moments, structure=row_structure(rows, scales, 127))
    # unconstrained, the error feedback fills pruned weights (1.2% of them here) and adds values
    # (up to 10 per row), so the assertions below can fail
    assert np.any(free[rows == 0] != 0) and distinct_per_row(free[0]).max() > 7
    assert np.all(kept[rows == 0] == 0)
    assert distinct_per_row(kept[0]).max() <= 7  # 6 clusters and the zero


def test_pruned_weights_still_get_their_errors_compensated():
    """Only pruned (no clusters): the zeros stay, the other weights absorb the errors, and the
    layer's output error stays below nearest rounding's."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((1, 24, 36))
    rows[rng.random(rows.shape) < 0.5] = 0.0
    scales = np.abs(rows).max(axis=2) / 127
    moments = _correlated(6)
    kept = rounding.compensated_round(rows, scales, moments, structure=row_structure(rows, scales, 127))
    nearest = np.clip(np.rint(rows / scales[..., None]), -127, 127)
    assert np.all(kept[rows == 0] == 0)
    assert _output_error(moments, rows, scales, kept) < 0.9 * _output_error(moments, rows, scales, nearest)


def test_a_dense_weight_has_no_structure():
    rows = np.random.default_rng(0).standard_normal((2, 8, 27))
    assert row_structure(rows, np.abs(rows).max(axis=2) / 127, 127) is None


def test_the_int8_model_of_a_pruned_clustered_conv_keeps_both():
    """End to end on a layer where compensated rounding is active (grey input): every pruned
    weight is 0 in the int8 file and no output channel has more distinct int8 values than its
    clusters plus the zero."""
    model, grey = _grey_conv_model()
    weight = numpy_helper.to_array(model.graph.initializer[0])
    structured = _pruned_and_clustered(weight.reshape(16, -1), 4, np.random.default_rng(7)).reshape(weight.shape)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(structured.astype(np.float32), "W"))
    result = edgeopt.quantize(model, edgeopt.Int8Config(fallback=False),
                              calibration=[grey(100 + i, 16) for i in range(12)])
    assert result.report["plan"]["compensated_weights"] == ["conv:1"]
    integers = result.plan.weights[("conv", 1)].values
    assert np.all(integers[structured == 0] == 0)
    assert distinct_per_row(integers).max() <= 5
