"""Streaming activation statistics and the methods that turn them into quantization ranges.

An observer keeps a fixed number of histogram bins per tensor whatever the size of the data set:
when a batch falls outside the current range, the range grows by a whole power of two of bins and
old bins merge exactly into new ones. Memory is therefore O(bins) per tensor, not O(samples).
numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from .numerics import INTEGER_RANGES, affine_params

DEFAULT_BINS = 2048
#: Values binned at a time: the index temporaries stay a few MB and are reused, where one
#: tensor-sized int64 temporary per update cost most of calibration's time (page faults).
HISTOGRAM_CHUNK = 1 << 20
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")


class HistogramObserver:
    """Running min, max, mean and a fixed-size histogram of one tensor's values."""

    def __init__(self, bins: int = DEFAULT_BINS):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.low = self.width = None
        self.min = np.inf
        self.max = -np.inf
        self.total = 0
        self.nonfinite = 0  # -inf masks, NaN: counted, kept out of the histogram
        self.channel_sums: np.ndarray | None = None
        self.channel_count = 0
        #: (C, H, W) -> [the NCHW tensor summed over samples; samples]. float32: these images add
        #: up to about one sample's activations, and a mean over a few hundred samples needs no more
        self.image_totals: dict[tuple, list] = {}
        #: node name -> (kernel, strides, pads, dilations) of a 2-D convolution reading this tensor
        self.window_geometry: dict[str, tuple] = {}
        self._window_means: dict[str, np.ndarray] = {}  # formed once per node after the last update
        #: how the input vectors are formed (see calibrate.rounding_inputs) -> [sum of x x^T over
        #: them, count] (weight rounding)
        self.moment_totals: dict = {}
        #: node name -> the key of the totals its input moments are in (q, k and v share one)
        self.moment_keys: dict[str, object] = {}

    def update_channel_means(self, values: np.ndarray) -> None:
        """Accumulate the mean of axis 1 (channels of NCHW, features of N x K) for bias correction."""
        values = np.asarray(values)
        if values.ndim < 2:
            return
        # Positions in float32 per (sample, channel), then float64 over samples: no float64 copy.
        inner = tuple(range(2, values.ndim))
        sums = (values.sum(axis=inner) if inner else values).astype(np.float64).sum(axis=0)
        if self.channel_sums is None:
            self.channel_sums = np.zeros_like(sums)
        if sums.shape == self.channel_sums.shape:
            self.channel_sums += sums
            self.channel_count += values.size // values.shape[1]

    def update_images(self, values: np.ndarray) -> None:
        """Accumulate the sum over samples of an NCHW tensor, from which :meth:`window_means` forms
        what each convolution reading it sees (window sums are linear: one image per tensor and
        image size, whatever the number of samples or convolutions)."""
        values = np.asarray(values)
        if values.ndim == 4:
            image = values.sum(axis=0, dtype=np.float32)
            _accumulate(self.image_totals, values.shape[1:], image, len(values))
            self._window_means.clear()

    def window_means(self, key: str) -> np.ndarray | None:
        """Per input channel and kernel offset, the mean of the zero-padded input that the output
        positions of convolution ``key`` see (exact bias correction with padding and stride)."""
        if key not in self.window_geometry or not self.image_totals:
            return None
        if key not in self._window_means:  # every candidate's plan asks; the statistics are final
            sums, positions = 0.0, 0
            for image, samples in self.image_totals.values():
                image_sums, per_sample = window_sums(image[None], *self.window_geometry[key])
                sums, positions = sums + image_sums, positions + per_sample * samples
            self._window_means[key] = sums / max(positions, 1)
        return self._window_means[key]

    def update_moments(self, key, sums: np.ndarray, count: int, nodes=()) -> None:
        """Add input moments under ``key``, for each of ``nodes`` (which read the same vectors)."""
        _accumulate(self.moment_totals, key, sums, count)
        for node in nodes:
            self.moment_keys[node] = key

    def moment_key(self, node: str):
        """The key node ``node``'s moments are under (equal for nodes whose moments are equal)."""
        return self.moment_keys.get(node, node)

    def moments(self, node: str) -> np.ndarray | None:
        """Second moment E[x x^T] of the inputs node ``node`` sees (per group), or None."""
        return _mean(self.moment_totals, self.moment_key(node))

    @property
    def channel_means(self) -> np.ndarray | None:
        return None if self.channel_sums is None else self.channel_sums / max(self.channel_count, 1)

    @property
    def high(self) -> float:
        return self.low + self.width * self.bins

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0:
            return
        vmin, vmax = float(values.min()), float(values.max())
        if not (np.isfinite(vmin) and np.isfinite(vmax)):  # min/max see any NaN or inf: filter only then
            finite = np.isfinite(values)
            self.nonfinite += int(values.size - np.count_nonzero(finite))
            values = values[finite]
            if values.size == 0:
                return
            vmin, vmax = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, vmin), max(self.max, vmax)
        self.total += values.size
        if self.low is None:
            span = max(vmax - vmin, abs(vmax), 1e-30) if vmax == vmin else vmax - vmin
            self.width = 2.0 ** math.ceil(math.log2(span / self.bins))
            self.low = math.floor(vmin / self.width) * self.width
        self._grow()
        # float32 arithmetic, unless the grid's start is beyond float32 (a -3.4e38 mask value)
        dtype = np.float32 if abs(self.low) < 1e38 else np.float64
        low, inverse = dtype(self.low), dtype(1.0 / self.width)
        buffer = np.empty(min(values.size, HISTOGRAM_CHUNK), dtype=dtype)
        for start in range(0, values.size, HISTOGRAM_CHUNK):
            part = values[start:start + HISTOGRAM_CHUNK]
            index = buffer[:part.size]
            np.subtract(part, low, out=index)
            index *= inverse
            np.clip(index, 0, self.bins - 1, out=index)
            self.counts += np.bincount(index.astype(np.intp), minlength=self.bins)

    def _grow(self) -> None:
        """Move and widen the range until it covers every value seen: the start moves down by whole
        bins, and where that is not enough the bin width doubles and the start moves to a multiple
        of the new width, so 2**k old bins merge exactly into one. Widths
        are powers of two and starts multiples of them, so the grid is the narrowest that covers the
        extremes, whatever the batches the data came in."""
        if self.low <= self.min and self.max < self.high:
            return
        width = self.width
        low = math.floor(self.min / width) * width  # first a shift by whole bins at the same width
        while not self.max < low + width * self.bins:
            width *= 2.0
            low = math.floor(self.min / width) * width
        offset, factor = round((self.low - low) / self.width), round(width / self.width)
        # Old bins past the data (empty) may fall beyond the new grid: clipped, they add nothing.
        positions = np.minimum((np.arange(self.bins) + offset) // factor, self.bins - 1)
        merged = np.zeros_like(self.counts)
        np.add.at(merged, positions, self.counts)
        self.counts, self.width, self.low = merged, width, low

    def bin_centers(self) -> np.ndarray:
        return self.low + self.width * (np.arange(self.bins) + 0.5)


def _accumulate(table: dict, key, sums: np.ndarray, count: int) -> None:
    """Add ``sums`` over ``count`` items to the running total stored under ``key``."""
    total = table.setdefault(key, [np.zeros(sums.shape, np.float64), 0])
    if total[0].shape == sums.shape:
        total[0] += sums
        total[1] += count


def _mean(table: dict[str, list], key: str) -> np.ndarray | None:
    if key not in table or table[key][1] == 0:
        return None
    sums, count = table[key]
    return sums / count


def window_sums(x: np.ndarray, kernel, strides, pads, dilations) -> tuple[np.ndarray, int]:
    """Sum over samples and output positions of the zero-padded NCHW input seen at each kernel
    offset: shape (channels, kernel_h * kernel_w), and the number of (sample, position) pairs."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    n, c, h, w = x.shape
    # Sums are linear: add the samples up first, then pad and slice one image instead of n.
    padded = np.pad(x.sum(axis=0, keepdims=True, dtype=np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    sums = np.empty((c, kh * kw))
    for a in range(kh):
        for b in range(kw):
            window = padded[:, :, a * dh:a * dh + sh * (out_h - 1) + 1:sh, b * dw:b * dw + sw * (out_w - 1) + 1:sw]
            sums[:, a * kw + b] = window.sum(axis=(0, 2, 3))
    return sums, n * out_h * out_w


def compute_range(observer: HistogramObserver, method: str, dtype: str = "uint8",
                  percentile: float = 99.99) -> tuple[float, float]:
    """The ``(low, high)`` range to quantize a tensor to, by calibration ``method``.

    * ``minmax``: the extremes seen; never clips, but one outlier spends the whole range.
    * ``percentile``: clip the ``100 - percentile`` percent most extreme values on each side.
    * ``entropy``: the clipping that keeps the quantized distribution closest (KL divergence).
    * ``mse``: the clipping that minimises the expected squared quantization error.
    """
    if observer.total == 0:
        return 0.0, 0.0
    if method == "minmax":
        return observer.min, observer.max
    if method == "percentile":
        return _percentile_range(observer, percentile)
    if method == "entropy":
        return _entropy_range(observer, dtype)
    if method == "mse":
        return _mse_range(observer, dtype)
    raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")


def _percentile_range(observer: HistogramObserver, percentile: float) -> tuple[float, float]:
    cumulative = np.cumsum(observer.counts) / observer.total
    tail = (100.0 - percentile) / 100.0
    edges = observer.low + observer.width * np.arange(observer.bins + 1)
    low_index = int(np.searchsorted(cumulative, tail, side="right"))
    high_index = int(np.searchsorted(cumulative, 1.0 - tail, side="left"))
    low = max(observer.min, edges[low_index]) if observer.min < 0 else observer.min
    high = min(observer.max, edges[min(high_index + 1, observer.bins)])
    return float(low), float(high)


def _candidate_ranges(observer: HistogramObserver, steps: int = 96) -> list[tuple[float, float]]:
    """Shrunken versions of [min, max] (both ends scaled toward 0) to search over."""
    low, high = min(observer.min, 0.0), max(observer.max, 0.0)
    fractions = np.linspace(1.0, 0.05, steps)
    return [(low * f, high * f) for f in fractions]


def _expected_error(observer: HistogramObserver, low: float, high: float, dtype: str) -> float:
    params = affine_params(low, high, dtype)
    qmin, qmax = INTEGER_RANGES[dtype]
    scale, zero_point = float(params.scale), float(params.zero_point)
    centers = observer.bin_centers()
    q = np.clip(np.rint(centers / scale) + zero_point, qmin, qmax)
    error = (q - zero_point) * scale - centers
    return float(np.dot(observer.counts, error * error))


def _mse_range(observer: HistogramObserver, dtype: str) -> tuple[float, float]:
    candidates = _candidate_ranges(observer)
    errors = [_expected_error(observer, lo, hi, dtype) for lo, hi in candidates]
    return candidates[int(np.argmin(errors))]


def _entropy_range(observer: HistogramObserver, dtype: str) -> tuple[float, float]:
    """KL-divergence calibration (as in TensorRT's entropy calibrator) on the observed histogram."""
    qmin, qmax = INTEGER_RANGES[dtype]
    levels = qmax - qmin + 1
    centers = observer.bin_centers()
    counts = observer.counts.astype(np.float64)
    # Exact zeros (ReLU outputs, padding) are representable at any range: leave their spike out,
    # or it dominates the divergence.
    zero_bin = int(np.floor((0.0 - observer.low) / observer.width))
    if 0 <= zero_bin < len(counts):
        counts = counts.copy()
        counts[zero_bin] = 0.0
    if counts.sum() == 0:
        return observer.min, observer.max
    reference = counts / counts.sum()
    best, best_divergence = (observer.min, observer.max), np.inf
    for low, high in _candidate_ranges(observer, steps=64):
        inside = (centers >= low) & (centers <= high)
        if not inside.any():
            continue
        # Reference P: the clipped distribution, outliers folded into the edge bins.
        clipped = np.where(inside, reference, 0.0)
        p = clipped.copy()
        first, last = np.argmax(inside), len(inside) - 1 - np.argmax(inside[::-1])
        p[first] += reference[:first].sum()
        p[last] += reference[last + 1:].sum()
        # Candidate Q: the in-range mass (without the outliers) rounded to `levels` values and
        # spread back over its bins, so clipping costs what the outliers carried.
        level = np.clip(np.floor((centers - low) / max(high - low, 1e-12) * levels), 0, levels - 1)
        level = level.astype(np.int64)
        mass = np.bincount(level, weights=clipped, minlength=levels)
        occupied = np.bincount(level, weights=(clipped > 0).astype(np.float64), minlength=levels)
        q = np.where(clipped > 0, mass[level] / np.maximum(occupied[level], 1.0), 0.0)
        q = q / max(q.sum(), 1e-12)
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best_divergence:
            best, best_divergence = (low, high), divergence
    return float(best[0]), float(best[1])


# A tensor whose full range is this many times the range of its bulk (0.1-99.9 percentiles) holds
# sentinel values, like an additive attention mask of -3.4e38: no 8- or 16-bit grid holds both.
SENTINEL_RATIO = 1e4


def holds_sentinels(observer: HistogramObserver) -> bool:
    """Whether a few extreme values (masks, padding markers) dwarf the everyday values."""
    if observer.nonfinite:
        return True
    if observer.total == 0:
        return False
    if max(abs(observer.min), abs(observer.max)) > 1e30:
        return True
    low, high = _percentile_range(observer, 99.9)
    bulk = max(high - low, 1e-12 * max(abs(observer.min), abs(observer.max), 1e-30))
    return (observer.max - observer.min) > SENTINEL_RATIO * bulk
