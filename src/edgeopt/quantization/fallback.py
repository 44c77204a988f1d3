"""Where the int8 error comes from, and which tensors stay float. Decides; edits nothing.

Both are measured, not estimated, through ``evaluate(keep_float) -> Score`` (in practice the
switched simulation, :mod:`.simulation`, so each variant costs one run, not one build):

* :func:`attribute`: quantize the tensors in graph order, a block at a time, on top of the ones
  before; the error each block adds is its share (per-layer error attribution). Blocks are
  contiguous stretches of the graph, so a cost spread over many layers still shows where it is.
* :func:`choose`: when the all-int8 model misses the target, the tensors of the costliest blocks
  are measured one by one (kept float alone), then kept float in order of that gain, each kept
  only if the model measured with it is better than without (the error is re-measured after
  every addition, so tensors that help only together with others, or not at all on top of the
  ones already kept, are skipped), until the target or the budget is reached. The budget keeps
  the speed-up: a model with half its tensors float runs at float speed. Blocks are measured
  tensor by tensor only when needed: costliest first, and the next one only while it added more
  error than the best tensor measured so far removes (a tensor rarely removes more than its
  block added), so a model that one tensor fixes costs one block's runs, not four.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from .scoring import Score

logger = logging.getLogger(__name__)

#: At most this many blocks in the attribution (each one run of the simulation).
ATTRIBUTION_BLOCKS = 24
#: The tensors of this many costliest blocks are measured one by one.
BLOCKS_REFINED = 4
#: Keep tensors float only if that closes at least this share of the gap to the target.
MIN_GAP_CLOSED = 0.25
# evaluate(keep_float) -> the model's Score with those tensors float
Evaluate = Callable[[frozenset], Score]


@dataclass
class FallbackDecision:
    keep_float: dict[str, str] = field(default_factory=dict)
    worst_cosine: float = 1.0
    steps: list[dict] = field(default_factory=list)
    #: [{"tensors": [...], "error_added": x}] in graph order (see :func:`attribute`)
    attribution: list[dict] = field(default_factory=list)


def _gain(before: float, after: float) -> float:
    """Error removed; when the all-int8 outputs are unusable (NaN, inf), any usable variant gains,
    and an unusable variant never does."""
    if not math.isfinite(after):
        return -math.inf
    if not math.isfinite(before):
        return 1.0
    return before - after


def _added(block: dict) -> float:
    """A block's added error for ranking; not finite (on top of an unusable model) ranks first."""
    value = block["error_added"]
    return value if math.isfinite(value) else math.inf


def simulated_target(target: float, simulated: Score, real: Score) -> float:
    """The target on the simulation, which scores on fewer samples and without the integer
    kernels' rounding: the real model's gap to float (1 - cosine) is taken as a fixed multiple of
    the simulated one, measured on the all-int8 model. A difference of cosines would not carry
    over from a model far off (PP-OCRv5's detector on minmax ranges: 0.303 simulated, 0.293 real)
    to one near the target."""
    real_gap, simulated_gap = 1.0 - real.worst_cosine, 1.0 - simulated.worst_cosine
    if not (math.isfinite(real_gap) and math.isfinite(simulated_gap)) or real_gap <= 0 or simulated_gap <= 0:
        return target
    return 1.0 - (1.0 - target) * simulated_gap / real_gap


def blocks_of(candidates: list[str], count: int = ATTRIBUTION_BLOCKS) -> list[list[str]]:
    size = max(1, math.ceil(len(candidates) / count))
    return [candidates[start:start + size] for start in range(0, len(candidates), size)]


def attribute(candidates: list[str], evaluate: Evaluate, blocks: int = ATTRIBUTION_BLOCKS) -> list[dict]:
    """Error added by each block of tensors, quantized in graph order on top of the ones before."""
    attribution, previous = [], 0.0
    groups = blocks_of(candidates, blocks)
    for index, block in enumerate(groups):
        still_float = frozenset(name for later in groups[index + 1:] for name in later)
        error = evaluate(still_float).error
        attribution.append({"tensors": block, "error_added": error - previous})
        previous = error
    return attribution


def _best_first(blocks: list[dict], gain_of: Callable[[str], float]):
    """``(gain, tensor)`` in order of decreasing gain over the tensors of ``blocks`` (costliest
    first), measuring a block's tensors only when its added error exceeds the best gain still to
    be yielded."""
    heap: list[tuple[float, str]] = []
    pending = list(blocks)
    while heap or pending:
        while pending and (not heap or _added(pending[0]) > -heap[0][0]):
            for name in pending.pop(0)["tensors"]:
                heapq.heappush(heap, (-gain_of(name), name))
        gain, name = heapq.heappop(heap)
        yield -gain, name


def choose(candidates: list[str], evaluate: Evaluate, target: float, max_fraction: float) -> FallbackDecision:
    """Keep at most ``ceil(max_fraction * len(candidates))`` tensors float, re-measuring each."""
    base = evaluate(frozenset())
    decision = FallbackDecision(worst_cosine=base.worst_cosine,
                                steps=[{"kept_float": 0, "worst_cosine": round(base.worst_cosine, 6)}])
    if not candidates or base.worst_cosine >= target or max_fraction <= 0:
        return decision
    decision.attribution = attribute(candidates, evaluate)
    costly = sorted(decision.attribution, key=lambda block: -_added(block))[:BLOCKS_REFINED]
    gains = _best_first(costly, lambda name: _gain(base.error, evaluate(frozenset({name})).error))
    budget = max(1, math.ceil(max_fraction * len(candidates)))
    keep, current, reasons = frozenset(), base, {}
    for gain, name in gains:  # checked before the next is pulled: pulling may measure a block
        if gain <= 0:
            break
        trial = evaluate(keep | {name})
        decision.steps.append({"kept_float": len(keep) + 1, "tensor": name,
                               "worst_cosine": round(trial.worst_cosine, 6), "kept": trial.error < current.error})
        if trial.error < current.error:
            share = f"{100 * gain / max(base.error, 1e-30):.1f}%" if math.isfinite(base.error) else "from unusable"
            reasons[name] = (f"keeping it float alone cuts the output error by {share}; "
                             f"with the {len(keep)} kept before it, the error goes {current.error:.3g} -> "
                             f"{trial.error:.3g}")
            keep, current = keep | {name}, trial
        if len(keep) >= budget or current.worst_cosine >= target:
            break
    if current.worst_cosine - base.worst_cosine < MIN_GAP_CLOSED * (target - base.worst_cosine):
        # Float tensors cost speed; a change within the noise of the fidelity check is not worth it.
        keep, current = frozenset(), base
    decision.worst_cosine = current.worst_cosine
    decision.keep_float = {name: reasons[name] for name in sorted(keep)}
    logger.info("fallback: %d of %d tensors float, worst output cosine %.4f -> %.4f", len(keep), len(candidates),
                base.worst_cosine, current.worst_cosine)
    return decision
