"""Calibration: memory-bounded runs, held-out check samples."""

from __future__ import annotations

import numpy as np

import models
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
    observers, samples = calibration_module.collect_statistics(model, {"input"}, iter([Batch(input=x)]))
    assert samples == 8 and runs == [1] + [1] * 8  # the measuring run, then eight pieces
    runs.clear()
    observers, samples = calibration_module.collect_statistics(model, {"input"}, iter([{"input": x}]))
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
