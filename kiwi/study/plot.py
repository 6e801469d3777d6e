"""Held-out perplexity vs extra training tokens: per regime one panel, per variant the mean curve over
seeds with a ±1 std band (seeds validate at the same token counts, so the curves align)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob
from kiwi.study.table import groups


def mean_curve(jobs: Sequence[StudyJob]) -> list[tuple[int, float, float]]:
    """(tokens, mean ppl, std ppl) at the token counts every seed validated at."""
    common = set.intersection(*(set(dict(j.curve)) for j in jobs)) if jobs else set()
    out = []
    for t in sorted(common):
        values = [dict(j.curve)[t] for j in jobs]
        out.append((t, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
    return out


def plot_curves(jobs: Sequence[StudyJob], path: str | Path,
                title: str = "Depth up-scaling at small scale") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = groups([j for j in jobs if j.curve])
    regimes = list(dict.fromkeys(key[0] for key in by))
    fig, axes = plt.subplots(1, max(1, len(regimes)), figsize=(7 * max(1, len(regimes)), 5), dpi=110,
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    variants = list(dict.fromkeys(key[1] for key in by))
    for ax, regime in zip(axes[0], regimes, strict=False):
        values = []
        for (reg, variant, lr), members in by.items():
            if reg != regime:
                continue
            curve = mean_curve(members)
            if not curve:
                continue
            xs, ys, sd = zip(*curve, strict=True)
            values += ys
            style = {CONTROL_TOKENS: dict(color="k", ls="--"), CONTROL_FLOPS: dict(color="k", ls=":")}.get(
                variant, dict(color=cmap(variants.index(variant) % 10), ls="-"))
            ax.plot(xs, ys, lw=1.6, marker="o", ms=3, label=f"{variant} (lr {lr:g}, {len(members)} seeds)",
                    **style)
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                            [y + s for y, s in zip(ys, sd, strict=True)], color=style["color"], alpha=0.15)
        if values and max(values) > 3 * min(values):
            ax.set_yscale("log")
        ax.set_xlabel("extra training tokens")
        ax.set_ylabel("held-out perplexity (mean ± std over seeds)")
        ax.set_title(f"{title}: base at {regime}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
