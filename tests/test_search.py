"""The int8 search and the fallback as pure decisions, driven by a fake scorer (no model, no runtime)."""

from __future__ import annotations

import math

import pytest

from edgeopt.quantization import fallback, search
from edgeopt.quantization.candidates import Candidate
from edgeopt.quantization.scoring import Score


class FakeScorer:
    """Scores from a table keyed by what a candidate changes; counts the calls."""

    def __init__(self, table):
        self.table = table
        self.calls: list[Candidate] = []

    def __call__(self, candidate: Candidate) -> Score:
        self.calls.append(candidate)
        return self.table(candidate)


def test_lowest_error_method_wins():
    errors = {"percentile": 0.03, "mse": 0.01, "entropy": 0.02, "minmax": 0.05}
    scorer = FakeScorer(lambda c: Score(errors[c.method], 0.99))
    best, scores, screened = search.choose_ranges(Candidate(), ("all",), tuple(errors), scorer, target=0.97)
    assert best.method == "mse" and best.scope == "all" and screened == {}
    assert set(scores) == {f"all/{m}" for m in errors}


def test_a_later_scope_only_when_the_best_so_far_misses_the_target():
    def table(c):
        if c.scope == "all":
            return Score(0.08, 0.90 if c.method == "mse" else 0.85)
        return Score(0.01, 0.99)

    scorer = FakeScorer(table)
    best, scores, _ = search.choose_ranges(Candidate(), ("all", "matmul-inputs"), ("percentile", "mse"), scorer, 0.97)
    assert best.scope == "matmul-inputs" and len(scores) == 4
    met = FakeScorer(lambda c: Score(0.01 if c.scope == "all" else 0.001, 0.99))
    best, scores, _ = search.choose_ranges(Candidate(), ("all", "matmul-inputs"), ("percentile",), met, 0.97)
    assert best.scope == "all" and list(scores) == ["all/percentile"]


SCREENED = {"percentile": 0.010, "mse": 0.012, "entropy": 0.030, "minmax": 0.100}


def test_only_pairs_screened_close_to_the_best_are_scored_on_every_sample():
    full = {"percentile": 0.011, "mse": 0.009, "entropy": 0.001, "minmax": 0.001}
    screen = FakeScorer(lambda c: Score(SCREENED[c.method], 0.99))
    scorer = FakeScorer(lambda c: Score(full[c.method], 0.99))
    best, scores, screened = search.choose_ranges(Candidate(), ("all",), tuple(SCREENED), scorer, 0.97, screen)
    # mse is within SCREEN_MARGIN (1.5) of percentile's screened error; entropy and minmax are not
    # (their lower full errors are never seen: that is the screen's bet).
    assert [c.method for c in scorer.calls] == ["percentile", "mse"] and best.method == "mse"
    assert set(scores) == {"all/percentile", "all/mse"} and set(screened) == {f"all/{m}" for m in SCREENED}


def test_a_screen_the_full_check_contradicts_scores_everything():
    # percentile looked best on the first samples, but all samples hold outliers it clips.
    full = {"percentile": 0.50, "mse": 0.013, "entropy": 0.02, "minmax": 0.004}
    screen = FakeScorer(lambda c: Score(SCREENED[c.method], 0.99))
    scorer = FakeScorer(lambda c: Score(full[c.method], 0.99))
    best, scores, _ = search.choose_ranges(Candidate(), ("all",), tuple(SCREENED), scorer, 0.97, screen)
    assert best.method == "minmax" and set(scores) == {f"all/{m}" for m in SCREENED}


def test_unusable_screens_score_everything():
    screen = FakeScorer(lambda c: Score(math.inf, 0.0))
    scorer = FakeScorer(lambda c: Score({"percentile": 0.2, "mse": 0.1}[c.method], 0.9))
    best, scores, _ = search.choose_ranges(Candidate(), ("all",), ("percentile", "mse"), scorer, 0.97, screen)
    assert best.method == "mse" and len(scores) == 2


def test_refinements_are_kept_only_where_they_lower_the_error():
    errors = {(True, True): 0.020, (True, False): 0.015, (False, True): 0.030, (False, False): 0.025}
    scorer = FakeScorer(lambda c: Score(errors[(c.bias_correction, c.compensated_rounding)], 0.99))
    best, scores = search.choose_refinements(Candidate(), scorer)
    assert (best.bias_correction, best.compensated_rounding) == (True, False)
    assert len(scores) == 3  # bias correction off alone was worse: both off is not tried


def test_both_refinements_off_is_tried_when_each_alone_is_better_off():
    errors = {(True, True): 0.020, (True, False): 0.015, (False, True): 0.018, (False, False): 0.012}
    scorer = FakeScorer(lambda c: Score(errors[(c.bias_correction, c.compensated_rounding)], 0.99))
    best, scores = search.choose_refinements(Candidate(), scorer)
    assert (best.bias_correction, best.compensated_rounding) == (False, False)
    assert len(scores) == 4


def test_refinement_ties_keep_the_refinement_and_disabled_ones_are_not_tried():
    scorer = FakeScorer(lambda c: Score(0.01, 0.99))
    best, _ = search.choose_refinements(Candidate(), scorer)
    assert best.bias_correction and best.compensated_rounding
    scorer = FakeScorer(lambda c: Score(0.01, 0.99))
    best, scores = search.choose_refinements(Candidate(bias_correction=False, compensated_rounding=False), scorer)
    assert len(scores) == 1 and not best.bias_correction


def _keep_scorer(helpful: dict[str, float], base_error: float = 0.10):
    """Error drops by helpful[name] for each tensor kept float; cosine 1 - error / 2."""
    def table(keep: frozenset) -> Score:
        error = max(base_error - sum(helpful.get(name, 0.0) for name in keep), 0.0)
        return Score(error, 1.0 - error / 2)
    return table


def test_fallback_keeps_the_most_helpful_tensors_until_the_target():
    names = [f"t{i}" for i in range(20)]
    helpful = {"t3": 0.05, "t7": 0.03, "t11": 0.01}
    decision = fallback.choose(names, _keep_scorer(helpful), target=0.98, max_fraction=0.5)
    assert list(decision.keep_float) == ["t3", "t7"]  # 0.10 - 0.08 = 0.02 -> cosine 0.99
    assert decision.worst_cosine == pytest.approx(0.99)
    assert "cuts the output error by 50.0%" in decision.keep_float["t3"]


def test_fallback_respects_its_budget_and_skips_useless_changes():
    names = [f"t{i}" for i in range(10)]
    decision = fallback.choose(names, _keep_scorer({"t1": 0.05, "t2": 0.04}), target=0.999, max_fraction=0.1)
    assert list(decision.keep_float) == ["t1"]  # budget: 1 of 10
    useless = fallback.choose(names, _keep_scorer({"t1": 0.001}), target=0.999, max_fraction=0.5)
    assert useless.keep_float == {}  # closes less than a quarter of the gap: not worth the speed


def test_fallback_does_nothing_when_the_target_is_met():
    calls = []

    def table(keep):
        calls.append(keep)
        return Score(0.01, 0.995)

    decision = fallback.choose(["a", "b"], table, target=0.97, max_fraction=0.5)
    assert decision.keep_float == {} and calls == [frozenset()]


def test_attribution_gives_each_block_the_error_it_adds_on_top_of_the_ones_before():
    names = [f"t{i}" for i in range(8)]
    cost = {"t2": 0.04, "t5": 0.01}

    def table(keep: frozenset) -> Score:
        error = sum(c for name, c in cost.items() if name not in keep)
        return Score(error, 1.0 - error)

    attribution = fallback.attribute(names, table, blocks=4)
    assert [block["tensors"] for block in attribution] == [names[0:2], names[2:4], names[4:6], names[6:8]]
    assert [round(block["error_added"], 6) for block in attribution] == [0.0, 0.04, 0.01, 0.0]


def test_fallback_skips_a_tensor_that_does_not_help_on_top_of_those_kept():
    # t2 and t3 (one attribution block of two) fix the same problem: keeping either float alone
    # helps, keeping both helps no more; t5 fixes another.
    names = [f"t{i}" for i in range(48)]

    def table(keep: frozenset) -> Score:
        error = 0.10 - (0.06 if keep & {"t2", "t3"} else 0.0) - (0.03 if "t5" in keep else 0.0)
        return Score(error, 1.0 - error / 2)

    decision = fallback.choose(names, table, target=0.99, max_fraction=0.5)
    assert "t5" in decision.keep_float and len(set(decision.keep_float) & {"t2", "t3"}) == 1
    assert [step.get("kept") for step in decision.steps[1:]] == [True, False, True]


def test_fallback_measures_a_block_tensor_by_tensor_only_when_it_may_hold_a_better_tensor():
    # One tensor of the costliest block fixes the model: the other costly blocks are never
    # measured tensor by tensor (with 48 tensors in 24 blocks: base, 23 more attribution runs,
    # the block's 2 tensors; the trial of t3 alone is its measurement again).
    names = [f"t{i}" for i in range(48)]
    scorer = FakeScorer(_keep_scorer({"t3": 0.09, "t9": 0.004, "t20": 0.003, "t30": 0.002}))
    decision = fallback.choose(names, scorer, target=0.99, max_fraction=0.5)
    assert list(decision.keep_float) == ["t3"]
    assert len(set(scorer.calls)) == 1 + 23 + 2


def test_fallback_measures_the_next_block_once_the_first_holds_nothing_better():
    # Blocks [t2, t3] and [t8, t9] add 0.03 and 0.025: t2 is tried first; t8 only after the first
    # block has nothing left that could beat the second block's 0.025.
    names = [f"t{i}" for i in range(48)]
    decision = fallback.choose(names, _keep_scorer({"t2": 0.03, "t8": 0.025}), target=0.975, max_fraction=0.5)
    assert list(decision.keep_float) == ["t2", "t8"]
    assert [step["tensor"] for step in decision.steps[1:]] == ["t2", "t8"]


def test_fallback_recovers_an_unusable_model_and_ignores_unusable_variants():
    # inf error unless t5 is float: attribution gives inf and NaN added errors; variants that
    # stay unusable gain nothing, the one that makes the model usable is kept.
    names = [f"t{i}" for i in range(48)]

    def table(keep):
        return Score(0.01, 0.995) if "t5" in keep else Score(float("inf"), float("nan"))

    decision = fallback.choose(names, table, target=0.98, max_fraction=0.5)
    assert list(decision.keep_float) == ["t5"] and decision.worst_cosine == pytest.approx(0.995)


def test_the_simulated_target_scales_the_gap_to_float():
    simulated_target = fallback.simulated_target

    # simulated gap 0.6969, real 0.7066: a model far off moves the target by its ratio, not by the
    # difference of its cosines (which would ask 0.9897 of the simulation for 0.98)
    assert simulated_target(0.98, Score(0.87, 0.3031), Score(0.9, 0.2934)) == pytest.approx(1 - 0.02 * 0.6969 / 0.7066)
    assert simulated_target(0.98, Score(0.05, 0.975), Score(0.06, 0.97)) == pytest.approx(1 - 0.02 * 0.025 / 0.03)
    # unusable or perfect all-int8 models: the target as it is
    assert simulated_target(0.98, Score(math.inf, 0.0), Score(math.inf, math.nan)) == 0.98
    assert simulated_target(0.98, Score(0.0, 1.0), Score(0.0, 1.0)) == 0.98
