"""The study's statistics against hand computations: mean ± std, paired differences with a 95% t interval
over seeds, and the base's improvement over its last doubling of tokens."""

from __future__ import annotations

import math

import pytest

from kiwi.study.stats import last_doubling_improvement, paired_diff, summarize, t975


def test_paired_diff_matches_a_hand_computation():
    # seed -> final ppl; the variant is 1%, 2% and 3% below its control of the same seed
    control = {1: 100.0, 2: 200.0, 3: 50.0}
    variant = {1: 99.0, 2: 196.0, 3: 48.5}
    d = paired_diff(variant, control)
    # by hand: diffs -1, -2, -3 (%); mean -2; sd 1; t_{0.975,2} = 4.303; half = 4.303 / sqrt(3) = 2.4843
    assert d.n == 3 and d.seeds == (1, 2, 3)
    assert d.mean == pytest.approx(-2.0)
    assert d.std == pytest.approx(1.0)
    assert d.low == pytest.approx(-2.0 - 4.303 / math.sqrt(3))
    assert d.high == pytest.approx(-2.0 + 4.303 / math.sqrt(3))
    assert not d.excludes_zero  # [-4.48, +0.48]


def test_a_consistent_difference_excludes_zero_and_pairs_only_common_seeds():
    control = {1: 100.0, 2: 100.0, 3: 100.0, 4: 100.0}
    variant = {1: 95.0, 2: 96.0, 3: 95.5, 9: 10.0}  # seed 9 has no control, seed 4 no variant
    d = paired_diff(variant, control)
    assert d.seeds == (1, 2, 3) and d.mean == pytest.approx(-4.5)
    half = 4.303 * 0.5 / math.sqrt(3)  # sd of (-5, -4, -4.5) is 0.5
    assert (d.low, d.high) == (pytest.approx(-4.5 - half), pytest.approx(-4.5 + half))
    assert d.excludes_zero


def test_one_pair_has_no_interval_and_no_pair_is_none():
    d = paired_diff({1: 90.0}, {1: 100.0})
    assert d.mean == pytest.approx(-10.0) and d.low is None and not d.excludes_zero
    assert paired_diff({1: 90.0}, {2: 100.0}) is None


def test_summarize_and_t_quantiles():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean) == (4, 2.5) and s.std == pytest.approx(math.sqrt(5 / 3))
    assert summarize([7.0]).std is None
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042 and t975(500) == 1.960
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t975(0)


def test_last_doubling_improvement_interpolates_in_log_tokens():
    curve = [(0, 1000.0), (100, 200.0), (400, 120.0), (800, 110.0)]
    half, p_half, imp = last_doubling_improvement(curve)
    assert half == 400 and p_half == pytest.approx(120.0)
    assert imp == pytest.approx(100 * (1 - 110 / 120))
    # T/2 = 300 between 100 and 400: geometric interpolation, w = log(3)/log(4)
    half, p_half, _ = last_doubling_improvement([(100, 200.0), (400, 120.0), (600, 115.0)])
    w = math.log(3) / math.log(4)
    assert half == 300 and p_half == pytest.approx(math.exp((1 - w) * math.log(200) + w * math.log(120)))
    assert last_doubling_improvement([(0, 5.0), (10, 4.0)]) is None  # no point at or before T/2 > 0
