"""kiwi.study.fit and kiwi.study.trend on synthetic data with a known answer: parameters recovered within a
tolerance, a crossover and an extrapolation whose intervals cover the truth, and the regime sweep's pairing
(a setting meets only its own regime's and seed's control)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kiwi.study import fit
from kiwi.study.trend import benefit, paired_arms, trend, trends, write_trends
from tests.study.test_gather_tables import _job

REGIMES = (16.0, 64.0, 256.0, 1024.0, 8192.0)


def test_log_linear_recovers_its_parameters_and_crossover():
    x = np.asarray(REGIMES)
    y = 3.0 - 0.5 * np.log(x)
    line = fit.fit_log_linear(x, y)
    assert abs(line.a - 3.0) < 1e-9 and abs(line.b + 0.5) < 1e-9
    assert line.zero == pytest.approx(math.exp(6.0), rel=1e-9)
    # a crossing either way, with its direction: falling through zero stops paying, rising through it starts
    falls = fit.first_crossing(fit.LogLinear(3.0, -0.5), 16.0, 1e6)
    assert falls.direction == fit.STOPS and falls.x == pytest.approx(math.exp(6.0), rel=1e-9) and falls.paying
    rises = fit.first_crossing(fit.LogLinear(-3.0, 0.5), 16.0, 1e6)
    assert rises.direction == fit.STARTS and rises.x == pytest.approx(math.exp(6.0), rel=1e-9) and not rises.paying
    assert fit.first_crossing(fit.LogLinear(1.0, 0.2), 16.0, 1e6) == fit.Crossing(None, None, True)
    assert fit.first_crossing(fit.LogLinear(-3.0, 0.2), 16.0, 1e3) == fit.Crossing(None, None, False)


def test_the_measured_crossing_joins_the_regimes_in_log_x():
    xs, ys = [16.0, 64.0, 256.0, 1024.0, 8192.0], [-12.0, -6.0, -1.0, -0.5, 1.0]
    c = fit.first_crossing(fit.interpolated(xs, ys), 16.0, 8192.0)
    # zero a third of the way from 1024 to 8192 in ln x
    assert c.direction == fit.STARTS and c.x == pytest.approx(1024.0 * 8.0 ** (1 / 3), rel=1e-9)
    down = fit.first_crossing(fit.interpolated(xs, [-y for y in ys]), 16.0, 8192.0)
    assert down.direction == fit.STOPS and down.x == pytest.approx(c.x, rel=1e-9)


def test_power_law_recovers_floor_scale_and_exponent():
    x = np.geomspace(8, 16384, 8)
    truth = fit.PowerLaw(E=2.1, C=4.0, beta=0.45)
    got = fit.fit_power_law(x, truth(x))
    assert abs(got.E - 2.1) < 1e-4 and abs(got.C / 4.0 - 1) < 1e-3
    assert got.beta == pytest.approx(0.45, rel=1e-3)
    noisy = truth(x) + np.random.default_rng(0).normal(0, 0.002, len(x))
    got = fit.fit_power_law(x, noisy, [0.002] * len(x))
    assert abs(got.beta - 0.45) < 0.05 and abs(got.E - 2.1) < 0.03
    assert 0.1 < fit.chi2_dof(got, x, noisy, [0.002] * len(x), 3) < 4  # fits to within its noise
    assert fit.chi2_dof(fit.LogLinear(0.0, 0.0), x, noisy, [0.002] * len(x), 2) > 100  # a wrong form does not


def test_liew_kato_curves_meet_either_way():
    from kiwi.study.trend import _meet

    variant, control = fit.PowerLaw(2.0, 3.0, 0.5), fit.PowerLaw(1.9, 4.0, 0.5)  # variant wins early, loses late
    c = _meet(variant, control, 1.0, 1e6)
    assert variant(c.x) == pytest.approx(control(c.x), abs=1e-9)  # 0.1 = 1 / sqrt(x): x = 100
    assert c.x == pytest.approx(100.0, rel=1e-6) and c.direction == fit.STOPS
    # worse at the first regime and better later: where it starts paying, at the same x
    swapped = _meet(control, variant, 1.0, 1e6)
    assert swapped.direction == fit.STARTS and swapped.x == pytest.approx(100.0, rel=1e-6)
    assert _meet(fit.PowerLaw(1.0, 3.0, 0.5), control, 1.0, 1e6) == fit.Crossing(None, None, True)


def test_a_crossing_interval_keeps_resamples_that_go_the_estimates_way():
    est = fit.Crossing(100.0, fit.STARTS, False)
    draws = ([fit.Crossing(90.0, fit.STARTS, False)] * 45 + [fit.Crossing(110.0, fit.STARTS, False)] * 45
             + [fit.Crossing(None, None, False)] * 5 + [fit.Crossing(None, None, True)] * 5)
    i = fit.crossing_interval(est, draws)
    # never paying in range: not yet started (+inf); paying at the first regime: started before it
    assert (i.low, i.high, i.direction, i.undefined) == (fit.BEFORE_FIRST, math.inf, fit.STARTS, 0.0)
    other = fit.crossing_interval(est, [fit.Crossing(90.0, fit.STARTS, False)] * 90
                                  + [fit.Crossing(50.0, fit.STOPS, True)] * 10)
    assert other.undefined == pytest.approx(0.1) and other.low is None  # too many the other way to bound
    none = fit.crossing_interval(fit.Crossing(None, None, True), [fit.Crossing(5.0, fit.STOPS, True)] * 3
                                 + [fit.Crossing(None, None, True)])
    assert none.estimate is None and none.paying and none.undefined == pytest.approx(0.75)


def test_bad_fit_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="at least 2 distinct x"):
        fit.fit_log_linear([5.0, 5.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="x must be positive and every value finite"):
        fit.fit_log_linear([1.0, 2.0], [1.0, math.nan])
    with pytest.raises(ValueError, match="needs at least 2"):
        fit.mean_and_se({16.0: {1: 0.3}})


def test_percentile_interval_counts_a_missing_crossover_as_past_every_finite_one():
    draws = [10.0] * 90 + [None] * 10
    closed = fit.percentile_interval(10.0, draws, open_high=True)
    assert closed.low == 10.0 and closed.high == math.inf and closed.undefined == pytest.approx(0.1)
    assert fit.percentile_interval(10.0, draws).low is None  # too many undefined draws to bound without inf


def _study(root, truth, noise: float, seeds=(1, 2, 3, 4, 5, 6, 7, 8), rng_seed=0, lr: float = 1e-3):
    """One sweep folder per regime and seed, as train.py writes them: control_flops at ppl c, interleave_id
    at c (1 - benefit%) with ``truth(x)`` the benefit in %, plus seed noise shared by the pair (the data
    order) and a little of its own."""
    rng = np.random.default_rng(rng_seed)
    dirs = []
    for x in REGIMES:
        for s in seeds:
            d = root / f"tpp{x:g}" / f"seed{s}"
            shared, own = rng.normal(0, 0.02), rng.normal(0, noise)
            control = 50.0 * (1 + shared)
            variant = control * (1 - (truth(x) + own) / 100)
            base = {"study": {"base_tokens_per_param": x}, "model": {"base": f"/bases/tpp{x:g}"}}
            _job(d, 0, "none", False, lr, 60.0, control, tokens=6144, match_flops=6, budget_tokens=4096, seed=s,
                 extra=base)
            _job(d, 1, "interleave", True, lr, 60.0, variant, seed=s, extra=base)
            dirs.append(d)
    return dirs


def test_the_trend_recovers_a_known_benefit_law_and_its_crossover(tmp_path):
    from kiwi.study.jobs import load_jobs

    def truth(x):
        return 4.0 - 0.8 * math.log(x)  # % better than the equal-FLOPs control; zero at e^5 = 148.4 tokens/param

    jobs = [j for d in _study(tmp_path, truth, noise=0.05) for j in load_jobs(d)[0]]
    (arms,) = paired_arms(jobs)
    assert sorted(arms.variant_ppl) == list(REGIMES) and all(len(s) == 8 for s in arms.variant_ppl.values())
    t = trend(arms, "pct", n_boot=400)
    assert abs(t.line.a - 4.0) < 0.1 and abs(t.line.b + 0.8) < 0.02
    assert t.crossover.low < math.exp(5.0) < t.crossover.high and t.crossover.direction == fit.STOPS
    assert t.crossover.high / t.crossover.low < 1.5  # 8 seeds at this noise decide it
    _near(t.measured, fit.STOPS, math.exp(5.0))
    at = truth(36_000)
    assert t.at_target.low < at < t.at_target.high
    nats = trend(arms, "nats", n_boot=50)
    assert nats.line.b < 0 and nats.crossover.estimate == pytest.approx(math.exp(5.0), rel=0.1)
    files = write_trends([t, nats], tmp_path / "out")
    assert files["benefit_plot"].stat().st_size > 0 and "crossover" in files["trend_csv"].read_text()


def test_a_benefit_that_rises_through_zero_is_where_up_scaling_starts_paying(tmp_path):
    """Found in study v3: every identity setting's benefit rose with training (b > 0), and the trend table
    printed its crossover as "before the first regime" (trend.csv: 0.0) under "stops paying past x*"."""
    from kiwi.study.jobs import load_jobs
    from kiwi.study.trend import trend_markdown, trend_row

    def truth(x):
        return -4.0 + 0.8 * math.log(x)  # worse than equal FLOPs early, better from e^5 = 148.4 tokens/param on

    jobs = [j for d in _study(tmp_path, truth, noise=0.05) for j in load_jobs(d)[0]]
    (arms,) = paired_arms(jobs)
    t = trend(arms, "pct", n_boot=400)
    row = trend_row(t)
    assert row["crossover"] == pytest.approx(math.exp(5.0), rel=0.1)
    assert row["crossover_direction"] == fit.STARTS and row["crossover_low"] < math.exp(5.0) < row["crossover_high"]
    _near(t.measured, fit.STARTS, math.exp(5.0))
    md = trend_markdown([t])
    assert "starts paying at 1" in md and "before the first regime" not in md


def _near(i, direction: str, x: float):
    """A measured crossing from two regimes' means: within 5% of the truth, its interval around the estimate
    and under 10% wide (it is over seeds only, so a single draw need not cover the truth)."""
    assert i.direction == direction and i.estimate == pytest.approx(x, rel=0.05)
    assert i.low <= i.estimate <= i.high and i.high / i.low < 1.1


def test_each_setting_pairs_with_its_own_regimes_and_seeds_control(tmp_path):
    from kiwi.study.jobs import load_jobs

    jobs = [j for d in _study(tmp_path, lambda x: 1.0, noise=0.0) for j in load_jobs(d)[0]]
    (arms,) = paired_arms(jobs)
    for x in REGIMES:
        for s, v in arms.variant_ppl[x].items():
            # the variant was built as its own control x 0.99: any other pairing would show
            assert benefit(v, arms.control_ppl[x][s], "pct") == pytest.approx(1.0, abs=1e-9)


def test_a_diverged_seed_leaves_its_regime_out_and_says_so(tmp_path):
    from kiwi.study.jobs import load_jobs

    dirs = _study(tmp_path, lambda x: 1.0 - 0.1 * math.log(x), noise=0.05)
    broken = next(d for d in dirs if d.parent.name == "tpp256" and d.name == "seed3")
    report = broken / "1" / "perplexity_report.json"
    report.write_text(report.read_text().replace('"val_ppl_after": ', '"val_ppl_after": NaN, "_was": '))
    jobs = [j for d in dirs for j in load_jobs(d)[0]]
    (t, _), unfitted = trends(jobs, n_boot=20)
    assert unfitted == []
    assert 256.0 not in t.xs and any("256" in e and "diverged" in e for e in t.excluded)


def test_fewer_than_three_regimes_is_not_fitted(tmp_path):
    from kiwi.study.jobs import load_jobs

    dirs = [d for d in _study(tmp_path, lambda x: 1.0, noise=0.05) if d.parent.name in ("tpp16", "tpp64")]
    fitted, unfitted = trends([j for d in dirs for j in load_jobs(d)[0]], n_boot=10)
    assert fitted == [] and len(unfitted) == 1 and unfitted[0].startswith("interleave_id: 2 usable regime(s)")


def test_the_gather_of_a_regime_sweep_writes_the_fit_table_and_plot(tmp_path):
    from kiwi.study.gather import gather

    g = gather(_study(tmp_path, lambda x: 2.0 - 0.4 * math.log(x), noise=0.1), tmp_path / "out")
    md = g.files["markdown"].read_text()
    assert "## Across regimes" in md and "line crosses zero" in md
    assert "![benefit vs tokens/param](benefit.png)" in md
    assert {t.unit for t in g.trends} == {"pct", "nats"} and g.files["benefit_plot"].exists()
    rows = g.files["trend_csv"].read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("variant,unit,regimes")


def test_the_lever_search_reads_each_budgets_gather_and_names_the_headline(tmp_path):
    """Two gathers at one regime (1x and 0.5x the budget): one table, and the headline is the interval
    against the equal-FLOPs control that lies below zero, or else the closest one."""
    from kiwi.study.gather import gather
    from kiwi.study.lever_search import write_lever_search

    outs = {}
    for name, gain in ((None, 0.0), ("budget_0.5x", 3.0)):
        root = tmp_path / (name or "main")
        dirs = [d for d in _study(root, lambda x, g=gain: g, noise=0.05) if d.parent.name == "tpp8192"]
        outs[name] = gather(dirs, root / "out").files["markdown"].parent
    text = write_lever_search(outs, "8192 tokens/param", tmp_path / "lever_search.md").read_text()
    assert "| interleave_id | 0.5x |" in text and "| interleave_id | 1x |" in text
    assert "Better than the equal-FLOPs control (95% interval below zero): interleave_id at 0.5x -3.00%" in text
    # these synthetic variants train on a third fewer FLOPs than their control: flagged in the row and headline
    assert "| -33.3% |" in text and "] * † |" in text and "0.5x -3.00% [" in text and "* †." in text


def test_a_regime_with_fewer_than_two_paired_seeds_is_left_out_and_named_not_a_crash(tmp_path):
    """Found by review: one paired seed (a crashed job) made the whole gather fail."""
    import shutil

    from kiwi.study.gather import gather

    dirs = _study(tmp_path, lambda x: 1.0 - 0.1 * math.log(x), noise=0.05, seeds=(1, 2))
    shutil.rmtree(next(d for d in dirs if d.parent.name == "tpp1024" and d.name == "seed2") / "1")
    g = gather(dirs, tmp_path / "out")
    t = next(t for t in g.trends if t.unit == "pct")
    assert 1024.0 not in t.xs and any("1 paired seed(s)" in e for e in t.excluded)
    assert any("seeds [2] without a pair" in e for e in t.excluded)


def test_a_setting_at_two_lrs_gets_a_fit_per_lr_and_a_one_regime_gather_no_trend(tmp_path):
    """Found by review: the trend raised on any gather whose setting ran at two lrs in one regime."""
    from kiwi.study.gather import gather

    dirs = _study(tmp_path / "a", lambda x: 1.0, noise=0.05) + _study(tmp_path / "b", lambda x: 2.0, noise=0.05,
                                                                       lr=3e-3)
    g = gather(dirs, tmp_path / "out")
    assert sorted({t.variant for t in g.trends}) == ["interleave_id (lr 0.001)", "interleave_id (lr 0.003)"]
    one = [d for d in dirs if d.parent.name == "tpp64"]
    assert gather(one, tmp_path / "one").trends == []


def test_a_resample_already_past_its_crossover_counts_below_every_crossover_not_as_never():
    """Found by review: a resample whose curves had crossed before the first regime counted as +inf."""
    draws = [fit.BEFORE_FIRST] * 10 + [20.0] * 90
    i = fit.percentile_interval(20.0, draws, open_high=True)
    assert i.low == fit.BEFORE_FIRST and i.high == 20.0 and i.undefined == 0
