"""The fidelity score the int8 search minimises and checks its target against."""

import math

import numpy as np
import pytest

from edgeopt.quantization.scoring import score_outputs


def _noisy(rng, values, relative):
    return values + relative * np.linalg.norm(values, axis=1, keepdims=True) / math.sqrt(values.shape[1]) * \
        rng.standard_normal(values.shape)


def test_the_target_cosine_holds_for_a_typical_sample_not_only_for_the_loud_ones():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((8, 256))
    reference[0] *= 100.0  # one loud sample carries almost all the energy
    output = reference.copy()
    output[1:] = _noisy(rng, reference[1:], 1.0)  # the seven quiet ones: cosine about 0.71
    score = score_outputs([[reference]], [[output]])
    pooled = float(np.sum(reference * output) / np.linalg.norm(reference) / np.linalg.norm(output))
    assert pooled > 0.999
    assert score.mean_sample_cosine == pytest.approx((1 + 7 * 0.707) / 8, abs=0.03)
    assert score.worst_cosine == score.mean_sample_cosine  # the lower of the two is checked
    assert score.error < 1e-3  # the error stays pooled: loud samples weigh what they carry


def test_silent_samples_are_left_out_of_the_per_sample_cosines():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((4, 64))
    reference[3] = 0.0  # a detector that found nothing
    output = reference.copy()
    output[3] = rng.standard_normal(64)  # noise against nothing: no meaningful cosine
    score = score_outputs([[reference]], [[output]])
    assert score.silent_samples == 1
    assert score.mean_sample_cosine == pytest.approx(1.0)
    assert score.worst_sample_cosine == pytest.approx(1.0)


def test_each_sample_counts_its_worst_output():
    rng = np.random.default_rng(2)
    first, second = rng.standard_normal((4, 32)), rng.standard_normal((4, 32))
    first_out, second_out = first.copy(), second.copy()
    first_out[0] = -first[0]  # sample 0 is wrong on the first output only
    second_out[1] = -second[1]  # sample 1 on the second only
    score = score_outputs([[first, second]], [[first_out, second_out]])
    assert score.mean_sample_cosine == pytest.approx((-1 - 1 + 1 + 1) / 4)
    assert score.worst_sample_cosine == pytest.approx(-1.0)


def test_non_finite_outputs_are_unusable():
    reference = np.ones((2, 8))
    output = reference.copy()
    output[0, 0] = np.nan
    score = score_outputs([[reference]], [[output]])
    assert score.error == math.inf and score.worst_cosine == 0.0
