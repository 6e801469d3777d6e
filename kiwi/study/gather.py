"""Gather DUS study multiruns (one per regime and seed) into tables (markdown + CSV) and plots (PNG), logged
to W&B.

    python -m kiwi.study.gather logs/study_cpu/tpp64/seed1 logs/study_cpu/tpp64/seed2 [--out DIR] \
        [--wandb auto|offline|disabled] [--allow-mixed KEY ...] [--flops-tolerance 0.02]

Jobs are grouped and paired only when their training definitions (kiwi.study.definition) agree in everything
but the seed and the variant's own keys; ``--allow-mixed KEY`` pools jobs that differ in KEY and shows it as
a column. A folder holding jobs of more than one launch is refused (kiwi.study.sweeps).

Writes results.md (per regime: the base, mean ± std per variant, paired 95% intervals against both
controls, the reading), summary.csv, results.csv (every job), base_curves.csv, job_curves.csv,
curves.png and differences.png into ``--out`` (default: <first multirun dir>/study).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kiwi import tables
from kiwi.study.definition import check_definitions
from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS, StudyJob, load_jobs
from kiwi.study.plot import mean_curve, plot_curves, plot_differences
from kiwi.study.stats import last_doubling_improvement
from kiwi.study.table import (
    COLUMNS,
    IDENTITY_RTOL,
    SUMMARY_COLUMNS,
    SUMMARY_CSV_COLUMNS,
    all_rows,
    groups,
    summary_rows,
    to_markdown,
    write_csv,
)
from kiwi.study.trend import MIN_REGIMES, N_BOOT, Trend, regime_x, trend_markdown, trends, write_trends
from kiwi.train.budget import FLOPS_TOLERANCE

log = logging.getLogger(__name__)


@dataclass
class BaseInfo:
    """The base a regime continues: its size, training tokens and held-out curve (its own report)."""

    regime: str
    report: Path | None
    n_params: int | None = None
    tokens: int | None = None
    ppl: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    last_doubling: tuple[int, float, float] | None = None  # (half tokens, ppl there, improvement %)
    fit_wall_s: float | None = None

    @property
    def tokens_per_param(self) -> float | None:
        return self.tokens / self.n_params if self.tokens and self.n_params else None


@dataclass
class Gathered:
    jobs: list[StudyJob]
    incomplete: list[Path]
    rows: list[dict]
    summary: list[dict]
    bases: dict[str, BaseInfo]
    files: dict[str, Path]
    trends: list[Trend] = field(default_factory=list)
    unfitted: list[str] = field(default_factory=list)   # settings of a regime sweep not fitted, and why


def base_report_path(base_dir: str | Path) -> Path:
    """Where experiment=study_*_base writes its run (report and held-out curve): beside the export."""
    return Path(str(base_dir) + ".run") / "perplexity_report.json"


def base_info(regime: str, base_dir: str | None) -> BaseInfo:
    path = base_report_path(base_dir) if base_dir else None
    if path is None or not path.exists():
        return BaseInfo(regime, None)
    report = json.loads(path.read_text())
    curve = [(int(p["tokens"]), float(p["ppl"])) for p in report.get("val_curve", [])]
    return BaseInfo(regime, path, report.get("n_params"), report.get("tokens"), report.get("val_ppl_after"),
                    curve, last_doubling_improvement(curve), report.get("fit_wall_s"))


def environment_line() -> str:
    import os

    import lightning
    import torch
    import transformers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}"
            f" ({cpus} CPUs), Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, lightning {lightning.__version__}")


def identity_summary(rows: Sequence[dict]) -> str:
    ident = [r for r in rows if r["identity_init"] and r["strategy"] != "none"]
    if not ident:
        return "No identity_init variants in this sweep."
    ident = [r for r in ident if r.get("step0_vs_base") is not None]
    if not ident:
        return "No control job (the base at step 0) finished yet to compare the identity_init variants with."
    worst = max(abs(r["step0_vs_base"]) for r in ident)
    verdict = "all start at the base" if worst <= IDENTITY_RTOL else "NOT all start at the base"
    return (f"identity_init variants: {len(ident)} jobs, largest |step-0 ppl / base ppl - 1| = {worst:.1e} "
            f"({verdict}, tolerance {IDENTITY_RTOL:g}).")


def base_lines(b: BaseInfo) -> list[str]:
    if b.report is None:
        return ["The base's own report (its held-out curve) was not found beside its export."]
    line = (f"Base: {b.n_params:,} parameters trained on {b.tokens:,} tokens = "
            f"**{b.tokens_per_param:.1f} tokens/parameter**, final held-out perplexity {b.ppl:.2f}.")
    if b.last_doubling:
        half, p_half, imp = b.last_doubling
        line += (f" Over its last doubling of tokens ({half:,} -> {b.tokens:,}) its held-out perplexity "
                 f"improved by **{imp:.2f}%** ({p_half:.2f} -> {b.ppl:.2f}; "
                 f"{'under' if imp < 2 else 'NOT under'} the 2% of an over-trained base).")
    return [line]


def reading(summary: Sequence[dict], regime: str) -> list[str]:
    """What the intervals establish and what they do not, in words."""
    rows = [r for r in summary if r["regime"] == regime]
    ctrl = next((r for r in rows if r["variant"] == CONTROL_TOKENS), None)
    noise = (100 * ctrl["ppl_end_std"] / ctrl["ppl_end_mean"]) if ctrl and ctrl["ppl_end_std"] else None
    established, open_ = [], []
    for r in rows:
        for ctrl_name, label in ((CONTROL_TOKENS, "equal tokens"), (CONTROL_FLOPS, "equal FLOPs")):
            d = r["diffs"].get(ctrl_name)
            if d is None or d.low is None:
                continue
            text = f"{r['variant']} vs {label}: {d.mean:+.2f}% [{d.low:+.2f}, {d.high:+.2f}]"
            if d.excludes_zero:
                established.append(text + (" (better)" if d.high < 0 else " (worse)"))
            else:
                open_.append(text)
    out = []
    if noise is not None:
        out.append(f"Seed-to-seed std of the equal-token control's final perplexity: {noise:.2f}% of its mean.")
    if noise is not None:
        small = [f"{r['variant']} vs {label}" for r in rows for c, label in
                 ((CONTROL_TOKENS, "equal tokens"), (CONTROL_FLOPS, "equal FLOPs"))
                 if r["diffs"].get(c) is not None and abs(r["diffs"][c].mean) < noise]
        out.append(("Mean differences smaller than that std (within the seed-to-seed spread of one run): "
                    + "; ".join(small) + ".") if small else
                   "Every mean difference is larger than that std.")
    if bad := [f"{r['variant']} (lr {r['lr']:g}, seeds {r['diverged_seeds']})" for r in rows if r["diverged_seeds"]]:
        out.append("Diverged (NaN/inf perplexity; no mean, no interval, nothing paired with it): "
                   + "; ".join(bad) + ".")
    if unequal := [f"{r['variant']} (lr {r['lr']:g}): {r['flops_mismatch'][0]:.4g} vs control_flops "
                   f"{r['flops_mismatch'][1]:.4g} ({r['flops_vs_flops_ctrl_pct']:+.1f}%)"
                   for r in rows if r.get("flops_mismatch")]:
        out.append("Not equal compute (train FLOPs differ from the equal-FLOPs control's by more than the "
                   "tolerance; read their equal-FLOPs comparison as unequal): " + "; ".join(unequal) + ".")
    out.append("Established (95% interval excludes zero): " + ("; ".join(established) if established else
                                                              "nothing") + ".")
    out.append("Not established (interval includes zero): " + ("; ".join(open_) if open_ else "nothing") + ".")
    return out


def markdown_report(dirs: Sequence[Path], g: Gathered, plot_name: str, mixed: Sequence[str] = ()) -> str:
    wall = sum(j.wall_s or 0 for j in g.jobs) + sum(b.fit_wall_s or 0 for b in g.bases.values())
    seeds = sorted({j.seed for j in g.jobs})
    lines = [
        "# DUS study: " + ", ".join(str(d) for d in dirs),
        "",
        f"{len(g.jobs)} finished jobs" + (f", {len(g.incomplete)} unfinished" if g.incomplete else "")
        + f"; seeds {seeds}. Sum of training (fit) wall time, bases included: {wall / 60:.1f} min. "
        f"Gathered {environment_line()}.",
        "",
        identity_summary(g.rows),
        "",
        "Paired differences: per seed 100 (variant / control - 1) of the final held-out perplexity (negative "
        "= better than the control), mean and 95% t interval over seeds; * = the interval excludes zero.",
        "",
    ]
    for regime, b in g.bases.items():
        lines += [f"## Base at {regime}", "", *base_lines(b), "",
                  to_markdown([r for r in g.summary if r["regime"] == regime], (*SUMMARY_COLUMNS[1:], *mixed)),
                  *reading(g.summary, regime), ""]
    if g.trends or g.unfitted:
        lines += ["## Across regimes: the equal-FLOPs benefit vs the base's training", "",
                  f"Per setting with at least {MIN_REGIMES} regimes (kiwi.study.trend): benefit = 100 (1 - ppl / "
                  "ppl of the equal-FLOPs control) in %, and ln(ppl control / ppl) in nats, paired by seed; the "
                  "line fitted to the regimes' means by least squares (chi2/dof against their standard errors), "
                  "intervals over "
                  f"{N_BOOT} bootstrap resamples of the seeds. The value at 36k tokens/param is an extrapolation.",
                  "", trend_markdown(g.trends, g.unfitted), "",
                  *(["![benefit vs tokens/param](benefit.png)", ""] if g.trends else [])]
    lines += [f"![held-out perplexity vs tokens]({plot_name})", "",
              "![paired differences against both controls, 95% intervals](differences.png)", "", "## Every job", "",
              "Deltas against the controls of the same regime and seed (at the same lr when the controls ran at "
              "several).", "",
              to_markdown(g.rows, (*COLUMNS, *mixed))]
    if mixed:
        lines += [f"Pooled across differing training definitions (--allow-mixed): {', '.join(mixed)}; "
                  "their values are the last columns of the tables.", ""]
    if g.incomplete:
        lines += ["Unfinished jobs (no perplexity_report.json): " + ", ".join(str(p) for p in g.incomplete), ""]
    return "\n".join(lines)


def write_base_curves(bases: dict[str, BaseInfo], path: Path) -> Path:
    return tables.write_csv(path, ["regime", "n_params", "tokens", "ppl"],
                       [[b.regime, b.n_params, tokens, ppl] for b in bases.values() for tokens, ppl in b.curve])


def write_job_curves(jobs: Sequence[StudyJob], path: Path) -> Path:
    """Per regime, variant and lr the held-out curve over seeds (what curves.png draws), as numbers."""
    by = groups([j for j in jobs if j.curve])
    return tables.write_csv(path, ["regime", "variant", "lr", "seeds", "tokens", "ppl_mean", "ppl_std"],
                       [[regime, variant, lr, len(members), tokens, mean, std]
                        for (regime, variant, lr), members in by.items() for tokens, mean, std in mean_curve(members)])


def gather(multirun_dirs: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
           allow_mixed: Sequence[str] = (), flops_tolerance: float = FLOPS_TOLERANCE) -> Gathered:
    """Read the sweeps, check that they pool only jobs of one definition (``allow_mixed`` keys aside), and
    write the tables and plots; raises ValueError (one line) before writing anything otherwise."""
    dirs = [Path(multirun_dirs)] if isinstance(multirun_dirs, (str, Path)) else [Path(d) for d in multirun_dirs]
    dirs = list({d.resolve(): d for d in dirs}.values())  # a directory given twice is read once
    jobs, incomplete = [], []
    for d in dirs:
        found, missing = load_jobs(d)
        jobs += found
        incomplete += missing
    base_dirs: dict[str, set] = {}
    for job in jobs:
        base_dirs.setdefault(job.regime, set()).add(job.base_dir)
    if mixed := {regime: sorted(map(str, d)) for regime, d in base_dirs.items() if len(d) > 1}:
        raise ValueError(f"jobs continuing different bases share a regime label, which would pair them: {mixed}; "
                         "gather each base's sweeps separately")
    check_definitions(groups(jobs), allow_mixed)
    bases = {}
    for job in sorted(jobs, key=lambda j: (j.base_tokens_per_param or 0.0, j.regime)):
        bases.setdefault(job.regime, base_info(job.regime, job.base_dir))
    out = Path(out_dir) if out_dir else dirs[0] / "study"
    out.mkdir(parents=True, exist_ok=True)
    mixed = tuple(allow_mixed)
    g = Gathered(jobs, incomplete, all_rows(jobs, mixed), summary_rows(jobs, mixed, flops_tolerance), bases, {})
    for r in g.summary:
        if r.get("flops_mismatch"):
            log.warning("%s %s (lr %g): train FLOPs %.4g vs its equal-FLOPs control's %.4g (%+.1f%%, tolerance "
                        "%g%%): not equal compute", r["regime"], r["variant"], r["lr"], *r["flops_mismatch"],
                        r["flops_vs_flops_ctrl_pct"], 100 * flops_tolerance)
    g.files["csv"] = write_csv(g.rows, (*COLUMNS, *mixed), out / "results.csv")
    g.files["summary_csv"] = write_csv(g.summary, (*SUMMARY_CSV_COLUMNS, *mixed), out / "summary.csv")
    g.files["base_curves"] = write_base_curves(bases, out / "base_curves.csv")
    g.files["job_curves"] = write_job_curves(jobs, out / "job_curves.csv")
    g.files["plot"] = plot_curves(jobs, out / "curves.png")
    g.files["differences_plot"] = plot_differences(g.summary, out / "differences.png")
    if len(regime_x(jobs, bases)) >= MIN_REGIMES:  # a regime sweep: fit what has enough regimes, name the rest
        g.trends, g.unfitted = trends(jobs, bases)
        g.files.update(write_trends(g.trends, out) if g.trends else {})
    g.files["markdown"] = out / "results.md"
    g.files["markdown"].write_text(markdown_report(dirs, g, g.files["plot"].name, mixed))
    return g


def log_to_wandb(g: Gathered, mode: str = "auto", project: str | None = None, group: str | None = None):
    """One extra run in the study's W&B group (offline without a login) holding the tables and the plot."""
    from kiwi.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    project = project or next((j.wandb_project for j in g.jobs if j.wandb_project), "kiwi")
    group = group or next((j.wandb_group for j in g.jobs if j.wandb_group), "dus_study")
    run = wandb.init(project=project, group=group, job_type="gather", name=f"{group}-gather", mode=mode,
                     dir=str(g.files["markdown"].parent), reinit="finish_previous")
    tables = {"study/all_jobs": (g.rows, COLUMNS), "study/summary": (g.summary, SUMMARY_CSV_COLUMNS)}
    for key, (rows, columns) in tables.items():
        run.log({key: wandb.Table(columns=list(columns), data=[[r.get(c) for c in columns] for r in rows])})
    run.log({"study/curves": wandb.Image(str(g.files["plot"])),
             "study/differences": wandb.Image(str(g.files["differences_plot"])),
             **({"study/benefit": wandb.Image(str(g.files["benefit_plot"]))} if "benefit_plot" in g.files else {})})
    run.finish()
    return run


def main(argv: list[str] | None = None) -> Gathered:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dirs", nargs="+", help="`train.py -m experiment=study_cpu ...` sweep directories")
    parser.add_argument("--out", default=None, help="output directory (default: <first multirun dir>/study)")
    parser.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"])
    parser.add_argument("--wandb-group", default=None, help="default: the jobs' logger.wandb.group")
    parser.add_argument("--allow-mixed", action="append", default=[], metavar="KEY",
                        help="pool jobs whose training definitions differ in KEY (a dotted config key; repeatable); "
                             "the tables show it")
    parser.add_argument("--flops-tolerance", type=float, default=FLOPS_TOLERANCE,
                        help="relative FLOPs gap past which an equal-FLOPs comparison is marked unequal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        g = gather(args.multirun_dirs, args.out, args.allow_mixed, args.flops_tolerance)
    except (FileNotFoundError, ValueError) as err:  # no jobs, twins, mixed bases/definitions, stale jobs: one line
        raise SystemExit(f"kiwi.study.gather: error: {err}") from None
    log_to_wandb(g, args.wandb, group=args.wandb_group)
    print(g.files["markdown"].read_text())
    for name, path in g.files.items():
        print(f"{name}: {path}")
    return g


if __name__ == "__main__":
    main()
