"""The int8 search: which candidate to build. Pure decisions over a ``score(candidate)`` function.

1. :func:`choose_ranges`: every (scope, calibration method) pair, a later scope only when the best
   so far misses the target; the lowest error wins (no one method wins on every model: see
   benchmarks/READING.md).
2. :func:`choose_refinements`: compensated rounding and bias correction are estimates from
   calibration statistics; each is kept only where it measurably lowers the error.
3. The fallback (:mod:`.fallback`) then decides which tensors stay float.
"""

from __future__ import annotations

import logging
from typing import Callable

from .candidates import Candidate
from .scoring import Score

logger = logging.getLogger(__name__)

Scorer = Callable[[Candidate], Score]


def choose_ranges(base: Candidate, scopes: tuple[str, ...], methods: tuple[str, ...], score: Scorer,
                  target: float) -> tuple[Candidate, dict[str, Score]]:
    """The (scope, method) with the lowest error; returns it and every pair's score by label."""
    scores: dict[str, Score] = {}
    best: Candidate | None = None
    for scope in scopes:
        if best is not None and scores[best.label()].worst_cosine >= target:
            break
        for method in methods:
            candidate = base.but(scope=scope, method=method)
            scores[candidate.label()] = score(candidate)
            if best is None or scores[candidate.label()].error < scores[best.label()].error:
                best = candidate
    if best is None:
        raise ValueError("choose_ranges needs at least one scope and one method")
    logger.info("relative output error by scope/method: %s; kept %s",
                {label: round(s.error, 6) for label, s in scores.items()}, best.label())
    return best, scores


def choose_refinements(base: Candidate, score: Scorer) -> tuple[Candidate, dict[str, Score]]:
    """Bias correction and compensated rounding, each on only if ``base`` has it and it lowers the
    error; ties keep it on (it was measured no worse). Each is first turned off alone; both off is
    tried only when each alone was better off (a build saved on most models)."""
    options = [(bias, compensated) for bias in dict.fromkeys((base.bias_correction, False))
               for compensated in dict.fromkeys((base.compensated_rounding, False))]
    first = (base.bias_correction, base.compensated_rounding)
    both_off = (False, False)
    scores = {option: score(base.but(bias_correction=option[0], compensated_rounding=option[1]))
              for option in options if option != both_off or option == first}
    singles = [option for option in scores if option != first]
    if both_off in options and both_off not in scores and \
            all(scores[option].error < scores[first].error for option in singles):
        scores[both_off] = score(base.but(bias_correction=False, compensated_rounding=False))
    bias, compensated = min(scores, key=lambda o: (scores[o].error, -o[1], -o[0]))
    logger.info("relative output error by (bias correction, compensated rounding): %s; kept %s",
                {f"{b}/{c}": round(s.error, 6) for (b, c), s in scores.items()}, (bias, compensated))
    return (base.but(bias_correction=bias, compensated_rounding=compensated),
            {f"bias_correction={b}/compensated={c}": s for (b, c), s in scores.items()})
