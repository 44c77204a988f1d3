"""The "fidelity" metric of the third-party group: how close every output stays to float.

The reference benchmark's ``score()`` looks at output 0 only; detectors and face models put
boxes, scores and landmarks in different outputs, and a quantizer can wreck one while keeping
another. So, per held-out sample, every float output is compared with float by cosine, and the
sample counts by its *worst* output; the headline is the mean of that over samples.

A sample whose float output is numerically silent (all zeros, or a norm below ``SILENT`` times
the output's median norm: a probability map with nothing in it) has no meaningful cosine: such
(sample, output) pairs are left out of the cosine and counted, and their error is reported pooled
instead, as error energy over signal energy summed over those samples (per output).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: a sample's output norm below this share of the output's median norm counts as silent (-60 dB)
SILENT = 1e-3


def collect(run, dataset, output_names: list[str]) -> dict[str, np.ndarray]:
    """Every output of ``run(feed)`` over the data set, samples on axis 0 (one-sample feeds get
    a new axis; batched feeds are split on their batch axis 0)."""
    gathered: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for feed in dataset.batches(16):
        values = run(feed)
        for name, value in zip(output_names, values):
            value = np.asarray(value)
            gathered[name].append(value if dataset.can_batch else value[None])
    return {name: np.concatenate(parts) for name, parts in gathered.items()}


class PlainRunner:
    """A plain onnxruntime session (no edgeopt internals, no onnx checker: a file onnxruntime runs
    is measured even when onnx's checker rejects it), with the runner interface the benchmark uses."""

    def __init__(self, path, threads: int = 2):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ddddocr's recogniser declares a wrong output shape: one warning a run
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def prepare(self, feed: dict) -> dict:
        return feed

    def run_prepared(self, feed: dict) -> list:
        return self.session.run(self.output_names, feed)

    run = run_prepared


def ort_runner(path, threads: int = 2):
    """``(run, output_names)`` of a :class:`PlainRunner`."""
    runner = PlainRunner(path, threads)
    return runner.run, runner.output_names


def outputs_of(path, dataset, threads: int = 2) -> dict[str, np.ndarray]:
    run, names = ort_runner(path, threads)
    return collect(run, dataset, names)


def _cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    dot = np.sum(ref * out, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(np.isfinite(cosine), cosine, 0.0)  # a NaN/inf output is as wrong as orthogonal


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref - out) ** 2))
    if not np.isfinite(noise):
        return float("-inf")
    return float("inf") if noise == 0 else float(10 * np.log10(max(float(np.sum(ref ** 2)), 1e-300) / noise))


def _agreement(ref: np.ndarray, out: np.ndarray, rule) -> float:
    """Top-1 agreement: arg-max over the last axis at every position, or for a one-channel
    probability map, which side of the threshold each pixel falls on."""
    if rule == "argmax":
        return float(np.mean(ref.reshape(-1, ref.shape[-1]).argmax(1) == out.reshape(-1, out.shape[-1]).argmax(1)))
    return float(np.mean((ref > rule) == (out > rule)))


def _one_output(ref: np.ndarray, out: np.ndarray, rule) -> tuple[dict, np.ndarray]:
    """Per-output numbers, and each sample's cosine (NaN where float is silent)."""
    flat_ref = ref.reshape(len(ref), -1).astype(np.float64)
    flat_out = out.reshape(len(out), -1).astype(np.float64)
    norms = np.linalg.norm(flat_ref, axis=1)
    silent = (norms == 0) | (norms <= SILENT * float(np.median(norms)))
    cosine = np.where(silent, np.nan, _cosines(flat_ref, flat_out))
    entry = {"sqnr_db": _sqnr(flat_ref, flat_out), "silent": int(silent.sum()),
             "non_finite": int((~np.isfinite(flat_out)).any(axis=1).sum()),
             "cosine_mean": float(np.nanmean(cosine)) if (~silent).any() else None,
             "cosine_worst": float(np.nanmin(cosine)) if (~silent).any() else None}
    if silent.any():
        error = float(np.sum((flat_ref[silent] - flat_out[silent]) ** 2))
        entry["silent_relative_error"] = error / max(float(np.sum(flat_ref[silent] ** 2)), 1e-300)
    if rule is not None:
        entry["top1_agreement"] = _agreement(ref, out, rule)
    return entry, cosine


def fidelity(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], classifiers: dict) -> dict:
    """The metric: ``metric`` = mean over samples of the sample's worst output cosine; also the
    worst sample, per-output SQNR/cosines/silent counts, and top-1 agreement for classifiers."""
    per_output, columns = {}, []
    for name, ref in reference.items():
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        out = outputs[name]
        if out.shape != ref.shape:
            raise ValueError(f"output {name!r} has shape {out.shape}; float gives {ref.shape}")
        per_output[name], cosine = _one_output(ref, out, classifiers.get(name))
        columns.append(cosine)
    matrix = np.stack(columns, axis=1)
    counted = ~np.isnan(matrix).all(axis=1)
    worst = np.nanmin(np.where(np.isnan(matrix), np.inf, matrix), axis=1)[counted]
    agreements = [v["top1_agreement"] for v in per_output.values() if "top1_agreement" in v]
    return {"metric": float(worst.mean()) if worst.size else None,
            "cosine_worst": float(worst.min()) if worst.size else None,
            "sqnr_db": min(v["sqnr_db"] for v in per_output.values()),
            "agreement": min(agreements) if agreements else None,
            "silent_samples": int((~counted).sum()), "samples": len(matrix), "outputs": per_output}
