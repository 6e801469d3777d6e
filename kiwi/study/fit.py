"""The DUS benefit as a function of how trained the base is (study v3): fits over regimes, and a bootstrap
over seeds for their uncertainty.

Two forms, both fitted by least squares with numpy alone:

- **log-linear benefit**, ``benefit(x) = a + b ln x`` with ``x`` the base's tokens/parameter. Two
  parameters, so it can be fitted to five regimes without over-fitting; its zero is the crossover
  ``x* = exp(-a / b)``, where up-scaling stops paying when ``b < 0`` and starts paying when ``b > 0``.
- **Liew & Kato (2025) at one continuation budget.** Their grown-model loss
  ``L = A D1^(-a1) D2^(-a2 + a3 ln D1) + E`` is, at a fixed D2, ``E + C D1^(-beta)`` with
  ``C = A D2^(-a2)`` and ``beta = a1 - a3 ln D2``: a power law with a floor in the base's tokens. Fitted to
  each arm (the up-scaled variant, the equal-FLOPs control), the crossover is where the two curves meet.
  Three parameters per arm from five regimes is a tight fit; ``chi2_dof`` says whether it fits.
- **no law**: the regimes' means joined in ln x (``interpolated``), for a crossing read off the measurements.

Every crossing (``first_crossing``) has a direction, so a benefit that rises through zero is reported as
where up-scaling starts paying, never as a crossover "before the first regime".

The bootstrap resamples the seeds (once for every regime when they share them, as seed s orders the data
alike in all), the same seeds for a variant and its control (the pair shares its data order), and refits:
percentile intervals, with the share of resamples that never cross reported rather than dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# (regime tokens/param) -> {seed: value}: what a fit over regimes is fitted to, per seed so it can resample.
Points = Mapping[float, Mapping[int, float]]


@dataclass(frozen=True)
class LogLinear:
    """``y = a + b ln x``."""

    a: float
    b: float

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a + self.b * np.log(x)

    @property
    def zero(self) -> float | None:
        """The ``x`` where ``y`` is zero (it falls through it when ``b < 0``, rises when ``b > 0``)."""
        if self.b == 0:
            return None
        value = -self.a / self.b
        return math.exp(value) if value < 700 else math.inf


# A bound at or before the first regime: that resample was already past the crossing there.
BEFORE_FIRST = 0.0
STOPS, STARTS = "stops paying", "starts paying"


@dataclass(frozen=True)
class Crossing:
    """Where a benefit first changes sign in the range searched, and which way: up-scaling STOPS paying there
    (positive before, not after) or STARTS (the reverse). ``x`` and ``direction`` are None when it keeps one
    sign throughout; ``paying`` is the sign at the start of the range."""

    x: float | None
    direction: str | None
    paying: bool


def first_crossing(benefit: Callable, lo: float, hi: float) -> Crossing:
    """The first sign change of ``benefit`` (positive = up-scaling pays) in [lo, hi]: a log grid, then
    bisection in ln x. Either direction is a crossing; which one is part of the answer."""
    grid = np.geomspace(lo, hi, 4000)
    pays = np.asarray(benefit(grid)) > 0
    change = np.nonzero(pays != pays[0])[0]
    if not len(change):
        return Crossing(None, None, bool(pays[0]))
    a, b = math.log(grid[change[0] - 1]), math.log(grid[change[0]])
    for _ in range(60):
        mid = (a + b) / 2
        a, b = (mid, b) if (float(benefit(math.exp(mid))) > 0) == pays[0] else (a, mid)
    return Crossing(math.exp((a + b) / 2), STOPS if pays[0] else STARTS, bool(pays[0]))


def interpolated(xs: Sequence[float], ys: Sequence[float]) -> Callable:
    """The measured points joined by straight lines in ln x: a crossing read off the regimes, with no law."""
    lx, y = np.log(np.asarray(xs, dtype=float)), np.asarray(ys, dtype=float)
    return lambda x: np.interp(np.log(x), lx, y)


def crossing_interval(estimate: Crossing, draws: Sequence[Crossing], level: float = 0.95) -> Interval:
    """Percentile interval of the bootstrap crossings that go the estimate's way. A resample that does not
    cross is still on the estimate's starting side (+inf: not by the end of the range) or already past it
    (BEFORE_FIRST); one that crosses the other way is undefined and counted in ``undefined``, and bounds
    that would need it are None. Without a crossing in the estimate, ``undefined`` is the share that cross."""
    if estimate.direction is None:
        crossed = sum(d.direction is not None for d in draws) / len(draws) if draws else 0.0
        return Interval(None, None, None, crossed, None, estimate.paying)
    values = [d.x if d.direction == estimate.direction else None if d.direction is not None
              else math.inf if d.paying == estimate.paying else BEFORE_FIRST for d in draws]
    i = percentile_interval(estimate.x, values, level)
    return Interval(i.estimate, i.low, i.high, i.undefined, estimate.direction, estimate.paying)


@dataclass(frozen=True)
class PowerLaw:
    """``y = E + C x^(-beta)``: Liew & Kato's loss at one continuation budget, as a function of the base's
    tokens (any unit: tokens/parameter here). ``at_edge``: beta is at a bound of its search, so E and C
    only describe the data, not a floor and a decay."""

    E: float
    C: float
    beta: float
    at_edge: bool = False

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.E + self.C * np.power(x, -self.beta)


def _weights(sigma: Sequence[float] | None, n: int) -> np.ndarray:
    if sigma is None:
        return np.ones(n)
    sigma = np.asarray(sigma, dtype=float)
    if np.any(~np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ValueError(f"fit: every sigma must be positive and finite, got {sigma.tolist()}")
    return 1.0 / sigma**2


def _xy(x: Sequence[float], y: Sequence[float], need: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"fit: x and y must be two lists of one length, got {x.shape} and {y.shape}")
    if np.any(~np.isfinite(x)) or np.any(x <= 0) or np.any(~np.isfinite(y)):
        raise ValueError(f"fit: x must be positive and every value finite, got x={x.tolist()} y={y.tolist()}")
    if len(np.unique(x)) < need:
        raise ValueError(f"fit: needs at least {need} distinct x values, got {len(np.unique(x))}")
    return x, y


def fit_log_linear(x: Sequence[float], y: Sequence[float], sigma: Sequence[float] | None = None) -> LogLinear:
    """Weighted least squares of ``y = a + b ln x`` (weights 1 / sigma^2)."""
    x, y = _xy(x, y, 2)
    w = _weights(sigma, len(x))
    design = np.stack([np.ones_like(x), np.log(x)], axis=1)
    a, b = np.linalg.lstsq(design * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    return LogLinear(float(a), float(b))


def _power_at(betas: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray):
    """(E, C, weighted squared error) of the best floor and scale at each exponent in ``betas``: E and C
    are linear at a given exponent, so each is a 2 x 2 weighted normal-equation solve, all at once."""
    z = np.power(x[None, :], -betas[:, None])                      # (betas, points)
    sw, sz, szz = w.sum(), (w * z).sum(1), (w * z * z).sum(1)
    sy, szy = (w * y).sum(), (w * z * y).sum(1)
    det = sw * szz - sz * sz
    safe = np.where(np.abs(det) > 1e-300, det, np.inf)
    c = (sw * szy - sz * sy) / safe
    e = (sy - c * sz) / sw
    err = (w * (y[None, :] - e[:, None] - c[:, None] * z) ** 2).sum(1)
    return e, c, err


def fit_power_law(x: Sequence[float], y: Sequence[float], sigma: Sequence[float] | None = None,
                  betas: tuple[float, float] = (1e-3, 3.0)) -> PowerLaw:
    """Weighted least squares of ``y = E + C x^(-beta)``: the fit profiles beta (E and C solved exactly at
    each) over a log grid in ``betas``, then over finer grids around the best point."""
    x, y = _xy(x, y, 3)
    w = _weights(sigma, len(x))
    lo, hi = math.log(betas[0]), math.log(betas[1])
    for _ in range(4):  # each round narrows the bracket 50-fold: ~1e-7 relative in beta at the end
        grid = np.exp(np.linspace(lo, hi, 201))
        i = int(np.argmin(_power_at(grid, x, y, w)[2]))
        lo, hi = math.log(grid[max(0, i - 2)]), math.log(grid[min(len(grid) - 1, i + 2)])
    beta = grid[i]
    e, c, _ = _power_at(np.asarray([beta]), x, y, w)
    edge = beta <= betas[0] * 1.01 or beta >= betas[1] / 1.01
    return PowerLaw(float(e[0]), float(c[0]), float(beta), bool(edge))


def chi2_dof(model: Callable, x: Sequence[float], y: Sequence[float], sigma: Sequence[float], n_params: int) -> float:
    """Sum of squared residuals in units of each point's standard error, per degree of freedom: near 1
    when the form fits to within the seeds' noise, much more when it does not; nan without a dof."""
    x, y, sigma = (np.asarray(v, dtype=float) for v in (x, y, sigma))
    dof = len(x) - n_params
    return float(np.sum(((y - model(x)) / sigma) ** 2) / dof) if dof > 0 else math.nan


def mean_and_se(points: Points) -> tuple[list[float], list[float], list[float]]:
    """(x, mean over seeds, standard error of that mean) per regime, in increasing x."""
    xs, means, ses = [], [], []
    for x in sorted(points):
        values = np.asarray(list(points[x].values()), dtype=float)
        if len(values) < 2:
            raise ValueError(f"fit: the regime at {x:g} tokens/param has {len(values)} seed; a standard error "
                             "needs at least 2")
        xs.append(float(x))
        means.append(float(values.mean()))
        ses.append(float(values.std(ddof=1) / math.sqrt(len(values))))
    return xs, means, ses


def resample(rng: np.random.Generator, points: Points) -> dict[float, dict[int, int]]:
    """Seeds drawn with replacement: {x: {draw index: seed}}, one draw for all arms. Seed s orders the data
    the same way in every regime, so when every regime has the same seeds they are drawn once for all of
    them (a cluster bootstrap, which keeps that correlation); otherwise within each regime."""
    sets = {tuple(sorted(by_seed)) for by_seed in points.values()}
    if len(sets) == 1:
        seeds = next(iter(sets))
        ks = rng.integers(0, len(seeds), len(seeds))
        return {x: {i: seeds[k] for i, k in enumerate(ks)} for x in points}
    out = {}
    for x, by_seed in points.items():
        seeds = sorted(by_seed)
        out[x] = {i: seeds[k] for i, k in enumerate(rng.integers(0, len(seeds), len(seeds)))}
    return out


def take(points: Points, draw: Mapping[float, Mapping[int, int]]) -> dict[float, dict[int, float]]:
    return {x: {i: points[x][seed] for i, seed in draw[x].items()} for x in draw}


@dataclass(frozen=True)
class Interval:
    estimate: float | None
    low: float | None
    high: float | None
    undefined: float = 0.0  # share of bootstrap resamples in which the quantity does not exist
    direction: str | None = None  # a crossing's: STOPS or STARTS paying
    paying: bool | None = None  # a crossing's: whether the benefit is positive at the start of its range


def percentile_interval(estimate: float | None, draws: Sequence[float | None], level: float = 0.95,
                        open_high: bool = False) -> Interval:
    """Percentile interval of bootstrap ``draws``. A draw of None (a crossover that never comes) counts as
    +inf when ``open_high`` (past any finite one), else the draws are too unstable to bound and the interval
    is None where it would need them. BEFORE_FIRST (0) sorts below every crossover in range."""
    n = len(draws)
    missing = sum(d is None for d in draws)
    values = sorted(math.inf if d is None else float(d) for d in draws) if open_high else \
        sorted(float(d) for d in draws if d is not None)
    if not values:
        return Interval(estimate, None, None, missing / n if n else 0.0)
    tail = (1 - level) / 2
    if not open_high and missing / n > tail:
        return Interval(estimate, None, None, missing / n)
    low = values[math.floor(tail * (len(values) - 1))]
    high = values[math.ceil((1 - tail) * (len(values) - 1))]
    return Interval(estimate, low, high, missing / n)
