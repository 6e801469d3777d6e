"""Seeds into conclusions: mean ± std per variant, and paired differences against a control with a 95%
t interval over seeds (same seed = same data order, so the pair shares its noise from the data)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard tables); beyond, the normal's.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def finite(value: float | None) -> bool:
    """A perplexity that can be averaged: present and neither NaN nor infinite (a diverged run's is not)."""
    return value is not None and math.isfinite(value)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 seeds (df >= 1), got df={df}")
    return T975[df - 1] if df <= len(T975) else 1.960


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample std (n - 1); None for one value


def summarize(values: Sequence[float]) -> Summary:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize: no values")
    return Summary(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class PairedDiff:
    """Relative difference of a variant's final ppl against a control's, in % (negative = variant better)."""

    n: int
    mean: float
    std: float | None
    low: float | None   # 95% t interval; None with fewer than 2 pairs
    high: float | None
    seeds: tuple[int, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_diff(variant: Mapping[int, float], control: Mapping[int, float]) -> PairedDiff | None:
    """Pairs by seed: d_s = 100 (variant_s / control_s - 1); mean ± t_{0.975, n-1} sd / sqrt(n).
    None when no seed has both."""
    seeds = tuple(sorted(set(variant) & set(control)))
    if not seeds:
        return None
    s, low, high = t_interval([100.0 * (variant[s] / control[s] - 1.0) for s in seeds])
    return PairedDiff(s.n, s.mean, s.std, low, high, seeds)


def t_interval(values: Sequence[float]) -> tuple[Summary, float | None, float | None]:
    """(summary, low, high): mean ± t_{0.975, n-1} sd / sqrt(n); no interval (None, None) for one value."""
    s = summarize(values)
    if s.n < 2:
        return s, None, None
    half = t975(s.n - 1) * s.std / math.sqrt(s.n)
    return s, s.mean - half, s.mean + half


def last_doubling_improvement(curve: Sequence[tuple[int, float]]) -> tuple[int, float, float] | None:
    """(half tokens, ppl there, relative improvement in %) of a held-out curve over its last doubling of
    tokens: 100 (1 - ppl(T) / ppl(T/2)), ppl(T/2) interpolated linearly in log tokens between the two
    validations around T/2. None when the curve does not reach back to T/2."""
    points = sorted((int(t), float(p)) for t, p in curve if t > 0)
    if len(points) < 2:
        return None
    end_tokens, end_ppl = points[-1]
    half = end_tokens / 2
    for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False):
        if t0 <= half <= t1:
            w = 0.0 if t1 == t0 else (math.log(half) - math.log(t0)) / (math.log(t1) - math.log(t0))
            p_half = math.exp((1 - w) * math.log(p0) + w * math.log(p1))
            return int(half), p_half, 100.0 * (1.0 - end_ppl / p_half)
    return None
