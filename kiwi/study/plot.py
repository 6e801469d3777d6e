"""The study's two plots: held-out perplexity vs extra training tokens (per regime a panel of strategies and
one of levers, each variant's mean curve over seeds with a ±1 std band; seeds validate at the same token
counts, so the curves align), and the paired differences against both controls with their 95% intervals."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from kiwi.cli import is_lever
from kiwi.plotting import pyplot, save_figure
from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob
from kiwi.study.stats import finite
from kiwi.study.table import diverged, groups


def mean_curve(jobs: Sequence[StudyJob]) -> list[tuple[int, float, float | None]]:
    """(tokens, mean ppl, std ppl) at the token counts every seed validated at. Where a seed's perplexity is
    NaN/inf (it diverged) the point is marked, not averaged: mean NaN (any NaN) or inf, std None."""
    common = set.intersection(*(set(dict(j.curve)) for j in jobs)) if jobs else set()
    out = []
    for t in sorted(common):
        values = [dict(j.curve)[t] for j in jobs]
        if not all(finite(v) for v in values):
            out.append((t, math.nan if any(math.isnan(v) for v in values) else math.inf, None))
            continue
        out.append((t, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
    return out


def plot_curves(jobs: Sequence[StudyJob], path: str | Path,
                title: str = "Depth up-scaling at small scale") -> Path:
    """curves.png: see curves_figure."""
    return save_figure(curves_figure(jobs, title), path, dpi="figure")


def curves_figure(jobs: Sequence[StudyJob], title: str = "Depth up-scaling at small scale"):
    """Held-out perplexity against extra training tokens, mean ± std over seeds per variant."""
    plt = pyplot()
    by = groups([j for j in jobs if j.curve])
    regimes = list(dict.fromkeys(key[0] for key in by))
    has_levers = any(is_lever(key[1]) for key in by)
    panels = [(r, part) for r in regimes for part in (("strategies", "levers") if has_levers else ("all",))]
    cols = 2 if has_levers else max(1, len(regimes))
    rows = len(regimes) if has_levers else 1
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 5.5 * rows), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab20")
    variants = list(dict.fromkeys(key[1] for key in by))
    for ax, (regime, part) in zip(axes.flat, panels, strict=False):
        values, marks = [], []
        for (reg, variant, lr), members in by.items():
            control = variant in (CONTROL_TOKENS, CONTROL_FLOPS)
            # the levers' reference (interleave_id) is in both panels
            shown = part == "all" or control or variant == "interleave_id" or is_lever(variant) == (part == "levers")
            if reg != regime or not shown:
                continue
            curve = mean_curve(members)
            if not curve:
                continue
            style = {CONTROL_TOKENS: dict(color="k", ls="--"), CONTROL_FLOPS: dict(color="k", ls=":")}.get(
                variant, dict(color=cmap(variants.index(variant) % 20), ls="-"))
            bad = sum(diverged(j) for j in members)
            label = f"{variant} (lr {lr:g}, {len(members)} seeds" + (f", {bad} diverged)" if bad else ")")
            marks += [(x, style["color"]) for x, y, _ in curve if not finite(y)]
            curve = [p for p in curve if finite(p[1])]  # NaN/inf points: an x at the top edge instead
            if not curve:
                ax.plot([], [], lw=1.6, marker="x", label=label + ": no finite point", **style)
                continue
            xs, ys, sd = zip(*curve, strict=True)
            values += ys
            ax.plot(xs, ys, lw=1.6, marker="o", ms=3, label=label, **style)
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                            [y + s for y, s in zip(ys, sd, strict=True)], color=style["color"], alpha=0.15)
        if values and max(values) > 3 * min(values):
            ax.set_yscale("log")
        if marks:
            top = ax.get_ylim()[1]
            ax.scatter([x for x, _ in marks], [top] * len(marks), marker="x", s=40, clip_on=False, zorder=5,
                       c=[c for _, c in marks], label="NaN/inf perplexity (diverged)")
        ax.set_xlabel("extra training tokens")
        ax.set_ylabel("held-out perplexity (mean ± std over seeds)")
        ax.set_title(f"{title}: base at {regime}" + ("" if part == "all" else f" ({part})"), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best" if marks else "upper right")  # never over a divergence mark
    fig.tight_layout()
    return fig


def plot_differences(summary: Sequence[dict], path: str | Path) -> Path:
    """differences.png: see differences_figure."""
    return save_figure(differences_figure(summary), path, dpi="figure")


def differences_figure(summary: Sequence[dict]):
    """Per regime, every variant's paired difference in final held-out perplexity against each control:
    mean and 95% t interval over seeds (left of 0 = better than the control). Where an interval does not
    cross 0 the difference is established."""
    plt = pyplot()
    regimes = list(dict.fromkeys(r["regime"] for r in summary))
    per_panel = max(len(summary) / max(1, len(regimes)), 8)
    fig, axes = plt.subplots(1, max(1, len(regimes)), squeeze=False, dpi=110,
                             figsize=(7.5 * max(1, len(regimes)), 0.38 * per_panel + 1.5))
    for ax, regime in zip(axes[0], regimes, strict=False):
        rows = [r for r in summary if r["regime"] == regime and r["variant"] not in (CONTROL_TOKENS, CONTROL_FLOPS)]
        for k, (ctrl, color, dy) in enumerate(((CONTROL_TOKENS, "tab:blue", -0.15), (CONTROL_FLOPS, "tab:red", 0.15))):
            ys, means, lows, highs = [], [], [], []
            for i, row in enumerate(rows):
                d = row["diffs"].get(ctrl)
                if d is None or d.low is None:
                    continue
                ys.append(i + dy)
                means.append(d.mean)
                lows.append(d.mean - d.low)
                highs.append(d.high - d.mean)
            label = "vs equal-token control" if k == 0 else "vs equal-FLOPs control"
            ax.errorbar(means, ys, xerr=[lows, highs], fmt="o", ms=4, capsize=2, color=color, label=label)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)), [r["variant"] + (" (diverged)" if r["diverged_seeds"] else "")
                                         for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("final held-out ppl vs control, % (mean, 95% interval over seeds)")
        ax.set_title(f"Paired differences: base at {regime}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        # outside the axes: inside, it covered an interval (docs/study/differences.png, issue 21)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
