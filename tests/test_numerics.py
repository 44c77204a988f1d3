"""Integer arithmetic (scales, zero points, rounding, saturation) and calibration histograms.

Rounding and saturation are checked against ONNX Runtime running a real QuantizeLinear node,
since edgeopt's numpy quantizer must agree with what the quantized model does at run time.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.quantization.calibration import CALIBRATION_METHODS, HistogramObserver, compute_range
from edgeopt.quantization.numerics import (
    INTEGER_RANGES, QuantParams, affine_params, dequantize, quantize, symmetric_params, weight_params)
from edgeopt.runtimes.onnxruntime import make_session


def ort_quantize(x: np.ndarray, scale, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    """ONNX Runtime's QuantizeLinear (opset 13) on ``x``."""
    zero_point = np.asarray(zero_point)
    attributes = {} if axis is None else {"axis": axis}
    node = helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["y"], **attributes)
    graph = helper.make_graph(
        [node], "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(zero_point.dtype),
                                       list(x.shape))],
        [numpy_helper.from_array(np.asarray(scale, dtype=np.float32), "scale"),
         numpy_helper.from_array(zero_point, "zero_point")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return make_session(model, optimize=False).run(None, {"x": x})[0]


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16"])
@pytest.mark.parametrize("low, high", [(-1.0, 2.0), (-3.7, 0.2), (0.0, 6.0), (0.5, 4.0), (-5.0, -1.0),
                                       (-1e-3, 1e4), (0.0, 0.0)])
def test_affine_params_represent_zero_exactly_and_cover_the_range(low, high, dtype):
    params = affine_params(low, high, dtype)
    qmin, qmax = INTEGER_RANGES[dtype]
    assert params.scale > 0
    assert qmin <= int(params.zero_point) <= qmax
    # Zero maps to the zero point and back to exactly 0.0 (no tolerance: it is an integer identity).
    zero = quantize(np.zeros(3, np.float32), params)
    assert np.all(zero == params.zero_point)
    assert np.all(dequantize(zero, params) == 0.0)
    # The representable range contains [min(low, 0), max(high, 0)] up to half a step at each end
    # (the zero point is rounded to an integer, which shifts the grid by at most 0.5 scale).
    lowest = (qmin - int(params.zero_point)) * float(params.scale)
    highest = (qmax - int(params.zero_point)) * float(params.scale)
    half_step = 0.5 * float(params.scale) * (1 + 1e-6)
    assert lowest <= min(low, 0.0) + half_step
    assert highest >= max(high, 0.0) - half_step


def test_affine_params_reject_an_unknown_integer_type():
    with pytest.raises(ValueError):
        affine_params(-1.0, 1.0, "int4")


def test_symmetric_params_have_zero_point_zero_and_use_the_restricted_range():
    params = symmetric_params(2.54, "int8")
    assert int(params.zero_point) == 0
    # Restricted range: abs_max maps to 127, not 128. float32 scale: relative error ~6e-8.
    assert float(params.scale) == pytest.approx(2.54 / 127, rel=1e-6)
    values = np.array([-2.54, 2.54, -10.0, 10.0], np.float32)
    q = quantize(values, params, clip_range=(-127, 127))
    assert q.tolist() == [-127, 127, -127, 127]


def test_symmetric_params_give_a_positive_scale_for_all_zero_weights():
    params = symmetric_params(np.zeros(4), "int8", axis=0)
    assert np.all(params.scale > 0)
    assert params.scale.shape == (4,)


def test_weight_params_are_per_channel_along_the_requested_axis():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    weight[2] *= 10.0  # one channel with a much larger range
    params = weight_params(weight, axis=0)
    assert params.axis == 0
    assert params.scale.shape == (6,)
    assert np.all(params.zero_point == 0)
    # Each channel's scale is its own abs-max / 127 (float32 rounding: relative 1e-6).
    expected = np.abs(weight).reshape(6, -1).max(axis=1) / 127.0
    np.testing.assert_allclose(params.scale, expected, rtol=1e-6)

    q = quantize(weight, params)
    assert q.dtype == np.int8
    # Weights use the restricted range [-127, 127]: -128 never appears, and every channel reaches 127 in |q|.
    assert q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q.reshape(6, -1)).max(axis=1) == 127)
    # Round-trip error of each element is at most half its channel's step (plus float32 slack 1e-6 relative).
    error = np.abs(dequantize(q, params) - weight)
    bound = 0.5 * params.scale.reshape(6, 1, 1, 1) * (1 + 1e-6) + 1e-7
    assert np.all(error <= bound)

    last_axis = weight_params(weight.reshape(6, -1).T, axis=-1)
    assert last_axis.axis == 1 and last_axis.scale.shape == (6,)
    per_tensor = weight_params(weight, axis=None)
    assert per_tensor.axis is None and np.ndim(per_tensor.scale) == 0


def test_weights_negate_exactly_in_the_restricted_range():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((8, 16)).astype(np.float32)
    params = weight_params(weight, axis=0)
    assert np.array_equal(quantize(-weight, params), -quantize(weight, params))


# --- rounding and saturation, against ONNX Runtime ------------------------------------------------


def test_rounding_is_half_to_even_like_quantize_linear():
    # Exact halves (x / scale is exactly k + 0.5 in float32) are where round-half-away and
    # round-half-to-even differ.
    x = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 0.25, 0.75], np.float32)
    for params in (QuantParams(np.float32(1.0), np.array(10, np.uint8), "uint8"),
                   QuantParams(np.float32(0.5), np.array(-3, np.int8), "int8")):
        ours = quantize(x, params)
        assert ours.dtype == np.dtype(params.dtype)
        np.testing.assert_array_equal(ours, ort_quantize(x, params.scale, params.zero_point))
    unit = QuantParams(np.float32(1.0), np.array(0, np.int8), "int8")
    assert quantize(x[:4], unit).tolist() == [0, 2, 2, 4]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_random_values_quantize_bit_exactly_like_onnxruntime(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(50_000) * 3).astype(np.float32)
    params = affine_params(-2.3, 4.1, dtype)
    np.testing.assert_array_equal(quantize(x, params), ort_quantize(x, params.scale, params.zero_point))


def test_per_channel_quantize_matches_onnxruntime_along_axis_1():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 7)).astype(np.float32) * np.array([0.1, 1, 10, 100], np.float32)[:, None]
    params = weight_params(x, axis=1)
    assert params.scale.shape == (4,)
    expected = ort_quantize(x, params.scale, params.zero_point, axis=1)
    np.testing.assert_array_equal(quantize(x, params), expected)
    # Dequantize broadcasts along the same axis: error within half a step of each channel.
    error = np.abs(dequantize(quantize(x, params), params) - x)
    assert np.all(error <= 0.5 * params.scale.reshape(1, 4, 1) * (1 + 1e-6) + 1e-7)


def test_moderately_out_of_range_values_saturate_at_qmin_and_qmax():
    params = affine_params(-1.0, 2.0, "uint8")
    x = np.array([-1e6, -50.0, -1.5, 3.0, 50.0, 1e6], np.float32)
    assert quantize(x, params).tolist() == [0, 0, 0, 255, 255, 255]
    np.testing.assert_array_equal(quantize(x, params), ort_quantize(x, params.scale, params.zero_point))
    signed = affine_params(-1.0, 2.0, "int8")
    assert quantize(x, signed).tolist() == [-128, -128, -128, 127, 127, 127]


def test_huge_values_saturate_at_qmax_like_quantize_linear():
    """x / scale beyond the int64 range (or beyond float32, i.e. inf) must still saturate to the
    nearest end, as ONNX QuantizeLinear does. E.g. the 1e-12 minimum scale of an all-zero
    calibration range makes any real value of 1e7 or more overflow."""
    params = affine_params(-1.0, 2.0, "uint8")
    x = np.array([1e10, -1e10, 3e38, -3e38], np.float32)
    expected = ort_quantize(x, params.scale, params.zero_point)
    assert expected.tolist() == [255, 0, 255, 0]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(quantize(x, params), expected)
    tiny = affine_params(0.0, 0.0, "int8")  # scale = MIN_SCALE
    x = np.array([1e7, -1e7, 1.0], np.float32)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(quantize(x, tiny), ort_quantize(x, tiny.scale, tiny.zero_point))


# --- histogram observer ---------------------------------------------------------------------------


def test_histogram_growth_keeps_counts_and_exact_extremes():
    rng = np.random.default_rng(4)
    observer = HistogramObserver()
    batches = []
    # Each batch has a 10x wider spread and a shifted centre, so the range grows left and right.
    for index, spread in enumerate([0.01, 0.1, 1.0, 10.0, 100.0]):
        batch = (rng.standard_normal(20_000) * spread + (index - 2) * spread).astype(np.float32)
        batches.append(batch)
        observer.update(batch)
        seen = np.concatenate(batches)
        assert observer.total == seen.size == observer.counts.sum()
        assert observer.min == float(seen.min()) and observer.max == float(seen.max())
        assert observer.low <= observer.min and observer.max < observer.high
    seen = np.concatenate(batches).astype(np.float64)
    # Merging old bins into new ones is exact, so the histogram equals a direct histogram of all values
    # on the final grid, except for values within float32 rounding of a bin edge (the bin index is
    # computed in float32, relative error ~6e-8). Of 100 000 values, allow 0.01% to sit one bin over.
    edges = observer.low + observer.width * np.arange(observer.bins + 1)
    direct, _ = np.histogram(seen, bins=edges)
    assert np.abs(direct - observer.counts).sum() <= 10


def test_histogram_skips_non_finite_values_and_handles_a_constant_first_batch():
    observer = HistogramObserver(bins=64)
    observer.update(np.array([3.0, 3.0, np.nan, np.inf], np.float32))
    assert observer.total == 2 and observer.counts.sum() == 2
    observer.update(np.array([-100.0, 500.0], np.float32))
    assert observer.total == observer.counts.sum() == 4
    assert (observer.min, observer.max) == (-100.0, 500.0)
    assert observer.low <= -100.0 and observer.high > 500.0


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "outlier"])
def test_every_range_lies_within_min_max_widened_to_zero(method, kind):
    rng = np.random.default_rng(5)
    values = {
        "normal": rng.standard_normal(50_000),
        "positive": rng.uniform(1.0, 5.0, 50_000),
        "negative": rng.uniform(-5.0, -1.0, 50_000),
        "outlier": np.append(rng.standard_normal(50_000), 1000.0),
    }[kind].astype(np.float32)
    observer = HistogramObserver()
    for chunk in np.array_split(values, 5):
        observer.update(chunk)
    low, high = compute_range(observer, method, "uint8")
    lowest, highest = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    # No tolerance needed: every method clips or scales [min, max] toward 0, never beyond it.
    assert lowest <= low <= high <= highest


def test_minmax_and_percentile_ranges():
    rng = np.random.default_rng(6)
    values = np.append(rng.standard_normal(200_000), [80.0, -80.0]).astype(np.float32)
    observer = HistogramObserver()
    observer.update(values)
    assert compute_range(observer, "minmax") == (-80.0, 80.0)
    low, high = compute_range(observer, "percentile", percentile=99.9)
    # The 0.1% tails of N(0, 1) start at |x| = 3.09; the histogram has bins 160 / 2048 = 0.08 wide,
    # so the clipped range lands within one bin (plus 0.1 slack) of 3.09, far inside +-80.
    assert 2.9 <= high <= 3.3
    assert -3.3 <= low <= -2.9


def _empirical_mse(values: np.ndarray, low: float, high: float) -> float:
    params = affine_params(low, high, "uint8")
    return float(np.mean((dequantize(quantize(values, params), params) - values) ** 2))


def test_mse_clips_a_heavy_outlier():
    # ReLU-like activations (half-normal) with one value 50 standard deviations out. With a million
    # samples, spending the uint8 range on the outlier costs more squared error than clipping it.
    rng = np.random.default_rng(7)
    values = np.append(np.abs(rng.standard_normal(1_000_000)), 50.0).astype(np.float32)
    observer = HistogramObserver()
    for chunk in np.array_split(values, 4):
        observer.update(chunk)
    low, high = compute_range(observer, "mse", "uint8")
    assert low == 0.0
    assert high <= 25.0  # at least half the outlier's range clipped away
    assert _empirical_mse(values, low, high) < _empirical_mse(values, 0.0, 50.0)


def test_unknown_calibration_method_is_rejected():
    observer = HistogramObserver()
    observer.update(np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError):
        compute_range(observer, "nope")


def test_empty_observer_gives_an_empty_range():
    assert compute_range(HistogramObserver(), "minmax") == (0.0, 0.0)




def test_histogram_grid_does_not_depend_on_how_the_data_is_split():
    """Calibration runs large batches in pieces; the bins (and so every range computed from them)
    must be the same whatever the piece size. Widths are powers of two and starts multiples of
    them, so the final grid is set by the extremes alone."""
    rng = np.random.default_rng(11)
    data = np.concatenate([rng.standard_normal(4000) * (1 + i) + i for i in range(8)]).astype(np.float32)
    observers = []
    for piece in (len(data), 4000, 1000, 333):
        observer = HistogramObserver()
        for start in range(0, len(data), piece):
            observer.update(data[start:start + piece])
        observers.append(observer)
    for observer in observers[1:]:
        assert (observer.low, observer.width) == (observers[0].low, observers[0].width)
        np.testing.assert_array_equal(observer.counts, observers[0].counts)
    assert observers[0].low <= data.min() and data.max() < observers[0].high
