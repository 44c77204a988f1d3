"""Which activations stay float when full int8 misses the fidelity target. Decides; edits nothing.

Sensitivity is measured, not estimated: each candidate tensor is kept float on its own and the
drop in output error is recorded (the analysis AIMET and NNCF call layer-wise sensitivity). The
most helpful tensors are then kept float one at a time until the target is met or the budget of
float tensors is spent, and the best configuration seen wins. A budget keeps the speed-up: a
model with half its tensors in float runs at float speed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from .scoring import Score

logger = logging.getLogger(__name__)

# Above this many candidates, scan groups of tensors first, then the tensors of the best groups.
GROUP_SCAN_ABOVE = 48
GROUPS = 16
GROUPS_REFINED = 3
# Keep tensors float only if that closes at least this share of the gap to the target.
MIN_GAP_CLOSED = 0.25
# evaluate(keep_float) -> the model's Score with those tensors float
Evaluate = Callable[[frozenset], Score]


@dataclass
class FallbackDecision:
    keep_float: dict[str, str] = field(default_factory=dict)
    worst_cosine: float = 1.0
    steps: list[dict] = field(default_factory=list)


def choose(candidates: list[str], evaluate: Evaluate, target: float, max_fraction: float) -> FallbackDecision:
    """Keep at most ``ceil(max_fraction * len(candidates))`` tensors float, most helpful first."""
    base = evaluate(frozenset())
    base_cosine, base_error = base.worst_cosine, base.error
    decision = FallbackDecision(worst_cosine=base_cosine,
                                steps=[{"kept_float": 0, "worst_cosine": round(base_cosine, 6)}])
    if base_cosine >= target or not candidates or max_fraction <= 0:
        return decision
    scanned = candidates
    if len(candidates) > GROUP_SCAN_ABOVE:
        # Large models: find the most sensitive stretches of the graph first (contiguous groups in
        # graph order), then measure their tensors one by one.
        groups = [candidates[start:start + math.ceil(len(candidates) / GROUPS)]
                  for start in range(0, len(candidates), math.ceil(len(candidates) / GROUPS))]
        group_gains = sorted(((base_error - evaluate(frozenset(group)).error, index)
                              for index, group in enumerate(groups)), reverse=True)
        scanned = [name for _, index in group_gains[:GROUPS_REFINED] for name in groups[index]]
    gains = []
    for name in scanned:
        alone = evaluate(frozenset({name}))
        gains.append((base_error - alone.error, alone.worst_cosine, name))
    gains.sort(key=lambda item: (-item[0], -item[1]))
    budget = max(1, math.ceil(max_fraction * len(candidates)))
    keep: set[str] = set()
    best = (base_cosine, frozenset())
    reasons = {}
    for gain, alone, name in gains[:budget]:
        if gain <= 0:
            break
        keep.add(name)
        reasons[name] = (f"keeping it float alone cuts the output error by {100 * gain / max(base_error, 1e-30):.1f}% "
                         f"(worst cosine {alone:.4f} vs {base_cosine:.4f} all-int8)")
        cosine = evaluate(frozenset(keep)).worst_cosine
        decision.steps.append({"kept_float": len(keep), "worst_cosine": round(cosine, 6)})
        if cosine > best[0]:
            best = (cosine, frozenset(keep))
        if cosine >= target:
            break
    if best[0] - base_cosine < MIN_GAP_CLOSED * (target - base_cosine):
        # Float tensors cost speed; a change within the noise of the fidelity check is not worth it.
        best = (base_cosine, frozenset())
    decision.worst_cosine = best[0]
    decision.keep_float = {name: reasons[name] for name in sorted(best[1])}
    logger.info("fallback: %d of %d tensors float, worst cosine %.4f -> %.4f", len(best[1]), len(candidates),
                base_cosine, best[0])
    return decision
