"""Calibration: run the float model once over the data and keep everything the int8 search needs.

One :class:`Calibration` holds the observers (a histogram per tensor, channel and window means for
bias correction, input moments for compensated rounding), the check samples held out for scoring
candidates, and the float model's outputs on them. Decides nothing; edits nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..data import Batch
from ..errors import EdgeoptError
from ..progress import progress
from . import rounding
from .calibration import HistogramObserver, holds_sentinels
from .graph import GraphView, attribute, extra_outputs
from .operators import rule_for
from .select import Selection

logger = logging.getLogger(__name__)

#: Weights with more inputs per output channel keep nearest rounding (an inputs^2 matrix each).
MAX_ROUNDING_INPUTS = 4096
#: Calibration samples replayed to check candidates against float (held out from the moments).
CHECK_SAMPLES = 64
#: Check samples of a :class:`~edgeopt.data.Batch` run at a time: a candidate's session keeps the
#: memory of its largest run (64 ImageNet images through MobileNetV2 at once: 520 MB).
CHECK_PIECE = 8
#: Samples after the check samples whose input moments compensated rounding fits on.
ROUNDING_SAMPLES = 128


@dataclass
class Calibration:
    """What one pass of the float model over the calibration data measured."""

    observers: dict[str, HistogramObserver]
    samples: int
    #: the first CHECK_SAMPLES samples, as fed
    check_feeds: list[dict] = field(default_factory=list)
    #: float outputs on ``check_feeds``
    reference: list[list[np.ndarray]] = field(default_factory=list)

    def sentinels(self) -> dict[str, str]:
        """Tensors holding sentinel values (additive attention masks): they stay float in any mode."""
        return {name: _sentinel_reason(observer) for name, observer in sorted(self.observers.items())
                if holds_sentinels(observer)}


def _sentinel_reason(observer: HistogramObserver) -> str:
    seen = f"values in [{observer.min:.3g}, {observer.max:.3g}]"
    if observer.nonfinite:
        seen += f" and {observer.nonfinite} infinite or NaN values"
    return (f"holds sentinel values (e.g. an additive attention mask): {seen}; no integer grid holds "
            "them and the other values together")


def calibrate(model: onnx.ModelProto, selection: Selection, feeds, *, max_samples: int | None,
              bias_correction: bool, compensated_rounding: bool) -> Calibration:
    """Observe every selected tensor over ``feeds``; keep the first CHECK_SAMPLES samples and the
    float outputs on them (fetched in the same runs). Moments for compensated rounding come from
    the ROUNDING_SAMPLES samples after the check samples, so keeping it is decided on held-out data."""
    from .scoring import run_outputs

    view = GraphView(model)
    check_feeds: list[dict] = []

    def remember(stream):
        """The stream with its first CHECK_SAMPLES samples in check pieces."""
        kept = 0
        for feed in stream:
            if kept >= CHECK_SAMPLES:
                yield feed
                continue
            check, rest = feed, None
            if isinstance(feed, Batch) and kept + batch_size(feed) > CHECK_SAMPLES:
                split = CHECK_SAMPLES - kept
                check = Batch({name: value[:split] for name, value in feed.items()})
                rest = Batch({name: value[split:] for name, value in feed.items()})
            for piece in _pieces(check, CHECK_PIECE):
                check_feeds.append(piece)
                yield piece
            kept += batch_size(check)
            if rest is not None:
                yield rest

    statistics = collect_statistics(
        model, selection.activations, remember(feeds), max_samples,
        channel_means_for=bias_correction_inputs(selection) if bias_correction else set(),
        conv_windows=conv_window_geometry(selection, view) if bias_correction else {},
        moment_inputs=rounding_inputs(selection, view) if compensated_rounding else {},
        moment_samples=(CHECK_SAMPLES, CHECK_SAMPLES + ROUNDING_SAMPLES), outputs_for=CHECK_SAMPLES)
    logger.info("calibrated %d tensors on %d samples", len(statistics.observers), statistics.samples)
    reference = statistics.outputs if statistics.outputs is not None else run_outputs(model, check_feeds)
    return Calibration(statistics.observers, statistics.samples, check_feeds, reference)


def batch_size(feed: dict) -> int:
    first = next(iter(feed.values()))
    return len(first) if first.ndim else 1


#: Calibration runs the model on at most this many bytes of observed tensors at once (a batch of
#: 16 ImageNet images through MobileNetV2 is about 2 GB of activations).
CALIBRATION_BYTES = 64 << 20


@dataclass
class _Wanted:
    """What :func:`collect_statistics` accumulates beyond the histograms."""

    channel_means_for: set
    conv_windows: dict
    moment_inputs: dict
    moment_samples: tuple[int, int]


@dataclass
class Statistics:
    """What :func:`collect_statistics` returns."""

    observers: dict[str, HistogramObserver]
    samples: int
    #: the model's outputs on each feed holding the first ``outputs_for`` samples, or None where
    #: such a feed was run in pieces
    outputs: list[list[np.ndarray]] | None = None


def collect_statistics(model: onnx.ModelProto, tensors: set[str], feeds, max_samples: int | None = None,
                       channel_means_for: set[str] = frozenset(), conv_windows: dict | None = None,
                       moment_inputs: dict | None = None, moment_samples: tuple[int, int] = (0, 128),
                       outputs_for: int = 0) -> Statistics:
    """Run the float model over ``feeds`` and collect a histogram per tensor (bounded memory);
    also the channel means, convolution window means, and the input second moments asked for
    (from the samples numbered ``moment_samples[0]`` up to, not including, ``moment_samples[1]``),
    and the model's outputs on the feeds holding the first ``outputs_for`` samples (the check
    samples' reference, without a second pass). Large batches run in pieces of at most
    CALIBRATION_BYTES of observed tensors."""
    from ..runtimes.onnxruntime import make_session

    existing = [value.name for value in model.graph.output]
    with extra_outputs(model, sorted(tensors)):
        session = make_session(model, optimize=False, arena=False)
        wanted = [value.name for value in model.graph.output if value.name in tensors]
    extra = _Wanted(set(channel_means_for), conv_windows or {}, moment_inputs or {}, moment_samples)
    observers = {name: HistogramObserver() for name in tensors}
    for name, convolutions in extra.conv_windows.items():
        if name in observers:
            observers[name].window_geometry.update(convolutions)
    statistics, piece = Statistics(observers, 0, [] if outputs_for else None), None
    for feed in progress(feeds, "calibrating", unit="batch"):
        if piece is None:
            piece = _piece_size(session, wanted, feed)
        keep = statistics.samples < outputs_for
        if keep and isinstance(feed, Batch) and batch_size(feed) > piece:
            statistics.outputs = None  # run in pieces: the caller runs the float model on it itself
        for part in _pieces(feed, piece):
            _observe_run(session, wanted, existing if keep and statistics.outputs is not None else [], part,
                         statistics, extra)
        if max_samples is not None and statistics.samples >= max_samples:
            break
    if statistics.samples == 0:
        raise EdgeoptError("calibration data is empty; expected at least one sample")
    return statistics


def _observe_run(session, wanted: list[str], outputs: list[str], part: dict, statistics: Statistics,
                 extra: _Wanted) -> None:
    """One run: every wanted tensor observed, the model's ``outputs`` kept."""
    from ..runtimes.onnxruntime import run_checked

    results = run_checked(session, wanted + outputs, part, "calibration data")
    if outputs:
        statistics.outputs.append(results[len(wanted):])
    seen = list(zip(wanted, results)) + [(n, part[n]) for n in statistics.observers.keys() & set(part)]
    for name, value in seen:
        _observe(statistics.observers[name], name, value, statistics.samples, extra)
    statistics.samples += batch_size(part)


def _piece_size(session, wanted: list[str], feed: dict) -> int:
    """How many samples of a :class:`~edgeopt.data.Batch` fit in CALIBRATION_BYTES of observed
    tensors, measured on one sample (a run whose results are dropped, so that batches that fit
    are observed exactly as they come)."""
    from ..runtimes.onnxruntime import run_checked

    if not isinstance(feed, Batch) or batch_size(feed) == 1:
        return 1
    one = run_checked(session, wanted, {name: value[:1] for name, value in feed.items()}, "calibration data")
    return max(1, int(CALIBRATION_BYTES // max(sum(r.nbytes for r in one), 1)))


def _pieces(feed: dict, size: int):
    """A :class:`~edgeopt.data.Batch` in runs of at most ``size`` samples; any other feed whole."""
    count = batch_size(feed)
    if not isinstance(feed, Batch) or count <= size:
        yield feed
        return
    for start in range(0, count, size):
        yield Batch({name: value[start:start + size] for name, value in feed.items()})


def _observe(observer: HistogramObserver, name: str, value: np.ndarray, samples: int, extra: _Wanted) -> None:
    observer.update(value)
    if name in extra.channel_means_for:
        observer.update_channel_means(value)
    if name in extra.conv_windows:
        observer.update_images(value)
    first, stop = extra.moment_samples
    if name in extra.moment_inputs and np.ndim(value) and samples < stop and samples + len(value) > first:
        part = np.asarray(value)[max(first - samples, 0):stop - samples]
        readers: dict[tuple, list[str]] = {}  # q, k and v read one input: computed and summed once
        for node_name, spec in extra.moment_inputs[name]:
            readers.setdefault(spec, []).append(node_name)
        for spec, nodes in readers.items():
            observer.update_moments(spec, *_moments(part, spec), nodes=nodes)


def _moments(value: np.ndarray, spec: tuple) -> tuple[np.ndarray, int]:
    if spec[0] == "conv":
        return rounding.conv_patch_moments(value, *spec[1:])
    return rounding.row_moments(value, spec[1])


def rounding_inputs(selection: Selection, view: GraphView) -> dict[str, list]:
    """For the weights compensated rounding can improve: input name -> [(node name, how to form the
    vectors the weight multiplies)], for :func:`calibrate`."""
    inputs: dict[str, list] = {}
    nodes = {node.name: node for node in selection.nodes}
    for (node_name, index), (name, _) in selection.weights.items():
        node = nodes[node_name]
        weight = view.initializers[name]
        dims = tuple(weight.dims)
        spec = None
        if node.op_type == "Conv" and index == 1 and len(dims) == 4 and attribute(node, "auto_pad", b"NOTSET") in (
                b"NOTSET", "NOTSET", b"VALID", "VALID"):
            group = attribute(node, "group", 1)
            if np.prod(dims[1:]) <= MAX_ROUNDING_INPUTS:
                spec = ("conv", group, tuple(dims[2:]), tuple(attribute(node, "strides", [1, 1])),
                        tuple(attribute(node, "pads", [0, 0, 0, 0])), tuple(attribute(node, "dilations", [1, 1])))
        elif node.op_type in ("Gemm", "MatMul") and index == 1 and len(dims) == 2 and \
                not attribute(node, "transA", 0):
            features = dims[1] if node.op_type == "Gemm" and attribute(node, "transB", 0) else dims[0]
            if features <= MAX_ROUNDING_INPUTS:
                spec = ("rows", features)
        if spec is not None:
            inputs.setdefault(node.input[0], []).append((node_name, spec))
    return inputs


def conv_window_geometry(selection: Selection, view: GraphView) -> dict[str, list]:
    """For 2-D convolutions to bias-correct: input name -> [(node name, (kernel, strides, pads,
    dilations))], so calibration can measure what the zero-padded windows see."""
    windows: dict[str, list] = {}
    for node in selection.nodes:
        if node.op_type != "Conv" or (node.name, 2) not in selection.biases:
            continue
        weight = view.initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 4 or attribute(node, "auto_pad", b"NOTSET") not in (
                b"NOTSET", "NOTSET", b"VALID", "VALID"):
            continue
        kernel = tuple(weight.dims[2:])
        strides = tuple(attribute(node, "strides", [1, 1]))
        pads = tuple(attribute(node, "pads", [0, 0, 0, 0]))
        dilations = tuple(attribute(node, "dilations", [1, 1]))
        windows.setdefault(node.input[0], []).append((node.name, (kernel, strides, pads, dilations)))
    return windows


def bias_correction_inputs(selection: Selection) -> set[str]:
    """Activations whose per-channel means :func:`plan` needs for bias correction."""
    return {node.input[0] for node in selection.nodes
            if rule_for(node).bias_correction and (node.name, 1) in selection.weights
            and (node.name, 2) in selection.biases}
