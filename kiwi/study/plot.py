"""Held-out perplexity vs extra training tokens, one line per variant at its best learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob


def plot_curves(jobs: Sequence[StudyJob], path: str | Path, base_ppl: float | None = None,
                title: str = "Depth up-scaling at small scale") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    cmap = plt.get_cmap("tab10")
    strategies = sorted({j.strategy for j in jobs if not j.is_control})
    values = []
    for job in jobs:
        if not job.curve:
            continue
        xs, ys = zip(*job.curve, strict=True)
        values += ys
        label = f"{job.variant} (lr {job.lr:g})"
        if job.variant == CONTROL_TOKENS:
            ax.plot(xs, ys, "k--", lw=2, marker="s", ms=4, label=label)
        elif job.variant == CONTROL_FLOPS:
            ax.plot(xs, ys, "k:", lw=2, marker="D", ms=4, label=label)
        else:  # one colour per strategy; solid = identity_init, dash-dot = plain copies
            ax.plot(xs, ys, color=cmap(strategies.index(job.strategy) % 10), lw=1.5,
                    marker="^" if job.trainable == "new" else "o", ms=4,
                    ls="-" if job.identity_init else "-.", label=label)
    if base_ppl is not None:
        ax.axhline(base_ppl, color="grey", lw=0.8, label=f"base at step 0 ({base_ppl:.2f})")
    if values and max(values) > 3 * min(values):
        ax.set_yscale("log")  # diverged or far-off starts would flatten everything else
    ax.set_xlabel("extra training tokens")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
