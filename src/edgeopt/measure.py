"""Measurement on the real runtime: size on disk, latency, accuracy, fidelity to a reference.

The JSON written by ``edgeopt evaluate --json`` is :func:`evaluate`'s result; its keys are
documented in the README and stay stable.
"""

from __future__ import annotations

import gzip
import logging
import os
import pathlib
import time

import numpy as np
import onnx

from . import fidelity
from .data import Dataset, ImagePreprocessing, input_specs, load_data
from .errors import EdgeoptError
from .model_io import load_model

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def encode_feed(feed: dict, io_params: dict) -> dict:
    """Float inputs to the integers an integer-only model takes (its stored scales)."""
    from .quantization.numerics import QuantParams, quantize

    encoded = {}
    for name, value in feed.items():
        params = io_params.get(name)
        if params is None or params["role"] != "input":
            encoded[name] = value
            continue
        encoded[name] = quantize(value, QuantParams(np.float32(params["scale"]),
                                                    np.array(params["zero_point"], dtype=params["dtype"]),
                                                    params["dtype"]))
    return encoded


def decode_outputs(outputs: list, names: list[str], io_params: dict) -> list:
    from .quantization.numerics import QuantParams, dequantize

    decoded = []
    for name, value in zip(names, outputs):
        params = io_params.get(name)
        if params is None or params["role"] != "output":
            decoded.append(value)
        else:
            decoded.append(dequantize(value, QuantParams(np.float32(params["scale"]),
                                                         np.array(params["zero_point"], dtype=params["dtype"]),
                                                         params["dtype"])))
    return decoded


def file_size(path: "str | os.PathLike") -> dict:
    """Raw bytes on disk and bytes after ``gzip -9``."""
    data = pathlib.Path(path).read_bytes()
    return {"raw_bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


class ModelRunner:
    """One ONNX Runtime session that takes and returns float data, integer-only models included."""

    def __init__(self, model: onnx.ModelProto, threads: int | None):
        from .quantization.integer_io import read_io_params
        from .runtime import make_session

        self.io_params = read_io_params(model)
        self.session = make_session(model, threads=threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.float_specs = input_specs(model)
        if self.io_params:
            self.float_specs = [s.__class__(s.name, np.dtype(np.float32) if s.name in self.io_params else s.dtype,
                                            s.shape) for s in self.float_specs]

    def encode(self, feed):
        return encode_feed(feed, self.io_params) if self.io_params else feed

    def run_encoded(self, feed):
        from .runtime import run_checked

        return run_checked(self.session, None, feed, "the data")

    def run(self, feed) -> list:
        outputs = self.run_encoded(self.encode(feed))
        return decode_outputs(outputs, self.output_names, self.io_params) if self.io_params else outputs


def evaluate(model_path, data, reference=None, threads: int = 1, warmup: int = 10, runs: int = 100,
             batch_size: int = 64, preprocessing: ImagePreprocessing | None = None) -> dict:
    """Measure ``model_path`` on ``data`` (path or :class:`Dataset`) and compare it with ``reference``.

    Latency is the median and 90th percentile of ``runs`` single-sample inferences after
    ``warmup`` runs, at ``threads`` intra-op threads. Accuracy (top-1 of the first output) needs
    labels. Fidelity compares every float output with the reference model's on the same data.
    """
    if threads < 1 or runs < 1 or warmup < 0:
        raise EdgeoptError(f"threads and runs must be >= 1 and warmup >= 0, got {threads}, {runs}, {warmup}")
    model = load_model(model_path)
    runner = ModelRunner(model, threads)
    dataset = data if isinstance(data, Dataset) else load_data(data, runner.float_specs, preprocessing)
    result = {"schema_version": SCHEMA_VERSION, "model": str(model_path), "samples": len(dataset),
              "threads": threads}
    result["size"] = file_size(model_path) if not isinstance(model_path, onnx.ModelProto) else \
        {"raw_bytes": model.ByteSize(), "gzip_bytes": len(gzip.compress(model.SerializeToString(), 9, mtime=0))}
    outputs = _run_all(runner, dataset, batch_size)
    result["latency_ms"] = measure_latency(runner, dataset, warmup, runs)
    if dataset.labels is not None:
        first = [np.asarray(batch[0]) for batch in outputs]
        rows = sum(len(batch) if batch.ndim else 0 for batch in first)
        if rows != len(dataset):
            raise EdgeoptError(f"labels need one row of scores per sample from the first output; it gave "
                               f"{rows} rows for {len(dataset)} samples")
        logits = np.concatenate(first).reshape(len(dataset), -1)
        result["top1"] = float(np.mean(logits.argmax(axis=1) == dataset.labels))
    else:
        result["top1"] = None
    result["fidelity"] = None
    if reference is not None:
        reference_model = load_model(reference)
        reference_runner = ModelRunner(reference_model, threads)
        ours = [(spec.name, spec.shape) for spec in runner.float_specs]
        theirs = [(spec.name, spec.shape) for spec in reference_runner.float_specs]
        if [name for name, _ in ours] != [name for name, _ in theirs]:
            raise EdgeoptError(f"--reference {reference} has inputs {[n for n, _ in theirs]}; the model has "
                               f"{[n for n, _ in ours]} (expected the float model this one was made from)")
        result["reference"] = str(reference)
        result["fidelity"] = compare(_run_all(reference_runner, dataset, batch_size), outputs,
                                     reference_runner.output_names)
    return result


def _run_all(runner: ModelRunner, dataset: Dataset, batch_size: int) -> list[list[np.ndarray]]:
    return [runner.run(feed) for feed in dataset.batches(batch_size)]


def measure_latency(runner: ModelRunner, dataset: Dataset, warmup: int, runs: int) -> dict:
    feeds = [runner.encode(feed) for feed in dataset.batches(1, limit=min(len(dataset), 32))]
    for i in range(warmup):
        runner.run_encoded(feeds[i % len(feeds)])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        runner.run_encoded(feeds[i % len(feeds)])
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median": float(np.median(times)), "p90": float(np.percentile(times, 90)), "runs": runs,
            "warmup": warmup}


def compare(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]], names: list[str]) -> dict:
    """Fidelity per output: top-1 agreement, SQNR (dB), mean and worst per-sample cosine."""
    per_output = {}
    for index, name in enumerate(names):
        ref = [batch[index] for batch in reference]
        out = [batch[index] for batch in outputs]
        if not np.issubdtype(np.asarray(ref[0]).dtype, np.floating):
            continue
        ref_all = np.concatenate([np.atleast_1d(r).reshape(max(1, len(np.atleast_1d(r))), -1) for r in ref])
        out_all = np.concatenate([np.atleast_1d(o).reshape(max(1, len(np.atleast_1d(o))), -1) for o in out])
        cosine = fidelity.cosine_per_sample(ref_all, out_all)
        per_output[name] = {
            "top1_agreement": fidelity.top1_agreement(ref_all, out_all),
            "sqnr_db": fidelity.sqnr_db(ref_all, out_all),
            "cosine_mean": float(cosine.mean()),
            "cosine_worst": float(cosine.min()),
        }
    first = next(iter(per_output.values()), None)
    summary = dict(first) if first else {}
    if per_output:
        summary["cosine_worst"] = min(v["cosine_worst"] for v in per_output.values())
    summary["outputs"] = per_output
    return summary
