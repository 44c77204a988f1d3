"""The int8 search: which candidate to build. Pure decisions over a ``score(candidate)`` function.

1. :func:`choose_ranges`: every (scope, calibration method) pair, a later scope only when the best
   so far misses the target; the lowest error wins (no one method wins on every model: see
   benchmarks/READING.md). Pairs are screened on a few check samples first; only those within
   SCREEN_MARGIN of the best screened error are scored on all of them, unless the screen proves
   unrepresentative (a finalist's error on all check samples far from its screened one).
2. :func:`choose_refinements`: compensated rounding and bias correction are estimates from
   calibration statistics; each is kept only where it measurably lowers the error.
3. The fallback (:mod:`.fallback`) then decides which tensors stay float.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from .candidates import Candidate
from .scoring import Score, comparable

logger = logging.getLogger(__name__)

Scorer = Callable[[Candidate], Score]


#: Screened pairs whose error is at most this multiple of the lowest screened one are scored on
#: every check sample (closest pairs seen: MiniLM's mse, minmax and entropy, 1.00 : 1.03 : 1.08).
SCREEN_MARGIN = 1.5


def choose_ranges(base: Candidate, scopes: tuple[str, ...], methods: tuple[str, ...], score: Scorer,
                  target: float, screen: Scorer | None = None
                  ) -> tuple[Candidate, dict[str, Score], dict[str, Score]]:
    """The (scope, method) with the lowest error; returns it, the scores of the pairs scored on
    all check samples, and the screening scores (empty without ``screen``) by label."""
    scores: dict[str, Score] = {}
    screened: dict[str, Score] = {}
    best: Candidate | None = None
    for scope in scopes:
        if best is not None and scores[best.label()].worst_cosine >= target:
            break
        candidates = [base.but(scope=scope, method=method) for method in methods]
        finalists = _finalists(candidates, screen, screened)
        for candidate in finalists:
            scores[candidate.label()] = score(candidate)
        if not _screen_held(finalists, scores, screened):
            for candidate in candidates:
                if candidate.label() not in scores:
                    scores[candidate.label()] = score(candidate)
        for candidate in candidates:
            if candidate.label() in scores and (best is None or scores[candidate.label()].error <
                                                scores[best.label()].error):
                best = candidate
    if best is None:
        raise ValueError("choose_ranges needs at least one scope and one method")
    logger.info("relative output error by scope/method: %s; kept %s (screened: %s)",
                {label: round(s.error, 6) for label, s in scores.items()}, best.label(),
                {label: round(s.error, 6) for label, s in screened.items()})
    return best, scores, screened


def _screen_held(finalists: list[Candidate], scores: dict[str, Score], screened: dict[str, Score]) -> bool:
    """Whether the screening samples spoke for all check samples: every finalist's error on all
    of them within SCREEN_MARGIN of its screened error. Where they did not (rare outliers the
    first samples miss), every candidate is scored on all check samples."""
    for candidate in finalists:
        label = candidate.label()
        if label not in screened:
            continue
        full, first = scores[label].error, screened[label].error
        if not (math.isfinite(full) and math.isfinite(first)) or \
                not (first / SCREEN_MARGIN <= full <= first * SCREEN_MARGIN):
            return False
    return True


def _finalists(candidates: list[Candidate], screen: Scorer | None, screened: dict[str, Score]) -> list[Candidate]:
    """The candidates worth scoring on every check sample (all of them without ``screen``)."""
    if screen is None or len(candidates) == 1:
        return candidates
    errors = {}
    for candidate in candidates:
        screened[candidate.label()] = screen(candidate)
        errors[candidate] = comparable(screened[candidate.label()].error)
    lowest = min(errors.values())
    if not math.isfinite(lowest):
        return candidates
    return [candidate for candidate in candidates if errors[candidate] <= SCREEN_MARGIN * lowest]


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
