"""How close a candidate model is to float on the check samples: run it, score it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from ..fidelity import output_fidelity


@dataclass(frozen=True)
class Score:
    """How close a candidate is to float on the check samples, pooled over them per output.

    ``error``: the worst output's squared error over its signal energy (what the search
    minimises); ``worst_cosine``: the worst output's cosine with all check samples taken as one
    vector (what the target is checked against). Both stay meaningful when some samples' outputs
    are (nearly) silent, a detector finding nothing, where a per-sample cosine measures noise
    against nothing and would steer the search. ``worst_sample_cosine`` (lowest per-sample cosine,
    silent samples left out) is reported, not optimised.
    """

    error: float
    worst_cosine: float
    worst_sample_cosine: float = 1.0
    silent_samples: int = 0

    def to_dict(self) -> dict:
        return {"error": round(self.error, 8), "worst_output_cosine": round(self.worst_cosine, 6),
                "worst_sample_cosine": round(self.worst_sample_cosine, 6), "silent_samples": self.silent_samples}


def score_outputs(reference: list[list], outputs: list[list]) -> Score:
    per_output = output_fidelity(reference, outputs)
    if not per_output:
        return Score(0.0, 1.0)
    if not all(math.isfinite(o["pooled_error"]) for o in per_output):
        return Score(math.inf, 0.0, 0.0)  # NaN or inf outputs (a quantized variance of 0, say): unusable
    return Score(max(o["pooled_error"] for o in per_output), min(o["pooled_cosine"] for o in per_output),
                 min(o["worst_cosine"] for o in per_output), max(o["silent"] for o in per_output))


def run_outputs(model: onnx.ModelProto, feeds: list[dict], io_params: dict | None = None) -> list[list]:
    """Float outputs of ``model`` on each feed (integer-only models encode and decode through
    ``io_params``)."""
    from ..runtimes.onnxruntime import decode_outputs, encode_feed
    from ..runtimes.onnxruntime import make_session, run_checked

    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    outputs = []
    for feed in feeds:
        feed = encode_feed(feed, io_params) if io_params else feed
        result = run_checked(session, None, feed, "calibration data")
        outputs.append(decode_outputs(result, names, io_params) if io_params else result)
    return outputs
