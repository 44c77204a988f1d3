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

from . import external_data, fidelity
from .data import Dataset, ImagePreprocessing, load_data
from .errors import EdgeoptError
from .progress import progress
from .runtimes import Runner, open_runner
from .weight_statistics import weight_statistics

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def file_size(path: "str | os.PathLike") -> dict:
    """Raw bytes on disk and bytes after ``gzip -9``; an ONNX model's external data files count."""
    path = pathlib.Path(path)
    files = external_data.files_of(path) if path.suffix == ".onnx" else [path]
    return {"raw_bytes": sum(f.stat().st_size for f in files), "gzip_bytes": external_data.gzip_size(files)}


def evaluate(model_path, data, reference=None, threads: int = 1, warmup: int = 10, runs: int = 100,
             batch_size: int = 64, preprocessing: ImagePreprocessing | None = None,
             runtime: str | None = None) -> dict:
    """Measure ``model_path`` on ``data`` (path or :class:`Dataset`) and compare it with ``reference``.

    Latency is the median and 90th percentile of ``runs`` single-sample inferences after
    ``warmup`` runs, at ``threads`` intra-op threads. Accuracy (top-1 of the first output) needs
    labels. Fidelity compares every float output with the reference model's on the same data.
    ``runtime`` names the runtime (default: by file suffix, ``.onnx`` -> ONNX Runtime); the
    reference may run on another one.
    """
    if threads < 1 or runs < 1 or warmup < 0:
        raise EdgeoptError(f"threads and runs must be >= 1 and warmup >= 0, got {threads}, {runs}, {warmup}")
    runner = open_runner(model_path, threads, runtime)
    dataset = data if isinstance(data, Dataset) else load_data(data, runner.input_specs, preprocessing)
    result = {"schema_version": SCHEMA_VERSION, "model": str(model_path), "samples": len(dataset),
              "threads": threads}
    result["size"] = _size_of(model_path)
    result["weights"] = _weights_of(model_path)
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
        reference_runner = open_runner(reference, threads)
        ours = [(spec.name, spec.shape) for spec in runner.input_specs]
        theirs = [(spec.name, spec.shape) for spec in reference_runner.input_specs]
        if [name for name, _ in ours] != [name for name, _ in theirs]:
            raise EdgeoptError(f"--reference {reference} has inputs {[n for n, _ in theirs]}; the model has "
                               f"{[n for n, _ in ours]} (expected the float model this one was made from)")
        result["reference"] = str(reference)
        result["fidelity"] = compare(_run_all(reference_runner, dataset, batch_size), outputs,
                                     reference_runner.output_names)
    return result


def _weights_of(model) -> dict | None:
    """Sparsity and distinct values per channel of an ONNX model's weights (None for other formats)."""
    if isinstance(model, onnx.ModelProto):
        return weight_statistics(model)
    if pathlib.Path(model).suffix != ".onnx":
        return None
    return weight_statistics(onnx.load(str(model)))


def _size_of(model) -> dict:
    if isinstance(model, onnx.ModelProto) and external_data.too_large(model):
        with external_data.on_disk(model) as path:
            return file_size(path)
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return {"raw_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0))}
    return file_size(model)


def _run_all(runner: Runner, dataset: Dataset, batch_size: int) -> list[list[np.ndarray]]:
    batches = -(-len(dataset) // batch_size) if dataset.can_batch else len(dataset)
    return [runner.run(feed) for feed in progress(dataset.batches(batch_size), "running", batches, "batch")]


def measure_latency(runner: Runner, dataset: Dataset, warmup: int, runs: int) -> dict:
    feeds = [runner.prepare(feed) for feed in dataset.batches(1, limit=min(len(dataset), 32))]
    for i in range(warmup):
        runner.run_prepared(feeds[i % len(feeds)])
    times = []
    for i in range(runs):  # no bar here: its updates would sit between the timed runs
        start = time.perf_counter()
        runner.run_prepared(feeds[i % len(feeds)])
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
