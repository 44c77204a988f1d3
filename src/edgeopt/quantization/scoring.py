"""How close a candidate model is to float on the check samples: run it, score it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from ..fidelity import output_fidelity


@dataclass(frozen=True)
class Score:
    """How close a candidate is to float on the check samples.

    ``error``: the worst output's squared error over its signal energy, pooled over the samples
    (what the search minimises). ``worst_cosine`` (what the target is checked against): the lower
    of two cosines, so that the target holds for the data as a whole and for a typical input:
    the worst output's cosine with all check samples taken as one vector, and the mean over
    samples of each sample's worst output cosine. Samples whose float output is (nearly) silent,
    a detector finding nothing, are left out of the per-sample cosines: a cosine against nothing
    measures noise and would steer the search. ``worst_sample_cosine`` (lowest per-sample cosine)
    and ``mean_sample_cosine`` are reported.
    """

    error: float
    worst_cosine: float
    worst_sample_cosine: float = 1.0
    silent_samples: int = 0
    mean_sample_cosine: float = 1.0

    def to_dict(self) -> dict:
        return {"error": round(self.error, 8), "worst_output_cosine": round(self.worst_cosine, 6),
                "mean_sample_cosine": round(self.mean_sample_cosine, 6),
                "worst_sample_cosine": round(self.worst_sample_cosine, 6), "silent_samples": self.silent_samples}


def comparable(error: float) -> float:
    """An error to rank by: NaN and infinities (unusable outputs) rank last."""
    return error if math.isfinite(error) else math.inf


def score_outputs(reference: list[list], outputs: list[list]) -> Score:
    per_output = output_fidelity(reference, outputs)
    if not per_output:
        return Score(0.0, 1.0)
    if not all(math.isfinite(o["pooled_error"]) for o in per_output):
        return Score(math.inf, 0.0, 0.0, mean_sample_cosine=0.0)  # NaN or inf outputs: unusable
    mean_sample = _mean_worst_sample_cosine([o["sample_cosines"] for o in per_output])
    pooled = min(o["pooled_cosine"] for o in per_output)
    return Score(max(o["pooled_error"] for o in per_output), min(pooled, mean_sample),
                 min(o["worst_cosine"] for o in per_output), max(o["silent"] for o in per_output), mean_sample)


def _mean_worst_sample_cosine(columns: list[np.ndarray]) -> float:
    """Mean over samples of the sample's lowest cosine over the outputs (silent entries, NaN, left
    out); outputs with different sample counts are averaged one by one and the lowest taken."""
    if len({len(column) for column in columns}) > 1:
        return min(float(np.nanmean(column)) if np.isfinite(column).any() else 1.0 for column in columns)
    matrix = np.stack(columns, axis=1)
    counted = np.isfinite(matrix).any(axis=1)
    if not counted.any():
        return 1.0
    return float(np.nanmin(matrix[counted], axis=1).mean())


def run_outputs(model: onnx.ModelProto, feeds: list[dict], io_params: dict | None = None) -> list[list]:
    """Float outputs of ``model`` on each feed (integer-only models encode and decode through
    ``io_params``)."""
    from ..runtimes.onnxruntime import make_session

    return run_session(make_session(model), feeds, io_params)


def run_session(session, feeds: list[dict], io_params: dict | None = None) -> list[list]:
    """:func:`run_outputs` on an open session."""
    from ..runtimes.onnxruntime import decode_outputs, encode_feed, run_checked

    names = [o.name for o in session.get_outputs()]
    outputs = []
    for feed in feeds:
        feed = encode_feed(feed, io_params) if io_params else feed
        result = run_checked(session, None, feed, "calibration data")
        outputs.append(decode_outputs(result, names, io_params) if io_params else result)
    return outputs
