"""Calibration: memory-bounded runs, held-out check samples."""

from __future__ import annotations

import models
import numpy as np

from edgeopt.data import Batch, Dataset, input_specs
from edgeopt.quantization import calibrate as calibration_module


def test_large_batches_run_in_pieces_and_other_feeds_whole(monkeypatch):
    model = models.CASES["conv_net"].build()
    runs = []
    from edgeopt.runtimes import onnxruntime as ort_runtime

    original = ort_runtime.run_checked

    def counting(session, names, feed, where):
        runs.append(len(next(iter(feed.values()))))
        return original(session, names, feed, where)

    monkeypatch.setattr(ort_runtime, "run_checked", counting)
    monkeypatch.setattr(calibration_module, "CALIBRATION_BYTES", 1)  # one sample per run
    x = models.CASES["conv_net"].feeds(1, 8)["input"]
    samples = calibration_module.collect_statistics(model, {"input"}, iter([Batch(input=x)])).samples
    assert samples == 8 and runs == [1] + [1] * 8  # the measuring run, then eight pieces
    runs.clear()
    samples = calibration_module.collect_statistics(model, {"input"}, iter([{"input": x}])).samples
    assert samples == 8 and runs == [8]  # a plain dict is one model call, never cut


def test_check_samples_stop_at_64_inside_a_batch():
    case = models.CASES["conv_net"]
    model = case.build()
    dataset = Dataset(case.feeds(1, 100), input_specs(model))
    feeds = dataset.batches(100)
    from edgeopt.quantization.graph import GraphView, tensor_dtypes
    from edgeopt.quantization.select import select

    selection = select(GraphView(model), tensor_dtypes(model), integer_only=False, per_channel=True)
    measured = calibration_module.calibrate(model, selection, feeds, max_samples=None, bias_correction=False,
                                            compensated_rounding=True)
    assert sum(len(feed["input"]) for feed in measured.check_feeds) == calibration_module.CHECK_SAMPLES
    assert measured.samples == 100
    assert isinstance(dataset.batches(10).__next__(), Batch)
    # run in pieces of CHECK_PIECE samples, so that no session holds the memory of 64 at once
    assert [len(feed["input"]) for feed in measured.check_feeds] == [calibration_module.CHECK_PIECE] * 8
    assert sum(np.asarray(outputs[0]).shape[0] for outputs in measured.reference) == calibration_module.CHECK_SAMPLES


def _calibrated(model, feeds):
    from edgeopt.quantization.graph import GraphView, tensor_dtypes
    from edgeopt.quantization.select import select

    selection = select(GraphView(model), tensor_dtypes(model), integer_only=False, per_channel=True)
    return calibration_module.calibrate(model, selection, feeds, max_samples=None, bias_correction=False,
                                        compensated_rounding=False)


def _counted(monkeypatch, module, name: str) -> tuple[list, object]:
    """``module.name`` replaced by a wrapper that records each call; returns the calls and the original."""
    original = getattr(module, name)
    calls: list = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls, original


def _assert_same_outputs(ours, theirs, count: int, rtol: float = 0.0) -> None:
    assert len(ours) == len(theirs) == count
    for mine, expected in zip(ours, theirs):
        for a, b in zip(mine, expected):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6 * np.abs(b).max() if rtol else 0.0)


def test_reference_outputs_come_from_the_calibration_runs(monkeypatch):
    """The check samples' float outputs are fetched in the calibration runs (no second pass), and
    equal a plain session's; the unoptimised calibration session may differ in rounding: 1e-5
    relative is a thousand times below any int8 error the search compares."""
    from edgeopt.quantization.scoring import run_outputs
    from edgeopt.runtimes import onnxruntime as ort_runtime

    case = models.CASES["conv_net"]
    model = case.build()
    sessions, original = _counted(monkeypatch, ort_runtime, "make_session")
    measured = _calibrated(model, Dataset(case.feeds(1, 40), input_specs(model)).batches(20))
    assert len(sessions) == 1
    monkeypatch.setattr(ort_runtime, "make_session", original)
    # two batches of 20, each in pieces of 8, 8 and 4
    _assert_same_outputs(measured.reference, run_outputs(model, measured.check_feeds), 6, rtol=1e-5)


def test_reference_outputs_of_check_samples_run_in_pieces(monkeypatch):
    """A check piece too large for one calibration run is run in pieces; its reference then comes
    from a plain session over the check pieces."""
    from edgeopt.quantization import scoring

    monkeypatch.setattr(calibration_module, "CALIBRATION_BYTES", 1)  # one sample per run
    case = models.CASES["conv_net"]
    model = case.build()
    separate, original = _counted(monkeypatch, scoring, "run_outputs")
    measured = _calibrated(model, Dataset(case.feeds(1, 12), input_specs(model)).batches(12))
    assert separate == [1]  # the reference came from a plain session, not the calibration runs
    assert [len(feed["input"]) for feed in measured.check_feeds] == [8, 4]
    _assert_same_outputs(measured.reference, original(model, measured.check_feeds), 2)


def test_calibration_leaves_the_model_as_it_was():
    """The observed tensors are outputs of the model only while ONNX Runtime reads it."""
    model = models.CASES["conv_net"].build()
    before = model.SerializeToString()
    x = models.CASES["conv_net"].feeds(1, 4)["input"]
    statistics = calibration_module.collect_statistics(model, {"input", "r1", "c2"}, iter([{"input": x}]))
    assert set(statistics.observers) == {"input", "r1", "c2"} and statistics.observers["r1"].total > 0
    assert model.SerializeToString() == before


def test_calibration_restores_the_outputs_when_the_runtime_refuses(monkeypatch):
    from edgeopt.errors import EdgeoptError
    from edgeopt.runtimes import onnxruntime as ort_runtime

    def refuse(*args, **kwargs):
        raise EdgeoptError("ONNX Runtime cannot load the model: test")

    monkeypatch.setattr(ort_runtime, "make_session", refuse)
    model = models.CASES["conv_net"].build()
    before = model.SerializeToString()
    x = models.CASES["conv_net"].feeds(1, 4)["input"]
    try:
        calibration_module.collect_statistics(model, {"r1", "c2"}, iter([{"input": x}]))
    except EdgeoptError:
        pass
    else:
        raise AssertionError("expected the runtime's refusal")
    assert model.SerializeToString() == before
