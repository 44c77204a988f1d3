"""How close an optimized model's outputs are to the float model's: numpy only."""

from __future__ import annotations

import numpy as np


def _cosines(dot: np.ndarray, ref_energy: np.ndarray, out_energy: np.ndarray) -> np.ndarray:
    """Cosines from sums of products; two all-zero vectors count as identical (1.0), one zero and
    one not as 0.0."""
    norms = np.sqrt(ref_energy) * np.sqrt(out_energy)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where((ref_energy == 0) & (out_energy == 0), 1.0, cosine)


def _row_sums(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row of two [rows, values] float64 arrays: sum of ref*out, ref^2, out^2, (ref-out)^2,
    each in one pass without temporaries (scoring a candidate runs this over every check output)."""
    diff = ref - out
    return (np.einsum("ij,ij->i", ref, out), np.einsum("ij,ij->i", ref, ref),
            np.einsum("ij,ij->i", out, out), np.einsum("ij,ij->i", diff, diff))


def cosine_per_sample(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened output (axis 0 = samples).

    Two all-zero vectors count as identical (1.0); one zero and one not as 0.0.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    dot, ref_energy, out_energy, _ = _row_sums(ref, out)
    return _cosines(dot, ref_energy, out_energy)


def sqnr_db(reference: np.ndarray, output: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB over all values (inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(output, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(signal, 1e-300) / noise))


def top1_agreement(reference: np.ndarray, output: np.ndarray) -> float:
    """Share of samples whose arg-max over the last axis is the same."""
    ref = np.asarray(reference).reshape(len(reference), -1)
    out = np.asarray(output).reshape(len(output), -1)
    return float(np.mean(ref.argmax(axis=1) == out.argmax(axis=1)))


#: A sample whose float output has less than this share of the output's mean energy per sample is
#: "silent" (a detector that finds nothing, a mask of zeros): its cosine measures noise against
#: nothing, so it is left out of the worst-sample cosine (the pooled error still counts it).
SILENT_ENERGY = 1e-6


def output_fidelity(reference_outputs: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> list[dict]:
    """Per float output, over all batches: ``pooled_error`` (squared error energy over signal
    energy, pooled over samples), ``pooled_cosine`` (the cosine of all samples' values taken as
    one vector), ``worst_cosine`` (lowest per-sample cosine among the samples that are not
    silent), ``silent`` (how many samples were left out of it) and ``sample_cosines`` (each
    sample's cosine, NaN where silent)."""
    scores = []
    for index in range(len(reference_outputs[0]) if reference_outputs else 0):
        sums = []
        for ref_batch, out_batch in zip(reference_outputs, outputs):
            ref, out = np.asarray(ref_batch[index]), np.asarray(out_batch[index])
            if not np.issubdtype(ref.dtype, np.floating):
                break
            rows = len(ref) if ref.ndim > 1 else 1
            sums.append(_row_sums(ref.astype(np.float64).reshape(rows, -1),
                                  np.asarray(out, dtype=np.float64).reshape(rows, -1)))
        else:
            if not sums:
                continue
            dot, energy, out_energy, error = (np.concatenate(column) for column in zip(*sums))
            audible = energy > SILENT_ENERGY * max(float(energy.mean()), 1e-300)
            cosine = _cosines(dot[audible], energy[audible], out_energy[audible]) if audible.any() else np.ones(1)
            per_sample = np.full(len(energy), np.nan)
            per_sample[audible] = cosine[:int(audible.sum())]
            pooled = _cosines(np.array([dot.sum()]), np.array([energy.sum()]), np.array([out_energy.sum()]))[0]
            scores.append({"pooled_error": float(error.sum() / max(float(energy.sum()), 1e-30)),
                           "pooled_cosine": float(pooled), "worst_cosine": float(cosine.min()),
                           "silent": int(np.sum(~audible)), "sample_cosines": per_sample})
    return scores
