"""PNG pictures of a layer plan and of layer importance, for reports and run logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kiwi.plotting import pyplot, save_figure
from kiwi.upscale.plan import LayerPlan


def plot_plan(plan: LayerPlan, path: str | Path) -> Path:
    """layer_plan.png: see plan_figure."""
    return save_figure(plan_figure(plan), path)


def plan_figure(plan: LayerPlan):
    """Source index per target slot; originals, plain duplicates and identity copies look different."""
    new = set(plan.new_layers)
    groups = {
        "original": ([], [], dict(marker="o", color="tab:blue")),
        "duplicate (copied weights)": ([], [], dict(marker="^", color="tab:orange")),
        "duplicate (identity init)": ([], [], dict(marker="s", facecolors="none", edgecolors="tab:red")),
    }
    for j, s in enumerate(plan.sources):
        if j not in new:
            key = "original"
        elif plan.identity_init[j]:
            key = "duplicate (identity init)"
        else:
            key = "duplicate (copied weights)"
        groups[key][0].append(j)
        groups[key][1].append(s)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, plan.n_target * 0.22), 4.5))
    ax.plot(range(plan.n_target), plan.sources, color="0.8", lw=1, zorder=0)
    for label, (xs, ys, style) in groups.items():
        if xs:
            ax.scatter(xs, ys, s=36, label=label, zorder=2, **style)
    ax.set_xlabel("target layer index")
    ax.set_ylabel("source layer index")
    ax.set_title(f"layer plan: {plan.strategy}, {plan.n_source} -> {plan.n_target} layers")
    ax.set_ylim(-0.5, plan.n_source - 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def plot_importance(
    scores: Sequence[float],
    path: str | Path,
    similarity: Sequence[Sequence[float]] | None = None,
    chosen: Sequence[int] | None = None,
    metric: str = "score",
) -> Path:
    """layer_importance.png: see importance_figure."""
    return save_figure(importance_figure(scores, similarity, chosen, metric), path)


def importance_figure(
    scores: Sequence[float],
    similarity: Sequence[Sequence[float]] | None = None,
    chosen: Sequence[int] | None = None,
    metric: str = "score",
):
    """Score per layer (``chosen`` layers highlighted) and, if given, the layer-similarity heatmap."""
    if len(scores) == 0:
        raise ValueError("plot_importance: scores is empty")
    chosen = sorted(set(chosen or []))
    bad = [c for c in chosen if not 0 <= c < len(scores)]
    if bad:
        raise ValueError(f"plot_importance: chosen layer {bad[0]} out of range 0..{len(scores) - 1}")
    plt = pyplot()
    ncols = 2 if similarity is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.0 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(range(len(scores)), scores, marker="o", color="tab:blue", label=metric)
    if chosen:
        ax.scatter(
            chosen,
            [scores[c] for c in chosen],
            s=120,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            label="chosen for duplication",
            zorder=3,
        )
    ax.set_xlabel("layer index")
    ax.set_ylabel(metric)
    ax.set_title(f"per-layer {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    if similarity is not None:
        hm = axes[0][1]
        im = hm.imshow(similarity, cmap="viridis", origin="upper")
        fig.colorbar(im, ax=hm, fraction=0.046, pad=0.04)
        for c in chosen:
            hm.axhline(c, color="tab:red", lw=0.6, alpha=0.6)
            hm.axvline(c, color="tab:red", lw=0.6, alpha=0.6)
        hm.set_xlabel("layer output index")
        hm.set_ylabel("layer output index")
        hm.set_title("layer-output similarity")
    return fig


def duplicated_sources(plan: LayerPlan) -> list[int]:
    """Source layers the plan duplicates (to mark as ``chosen`` in plot_importance)."""
    return sorted({plan.sources[j] for j in plan.new_layers})
