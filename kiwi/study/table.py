"""The study's tables: every (variant, lr) job, and each variant at its best lr, with deltas against the
two controls (the base continued for the same tokens, and for the same training FLOPs)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob

STRATEGY_ORDER = ("interleave", "solar", "stack", "llama_pro", "importance", "explicit", "none")
# Step-0 perplexities this close (relative) to the base's count as "starts at the base".
IDENTITY_RTOL = 1e-5

COLUMNS = ("variant", "strategy", "init", "trainable", "lr", "ppl_step0", "step0_vs_base", "ppl_end",
           "delta_vs_tokens_ctrl_pct", "delta_vs_flops_ctrl_pct", "tokens", "train_flops", "wall_s")
BEST_COLUMNS = ("variant", "strategy", "init", "trainable", "best_lr", "ppl_step0", "step0_vs_base",
                "ppl_end", "delta_vs_tokens_ctrl_pct", "delta_vs_flops_ctrl_pct", "tokens", "train_flops",
                "wall_s")


def variant_order(job: StudyJob) -> tuple:
    control = {CONTROL_TOKENS: 1, CONTROL_FLOPS: 2}.get(job.variant, 0)
    strategy = STRATEGY_ORDER.index(job.strategy) if job.strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return (control, strategy, job.variant, job.lr)


def base_ppl(jobs: Sequence[StudyJob]) -> float | None:
    """The base model's held-out perplexity: a control's step-0 value (the base itself, untrained)."""
    for job in jobs:
        if job.is_control and job.ppl_step0 is not None:
            return job.ppl_step0
    return None


def delta_pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or not math.isfinite(value) or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def _row(job: StudyJob, base: float | None, ctrl_tokens: StudyJob | None, ctrl_flops: StudyJob | None) -> dict:
    return {
        "variant": job.variant,
        "strategy": job.strategy,
        "init": "-" if job.strategy == "none" else "identity" if job.identity_init else "copy",
        "trainable": job.trainable,
        "lr": job.lr,
        "ppl_step0": job.ppl_step0,
        "step0_vs_base": None if job.ppl_step0 is None or base is None else job.ppl_step0 / base - 1.0,
        "ppl_end": job.ppl_end,
        "delta_vs_tokens_ctrl_pct": delta_pct(job.ppl_end, ctrl_tokens.ppl_end if ctrl_tokens else None),
        "delta_vs_flops_ctrl_pct": delta_pct(job.ppl_end, ctrl_flops.ppl_end if ctrl_flops else None),
        "tokens": job.tokens,
        "train_flops": job.train_flops,
        "wall_s": job.wall_s,
    }


def all_rows(jobs: Sequence[StudyJob]) -> list[dict]:
    """One row per job; deltas against the controls trained at the same learning rate."""
    base = base_ppl(jobs)
    controls = {(j.variant, j.lr): j for j in jobs if j.is_control}
    return [_row(j, base, controls.get((CONTROL_TOKENS, j.lr)), controls.get((CONTROL_FLOPS, j.lr)))
            for j in sorted(jobs, key=variant_order)]


def best_jobs(jobs: Sequence[StudyJob]) -> list[StudyJob]:
    """Each variant at the learning rate with the lowest final held-out perplexity."""
    best: dict[str, StudyJob] = {}
    for job in jobs:
        if job.ppl_end is None or not math.isfinite(job.ppl_end):
            continue
        if job.variant not in best or job.ppl_end < best[job.variant].ppl_end:
            best[job.variant] = job
    return sorted(best.values(), key=variant_order)


def best_rows(jobs: Sequence[StudyJob]) -> list[dict]:
    """Best lr per variant; deltas against each control at *its* best lr (tuned vs tuned)."""
    best = best_jobs(jobs)
    by_variant = {j.variant: j for j in best}
    base = base_ppl(jobs)
    rows = []
    for job in best:
        row = _row(job, base, by_variant.get(CONTROL_TOKENS), by_variant.get(CONTROL_FLOPS))
        row["best_lr"] = row.pop("lr")
        rows.append(row)
    return rows


def _fmt(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key in ("ppl_step0", "ppl_end"):
        return f"{value:.3f}"
    if key == "step0_vs_base":
        return "0" if value == 0 else f"{value:+.1e}"
    if key.startswith("delta"):
        return f"{value:+.2f}%"
    if key in ("lr", "best_lr"):
        return f"{value:g}"
    if key == "train_flops":
        return f"{value:.3g}"
    if key == "wall_s":
        return f"{value:.0f}"
    if key == "tokens":
        return f"{value:,}"
    return str(value)


HEADERS = {"ppl_step0": "ppl step 0", "step0_vs_base": "step 0 / base - 1", "ppl_end": "ppl end",
           "delta_vs_tokens_ctrl_pct": "vs equal-token ctrl", "delta_vs_flops_ctrl_pct": "vs equal-FLOPs ctrl",
           "train_flops": "train FLOPs", "wall_s": "fit wall s", "best_lr": "best lr"}


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |"
    sep = "|" + "|".join("---" if c in ("variant", "strategy", "init", "trainable") else "---:"
                         for c in columns) + "|"
    body = ["| " + " | ".join(_fmt(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    return path
