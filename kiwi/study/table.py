"""The study's tables: every job, and per (regime, variant, lr) the mean ± std over seeds with paired
differences against the two controls (the base continued for the same tokens, and for the same FLOPs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from kiwi import tables
from kiwi.cli import OWN_LR_TAG
from kiwi.study.definition import mixed_value
from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob
from kiwi.study.stats import PairedDiff, finite, paired_diff, summarize
from kiwi.train.budget import FLOPS_TOLERANCE

STRATEGY_ORDER = ("interleave", "solar", "stack", "llama_pro", "importance", "explicit", "none")
# Step-0 perplexities this close (relative) to the base's count as "starts at the base".
IDENTITY_RTOL = 1e-5

COLUMNS = ("regime", "variant", "seed", "lr", "ppl_step0", "step0_vs_base", "ppl_end",
           "delta_vs_tokens_ctrl_pct", "delta_vs_flops_ctrl_pct", "tokens", "train_flops", "wall_s")
SUMMARY_COLUMNS = ("regime", "variant", "lr", "seeds", "ppl_end_mean", "ppl_end_std", "vs_tokens_ctrl",
                   "vs_flops_ctrl", "tokens", "train_flops")
# The CSV's numeric form of the two paired differences (%, 95% t interval, whether it excludes zero).
SUMMARY_CSV_COLUMNS = (*SUMMARY_COLUMNS[:6], *(f"{c}_{k}" for c in ("vs_tokens", "vs_flops")
                                              for k in ("mean", "low", "high", "excludes_zero")),
                       "tokens", "train_flops", "flops_vs_flops_ctrl_pct")


def variant_order(job: StudyJob) -> tuple:
    control = {CONTROL_TOKENS: 0, CONTROL_FLOPS: 1}.get(job.variant, 2)
    strategy = STRATEGY_ORDER.index(job.strategy) if job.strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return (job.base_tokens_per_param or 0.0, job.regime, control, strategy, job.variant, job.lr, job.seed)


def delta_pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or not math.isfinite(value) or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def control_lr(jobs: Sequence[StudyJob], regime: str, control: str, variant: str, lr: float) -> float | None:
    """The lr of the ``control`` that ``variant`` at ``lr`` is paired with: the same lr when the control ran
    at it; for a lever whose lr is part of it (no re-warming) the control's only lr in the regime; else None
    (an lr sweep without that control at this lr has no pair)."""
    lrs = {j.lr for j in jobs if j.regime == regime and j.variant == control}
    if lr in lrs:
        return lr
    return next(iter(lrs)) if len(lrs) == 1 and OWN_LR_TAG in variant else None


def all_rows(jobs: Sequence[StudyJob], mixed: Sequence[str] = ()) -> list[dict]:
    """One row per job; deltas against the controls of the same regime and seed (the pair), at the same
    learning rate when the controls were run at several (``control_lr``); a column per ``mixed`` key."""
    controls = {(j.regime, j.variant, j.lr, j.seed): j for j in jobs if j.is_control}
    bases = {j.regime: j.ppl_step0 for j in jobs if j.is_control and j.ppl_step0 is not None}
    rows = []
    for job in sorted(jobs, key=variant_order):
        ctrl = {c: controls.get((job.regime, c, control_lr(jobs, job.regime, c, job.variant, job.lr), job.seed))
                for c in (CONTROL_TOKENS, CONTROL_FLOPS)}
        base = bases.get(job.regime)
        rows.append({
            "regime": job.regime, "variant": job.variant, "seed": job.seed, "lr": job.lr,
            "ppl_step0": job.ppl_step0,
            "step0_vs_base": None if job.ppl_step0 is None or base is None else job.ppl_step0 / base - 1.0,
            "ppl_end": job.ppl_end,
            "delta_vs_tokens_ctrl_pct": delta_pct(job.ppl_end, getattr(ctrl[CONTROL_TOKENS], "ppl_end", None)),
            "delta_vs_flops_ctrl_pct": delta_pct(job.ppl_end, getattr(ctrl[CONTROL_FLOPS], "ppl_end", None)),
            "tokens": job.tokens, "train_flops": job.train_flops, "wall_s": job.wall_s,
            "strategy": job.strategy, "identity_init": job.identity_init,
            **{key: mixed_value([job], key) for key in mixed},
        })
    return rows


def groups(jobs: Sequence[StudyJob]) -> dict[tuple, list[StudyJob]]:
    """(regime, variant, lr) -> its jobs (one per seed), in report order."""
    out: dict[tuple, list[StudyJob]] = {}
    for job in sorted(jobs, key=variant_order):
        members = out.setdefault((job.regime, job.variant, job.lr), [])
        twin = next((j for j in members if j.seed == job.seed), None)
        if twin is not None:  # e.g. two settings the names do not tell apart: never average them silently
            raise ValueError(f"two jobs for {job.variant} (lr {job.lr:g}, seed {job.seed}) in regime {job.regime}: "
                             f"{twin.path} and {job.path}; gather them separately or give them distinct settings")
        members.append(job)
    return out


def fmt_diff(d: PairedDiff | None) -> str:
    """`-1.23% [-2.01, -0.45] *`: mean paired difference, 95% t interval, * when it excludes zero."""
    if d is None:
        return "n/a"
    if d.low is None:
        return f"{d.mean:+.2f}% (1 seed)"
    return f"{d.mean:+.2f}% [{d.low:+.2f}, {d.high:+.2f}]" + (" *" if d.excludes_zero else "")


def diverged(job: StudyJob) -> bool:
    """A seed whose final or any validation perplexity is NaN/inf (or missing): listed, never averaged."""
    return not finite(job.ppl_end) or not all(finite(ppl) for _, ppl in job.curve)


def seeds_cell(members: Sequence[StudyJob]) -> int | str:
    """`3`, or `3 (1 diverged)`: every seed is counted, the diverged ones named as such."""
    bad = sum(diverged(j) for j in members)
    return f"{len(members)} ({bad} diverged)" if bad else len(members)


def mean_flops(members: Sequence[StudyJob]) -> float | None:
    flops = [j.train_flops for j in members if j.train_flops is not None]
    return sum(flops) / len(flops) if flops else None


def flops_gap_pct(members: Sequence[StudyJob], ref: Sequence[StudyJob] | None) -> float | None:
    """100 (FLOPs / equal-FLOPs control's FLOPs - 1), means over seeds; None when either is unknown."""
    mine, theirs = mean_flops(members), mean_flops(ref or [])
    return None if mine is None or not theirs else 100.0 * (mine / theirs - 1.0)


def summary_rows(jobs: Sequence[StudyJob], mixed: Sequence[str] = (),
                 flops_tolerance: float = FLOPS_TOLERANCE) -> list[dict]:
    """Per (regime, variant, lr): mean ± std of the final ppl over seeds, and the paired difference
    against each control of the same regime (and lr, per ``control_lr``; ``diffs`` keeps the PairedDiff objects).
    Every job has its row; a variant with a diverged seed (or paired with a control that has one) gets no mean
    and no interval, since summarising the survivors would hide the divergence and bias the result. An
    equal-FLOPs comparison (any setting but the equal-token control) whose FLOPs differ from the control's by
    more than ``flops_tolerance`` (relative) is marked in its cell with both FLOPs (``flops_mismatch``);
    ``mixed`` keys get a column of their values."""
    by = groups(jobs)
    rows = []
    for (regime, variant, lr), members in by.items():
        bad = [j.seed for j in members if diverged(j)]
        s = None if bad else summarize([j.ppl_end for j in members])
        ends = {j.seed: j.ppl_end for j in members}
        diffs, refs = {}, {}
        for ctrl in (CONTROL_TOKENS, CONTROL_FLOPS):
            ref = refs[ctrl] = by.get((regime, ctrl, control_lr(jobs, regime, ctrl, variant, lr)))
            usable = ref is not None and ctrl != variant and not bad and not any(diverged(j) for j in ref)
            diffs[ctrl] = paired_diff(ends, {j.seed: j.ppl_end for j in ref}) if usable else None
        # the equal-token control costs fewer FLOPs by design; every other setting is meant to match the FLOPs
        gap = flops_gap_pct(members, refs[CONTROL_FLOPS]) if variant not in (CONTROL_TOKENS, CONTROL_FLOPS) else None
        unequal = gap is not None and abs(gap) > 100 * flops_tolerance
        rows.append({
            "regime": regime, "variant": variant, "lr": lr, "seeds": seeds_cell(members),
            "ppl_end_mean": s and s.mean, "ppl_end_std": s and s.std,
            **{key: "n/a (diverged)" if bad and ctrl != variant else fmt_diff(diffs[ctrl])
               for key, ctrl in (("vs_tokens_ctrl", CONTROL_TOKENS), ("vs_flops_ctrl", CONTROL_FLOPS))},
            "tokens": members[0].tokens, "train_flops": members[0].train_flops, "diffs": diffs,
            "diverged_seeds": bad, "flops_vs_flops_ctrl_pct": gap,
            "flops_mismatch": (mean_flops(members), mean_flops(refs[CONTROL_FLOPS])) if unequal else None,
            **{key: mixed_value(members, key) for key in mixed},
        })
        if unequal:
            mine, theirs = rows[-1]["flops_mismatch"]
            rows[-1]["vs_flops_ctrl"] += f" (unequal FLOPs: {mine:.4g} vs control {theirs:.4g}, {gap:+.1f}%)"
        for short, ctrl in (("vs_tokens", CONTROL_TOKENS), ("vs_flops", CONTROL_FLOPS)):
            d = diffs[ctrl]
            rows[-1].update({f"{short}_mean": d and d.mean, f"{short}_low": d and d.low,
                             f"{short}_high": d and d.high, f"{short}_excludes_zero": d and d.excludes_zero})
    return rows


def _fmt(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key in ("ppl_step0", "ppl_end", "ppl_end_mean", "ppl_end_std"):
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


HEADERS = {"ppl_end_mean": "ppl end (mean)", "ppl_end_std": "std over seeds",
           "vs_tokens_ctrl": "vs equal-token ctrl (95% CI)", "vs_flops_ctrl": "vs equal-FLOPs ctrl (95% CI)",
           "ppl_step0": "ppl step 0", "step0_vs_base": "step 0 / base - 1", "ppl_end": "ppl end",
           "delta_vs_tokens_ctrl_pct": "vs equal-token ctrl", "delta_vs_flops_ctrl_pct": "vs equal-FLOPs ctrl",
           "train_flops": "train FLOPs", "wall_s": "fit wall s", "best_lr": "best lr"}


TEXT_COLUMNS = ("regime", "variant", "strategy", "init", "trainable")


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    return tables.markdown_table([HEADERS.get(c, c) for c in columns],
                                 [[_fmt(c, r.get(c)) for c in columns] for r in rows],
                                 numeric=[c not in TEXT_COLUMNS for c in columns])


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str | Path) -> Path:
    return tables.write_csv(path, list(columns), [[r.get(c) for c in columns] for r in rows])
