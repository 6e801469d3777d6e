"""Across regimes (study v3): the equal-FLOPs benefit of each up-scaled setting as a function of the base's
tokens/parameter, fitted (kiwi.study.fit) with a bootstrap over seeds, its crossover, and the
extrapolation to Qwen2.5-0.5B's regime.

The benefit of a setting in one regime and seed is against the equal-FLOPs control of that regime and seed
(the pair shares its data order): ``100 (1 - ppl / ppl_control)`` in % (positive = up-scaling helps) and
``ln ppl_control - ln ppl`` in nats of held-out loss. A setting is fitted only when it ran in at least 3
regimes and no seed of it, or of its control, diverged there (a fit over the survivors would hide it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiwi import tables
from kiwi.plotting import pyplot, save_figure
from kiwi.study import fit
from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob
from kiwi.study.stats import t_interval
from kiwi.study.table import control_lr, diverged, flops_gap_pct, groups
from kiwi.train.budget import FLOPS_TOLERANCE

QWEN_TOKENS_PER_PARAM = 36_000  # Qwen2.5-0.5B: ~18T tokens over ~0.5B parameters (the regime Kiwi grows)
UNITS = {"pct": "% of held-out ppl", "nats": "nats of held-out loss"}
MIN_REGIMES = 3


def benefit(variant_ppl: float, control_ppl: float, unit: str) -> float:
    """The up-scaled setting's gain over its equal-FLOPs control: positive when it is better."""
    if unit == "pct":
        return 100.0 * (1.0 - variant_ppl / control_ppl)
    if unit == "nats":
        return math.log(control_ppl) - math.log(variant_ppl)
    raise ValueError(f"benefit: unit must be one of {sorted(UNITS)}, got {unit!r}")


@dataclass
class Arms:
    """One setting's paired final perplexities per regime and seed: its own and its control's."""

    variant: str
    variant_ppl: dict[float, dict[int, float]] = field(default_factory=dict)
    control_ppl: dict[float, dict[int, float]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)  # regimes left out and why; unpaired seeds, unequal FLOPs

    def benefits(self, unit: str) -> dict[float, dict[int, float]]:
        return {x: {s: benefit(v, self.control_ppl[x][s], unit) for s, v in seeds.items()}
                for x, seeds in self.variant_ppl.items()}


def regime_x(jobs: Sequence[StudyJob], bases: Mapping | None = None) -> dict[str, float]:
    """Each regime's tokens/parameter: the base's measured value when its report is known, else the knob."""
    out = {}
    for job in jobs:
        base = (bases or {}).get(job.regime)
        measured = getattr(base, "tokens_per_param", None)
        if measured or job.base_tokens_per_param:
            out[job.regime] = float(measured or job.base_tokens_per_param)
    return out


def paired_arms(jobs: Sequence[StudyJob], bases: Mapping | None = None, control: str = CONTROL_FLOPS) -> list[Arms]:
    """Every non-control setting's pairs with ``control``, regime by regime (only seeds both have; the lr
    pairing of kiwi.study.table.control_lr); a setting run at several lrs gets one arm per lr. A regime is
    excluded, and named, when no control pairs with it, a seed on either side diverged, or fewer than 2
    seeds pair; unpaired seeds and unequal FLOPs are named too."""
    xs = regime_x(jobs, bases)
    by = groups(jobs)
    arms: dict[tuple[str, float], Arms] = {}
    for (regime, variant, lr), members in by.items():
        if variant in (CONTROL_TOKENS, CONTROL_FLOPS) or regime not in xs:
            continue
        arm = arms.setdefault((variant, lr), Arms(variant))
        ref = by.get((regime, control, control_lr(jobs, regime, control, variant, lr)))
        if ref is None:
            arm.excluded.append(f"{regime}: no {control}")
            continue
        if bad := [f"{j.variant} seed {j.seed}" for j in [*members, *ref] if diverged(j)]:
            arm.excluded.append(f"{regime}: diverged ({', '.join(bad)})")
            continue
        controls = {j.seed: j.ppl_end for j in ref}
        paired = {j.seed: j.ppl_end for j in members if j.seed in controls}
        if unpaired := sorted({j.seed for j in members} ^ set(controls)):
            arm.excluded.append(f"{regime}: seeds {unpaired} without a pair (left out)")
        if len(paired) < 2:
            arm.excluded.append(f"{regime}: {len(paired)} paired seed(s), an interval needs 2")
            continue
        if (gap := flops_gap_pct(members, ref)) is not None and abs(gap) > 100 * FLOPS_TOLERANCE:
            arm.excluded.append(f"{regime}: unequal FLOPs ({gap:+.1f}% against {control}; kept)")
        arm.variant_ppl[xs[regime]] = paired
        arm.control_ppl[xs[regime]] = {s: controls[s] for s in paired}
    several = {v for v, _ in arms if sum(1 for w, _ in arms if w == v) > 1}
    for (variant, lr), arm in arms.items():
        if variant in several:
            arm.variant = f"{variant} (lr {lr:g})"
    return sorted(arms.values(), key=lambda a: a.variant)


@dataclass
class PowerTrend:
    """Liew & Kato at one budget, fitted to each arm's loss: the fits, their chi2/dof and where they cross."""

    variant: fit.PowerLaw
    control: fit.PowerLaw
    chi2: tuple[float, float]
    crossover: fit.Interval


@dataclass
class Trend:
    """One setting's benefit over regimes in one unit: the points, both fits and their intervals."""

    variant: str
    unit: str
    xs: list[float]
    means: list[float]
    ses: list[float]
    intervals: list[tuple[float, float]]           # 95% t interval per regime (kiwi.study.stats.t_interval)
    seeds: list[int]                               # paired seeds per regime
    line: fit.LogLinear
    line_chi2: float
    slope: fit.Interval                            # b: benefit per e-fold of base training
    crossover: fit.Interval                        # where the line first changes sign, and which way
    measured: fit.Interval                         # where the regimes' means do, joined in ln x (no law)
    at_target: fit.Interval                        # the line at QWEN_TOKENS_PER_PARAM (an extrapolation)
    band: list[tuple[float, float, float]]         # (x, low, high) of the line over the bootstrap
    power: PowerTrend | None = None
    excluded: list[str] = field(default_factory=list)


N_BOOT = 2000


def _losses(ppl: Mapping[float, Mapping[int, float]]) -> dict[float, dict[int, float]]:
    return {x: {s: math.log(p) for s, p in seeds.items()} for x, seeds in ppl.items()}


def search_range(xs, target: float = QWEN_TOKENS_PER_PARAM) -> tuple[float, float]:
    """Where a fitted form's crossing is looked for: from the first regime to 10 x past Qwen's."""
    return min(xs), 10 * max(max(xs), target)


def _meet(variant: fit.PowerLaw, control: fit.PowerLaw, lo: float, hi: float) -> fit.Crossing:
    return fit.first_crossing(lambda x: control(x) - variant(x), lo, hi)  # > 0: the variant's loss is lower


def power_trend(arms: Arms, n_boot: int = N_BOOT, seed: int = 0, target: float = QWEN_TOKENS_PER_PARAM
                ) -> PowerTrend:
    """Both arms' losses fitted by least squares over the regimes' means, and the seed bootstrap of where the
    curves meet (either way; searched up to 10 x ``target``)."""
    loss_v, loss_c = _losses(arms.variant_ppl), _losses(arms.control_ppl)
    first, last = search_range(loss_v, target)

    def fits(lv, lc):
        (x1, m1, _), (x2, m2, _) = fit.mean_and_se(lv), fit.mean_and_se(lc)
        return fit.fit_power_law(x1, m1), fit.fit_power_law(x2, m2)

    pv, pc = fits(loss_v, loss_c)
    (x1, m1, s1), (x2, m2, s2) = fit.mean_and_se(loss_v), fit.mean_and_se(loss_c)
    chi2 = (fit.chi2_dof(pv, x1, m1, [max(v, 1e-12) for v in s1], 3),
            fit.chi2_dof(pc, x2, m2, [max(v, 1e-12) for v in s2], 3))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        draw = fit.resample(rng, loss_v)
        draws.append(_meet(*fits(fit.take(loss_v, draw), fit.take(loss_c, draw)), first, last))
    cross = fit.crossing_interval(_meet(pv, pc, first, last), draws)
    return PowerTrend(pv, pc, chi2, cross)


def trend(arms: Arms, unit: str, n_boot: int = N_BOOT, seed: int = 0, target: float = QWEN_TOKENS_PER_PARAM,
          power: PowerTrend | None = None) -> Trend | None:
    """The log-linear fit of one setting's benefit in ``unit`` (least squares over the regimes' means), with
    percentile intervals over ``n_boot`` resamples of the seeds (the same resample for the setting and its
    control); None with fewer than MIN_REGIMES regimes."""
    points = arms.benefits(unit)
    if len(points) < MIN_REGIMES:
        return None
    xs, means, ses = fit.mean_and_se(points)
    line = fit.fit_log_linear(xs, means)
    grid = np.geomspace(min(xs), max(max(xs), target), 60)
    lo, hi = search_range(xs, target)
    rng = np.random.default_rng(seed)
    slopes, crossings, measured, at, curves = [], [], [], [], []
    for _ in range(n_boot):
        bx, bm, _ = fit.mean_and_se(fit.take(points, fit.resample(rng, points)))
        b_line = fit.fit_log_linear(bx, bm)
        slopes.append(b_line.b)
        crossings.append(fit.first_crossing(b_line, lo, hi))
        measured.append(fit.first_crossing(fit.interpolated(bx, bm), min(bx), max(bx)))
        at.append(float(b_line(target)))
        curves.append(b_line(grid))
    curves = np.asarray(curves)
    band = [(float(x), float(lo), float(hi)) for x, lo, hi in
            zip(grid, np.quantile(curves, 0.025, axis=0), np.quantile(curves, 0.975, axis=0), strict=True)]
    intervals = [t_interval(list(points[x].values()))[1:] for x in xs]
    return Trend(arms.variant, unit, xs, means, ses, intervals, [len(points[x]) for x in xs], line,
                 fit.chi2_dof(line, xs, means, [max(se, 1e-12) for se in ses], 2),
                 fit.percentile_interval(line.b, slopes),
                 fit.crossing_interval(fit.first_crossing(line, lo, hi), crossings),
                 fit.crossing_interval(fit.first_crossing(fit.interpolated(xs, means), min(xs), max(xs)), measured),
                 fit.percentile_interval(float(line(target)), at), band, power, list(arms.excluded))


def trends(jobs: Sequence[StudyJob], bases: Mapping | None = None, n_boot: int = N_BOOT
           ) -> tuple[list[Trend], list[str]]:
    """Every setting with at least MIN_REGIMES usable regimes, in both units (the Liew-Kato fit, which
    depends on the losses only, once per setting); and a line per setting that is not fitted, saying why."""
    out, unfitted = [], []
    for arms in paired_arms(jobs, bases):
        if len(arms.variant_ppl) < MIN_REGIMES:
            why = f"; {'; '.join(arms.excluded)}" if arms.excluded else ""
            unfitted.append(f"{arms.variant}: {len(arms.variant_ppl)} usable regime(s){why}")
            continue
        power = power_trend(arms, n_boot)
        out += [trend(arms, unit, n_boot, power=power) for unit in UNITS]
    return out, unfitted


TREND_COLUMNS = ("variant", "unit", "regimes", "seeds", "a", "b", "slope_low", "slope_high", "line_chi2_dof",
                 "crossover_direction", "crossover", "crossover_low", "crossover_high", "crossover_other_way_share",
                 "crossover_in_regimes", "measured_crossing_direction", "measured_crossing", "measured_crossing_low",
                 "measured_crossing_high", "measured_crossing_other_way_share", "at_36k", "at_36k_low",
                 "at_36k_high", "power_crossover_direction", "power_crossover", "power_crossover_low",
                 "power_crossover_high", "power_crossover_other_way_share", "power_chi2_dof_variant",
                 "power_chi2_dof_control", "power_flags", "excluded")


def in_regimes(t: Trend) -> bool | None:
    """Whether the line's crossing lies within the regimes measured (else it is an extrapolation)."""
    x = t.crossover.estimate
    return None if x is None else min(t.xs) <= x <= max(t.xs)


def power_flags(p: PowerTrend | None) -> str:
    """What makes a Liew-Kato fit unfit to read as a floor and a decay: an exponent at its search bound, or
    a loss that rises with the base's training (C <= 0)."""
    if p is None:
        return ""
    flags = [f"{arm}: {why}" for arm, law in (("variant", p.variant), ("control", p.control))
             for why, bad in (("beta at its search bound", law.at_edge), ("C <= 0 (rising loss)", law.C <= 0))
             if bad]
    return "; ".join(flags)


def trend_row(t: Trend) -> dict:
    p = t.power
    return {"variant": t.variant, "unit": t.unit, "regimes": " ".join(f"{x:.4g}" for x in t.xs),
            "seeds": min(t.seeds), "a": t.line.a, "b": t.line.b, "slope_low": t.slope.low,
            "slope_high": t.slope.high, "line_chi2_dof": t.line_chi2, **_crossing_cols("crossover", t.crossover),
            "crossover_in_regimes": in_regimes(t), **_crossing_cols("measured_crossing", t.measured),
            "at_36k": t.at_target.estimate, "at_36k_low": t.at_target.low, "at_36k_high": t.at_target.high,
            **_crossing_cols("power_crossover", p.crossover if p else None),
            "power_chi2_dof_variant": p.chi2[0] if p else None, "power_chi2_dof_control": p.chi2[1] if p else None,
            "power_flags": power_flags(p), "excluded": "; ".join(t.excluded)}


def _crossing_cols(name: str, i: fit.Interval | None) -> dict:
    """A crossing's CSV columns: which way, where, its bounds and the share of resamples crossing the other way
    (with no crossing, the direction says which side it stays on)."""
    if i is None:
        return dict.fromkeys((f"{name}_direction", name, f"{name}_low", f"{name}_high", f"{name}_other_way_share"))
    return {f"{name}_direction": i.direction or _no_crossing(i), name: i.estimate, f"{name}_low": i.low,
            f"{name}_high": i.high, f"{name}_other_way_share": i.undefined if i.direction else None}


def _no_crossing(i: fit.Interval) -> str:
    return "none (pays throughout)" if i.paying else "none (never pays)"


def _num(value, digits: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == fit.BEFORE_FIRST:
        return "before the first regime"
    return "inf" if value == math.inf else format(value, digits)


def _crossing(i: fit.Interval, outside: str = "") -> str:
    """`starts paying at 148 [131, 170]`, with the share of resamples that cross the other way; without a
    crossing, which side it stays on and the share of resamples that do cross."""
    if i.direction is None:
        return _no_crossing(i) + (f" ({100 * i.undefined:.0f}% of resamples cross)" if i.undefined else "")
    share = f" ({100 * i.undefined:.0f}% of resamples cross the other way)" if i.undefined else ""
    return f"{i.direction} at {_num(i.estimate)} [{_num(i.low)}, {_num(i.high)}]{outside}{share}"


def _line(t: Trend) -> str:
    sign = "-" if t.line.b < 0 else "+"
    return f"{_num(t.line.a)} {sign} {_num(abs(t.line.b))} ln x"


def trend_markdown(ts: Sequence[Trend], unfitted: Sequence[str] = ()) -> str:
    """The fits in words a reader can check: per setting and unit, the line, where it and the measured
    regimes cross zero (and which way), and the extrapolation to 36k tokens/param, each with its bootstrap
    interval."""
    rows = []
    for t in ts:
        outside = "" if in_regimes(t) in (True, None) else " (outside the regimes: extrapolated)"
        p = t.power
        rows.append([t.variant, UNITS[t.unit], " ".join(f"{x:.4g}" for x in t.xs), str(min(t.seeds)), _line(t),
                     f"[{_num(t.slope.low)}, {_num(t.slope.high)}]", _num(t.line_chi2, ".2f"),
                     _crossing(t.crossover, outside), _crossing(t.measured),
                     f"{_num(t.at_target.estimate)} [{_num(t.at_target.low)}, {_num(t.at_target.high)}]",
                     _crossing(p.crossover) if p else "n/a",
                     ("/".join(_num(c, ".2f") for c in p.chi2) + (f" ({power_flags(p)})" if power_flags(p) else ""))
                     if p else "n/a"])
    headers = ["setting", "unit", "regimes (tokens/param)", "seeds", "benefit = a + b ln x", "b (95% boot.)",
               "chi2/dof", "line crosses zero (95% boot.)", "measured regimes cross zero (95% boot.)",
               "at 36k tokens/param (extrap.)", "Liew-Kato crossover", "L-K chi2/dof (var/ctrl)"]
    lines = [tables.markdown_table(headers, rows, numeric=[False, False, False, True, False, False, True, False,
                                                           False, False, False, False]), "",
             "A crossing is where the benefit first changes sign, either way: up-scaling *starts* paying there "
             "(it rises through zero) or *stops* (it falls through it). The measured crossing joins the "
             "regimes' means by straight lines in ln x; its interval is over seeds only, not over that "
             "interpolation.", "",
             "Liew & Kato's form is fitted at one continuation budget, where it is E + C x^-beta per arm: its "
             "alpha2 and alpha3 (how the budget after growth enters) cannot be separated by this design."]
    if excluded := [f"{t.variant}: {'; '.join(t.excluded)}" for t in ts if t.excluded and t.unit == "pct"]:
        lines.append("Regimes left out of a fit, unpaired seeds left out, and unequal FLOPs (kept): "
                     + " | ".join(excluded) + ".")
    if unfitted:
        lines.append(f"Not fitted (fewer than {MIN_REGIMES} usable regimes): " + " | ".join(unfitted) + ".")
    return "\n".join(lines)


def write_trends(ts: Sequence[Trend], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"trend_csv": tables.write_csv(out / "trend.csv", list(TREND_COLUMNS),
                                           [[trend_row(t)[c] for c in TREND_COLUMNS] for t in ts]),
             "trend_points_csv": tables.write_csv(
                 out / "trend_points.csv", ["variant", "unit", "tokens_per_param", "seeds", "mean", "se", "low",
                                            "high"],
                 [[t.variant, t.unit, x, n, m, se, lo, hi] for t in ts
                  for x, n, m, se, (lo, hi) in zip(t.xs, t.seeds, t.means, t.ses, t.intervals, strict=True)])}
    if ts:
        files["benefit_plot"] = plot_trends(ts, out / "benefit.png")
    return files


def plot_trends(ts: Sequence[Trend], path: Path, target: float = QWEN_TOKENS_PER_PARAM) -> Path:
    """Benefit vs the base's tokens/param (log x), one panel per unit: per setting the regimes' means with
    95% intervals over seeds, the fitted line and its bootstrap band, dashed past the last regime (the
    extrapolation), and Qwen2.5-0.5B's regime marked."""
    plt = pyplot()
    units = [u for u in UNITS if any(t.unit == u for t in ts)]
    fig, axes = plt.subplots(1, len(units), figsize=(6.5 * len(units), 4.6), squeeze=False)
    variants = sorted({t.variant for t in ts})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    for ax, unit in zip(axes[0], units, strict=True):
        for k, t in enumerate(x for x in ts if x.unit == unit):
            c = colors[t.variant]
            shift = 1.0 + 0.04 * (k - (len(variants) - 1) / 2)  # side by side, so no interval hides another
            xs = np.asarray(t.xs) * shift
            lows = np.asarray([m - lo for m, (lo, _) in zip(t.means, t.intervals, strict=True)])
            highs = np.asarray([hi - m for m, (_, hi) in zip(t.means, t.intervals, strict=True)])
            ax.errorbar(xs, t.means, yerr=[lows, highs], fmt="o", color=c, capsize=3, label=t.variant)
            bx = np.asarray([b[0] for b in t.band])
            inside = bx <= max(t.xs)
            ax.fill_between(bx, [b[1] for b in t.band], [b[2] for b in t.band], color=c, alpha=0.12, lw=0)
            ax.plot(bx[inside], t.line(bx[inside]), color=c, lw=1.5)
            ax.plot(bx[~inside | (bx == bx[inside][-1])], t.line(bx[~inside | (bx == bx[inside][-1])]), color=c,
                    lw=1.2, ls="--")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axvline(target, color="grey", lw=0.8, ls=":")
        ax.annotate("Qwen2.5-0.5B\n(extrapolated)", (target, 0), textcoords="offset points", xytext=(-4, 6),
                    ha="right", fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("base tokens / parameter")
        ax.set_ylabel(f"benefit over equal-FLOPs control ({UNITS[unit]})")
        ax.set_title("higher = up-scaling helps; band: 95% bootstrap over seeds", fontsize=9)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
