"""Gather a tiny_dus multirun into one table (markdown + CSV) and one plot (PNG), logged to W&B.

    python -m kiwi.study.gather logs/tiny_dus/multiruns/<time> [--out DIR] [--wandb auto|offline|disabled]

Writes results.md (best lr per variant, then every job), results.csv, best.csv and curves.png into
``--out`` (default: <multirun dir>/study).
"""

from __future__ import annotations

import argparse
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kiwi.study.jobs import StudyJob, load_jobs
from kiwi.study.plot import plot_curves
from kiwi.study.table import (
    BEST_COLUMNS,
    COLUMNS,
    IDENTITY_RTOL,
    all_rows,
    base_ppl,
    best_jobs,
    best_rows,
    to_markdown,
    write_csv,
)

log = logging.getLogger(__name__)


@dataclass
class Gathered:
    jobs: list[StudyJob]
    incomplete: list[Path]
    rows: list[dict]
    best: list[dict]
    files: dict[str, Path]


def environment_line() -> str:
    import lightning
    import torch
    import transformers

    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}"
            f" ({_cpus()} CPUs), Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, lightning {lightning.__version__}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def identity_summary(rows: Sequence[dict]) -> str:
    ident = [r for r in rows if r["init"] == "identity"]
    if not ident:
        return "No identity_init variants in this sweep."
    ident = [r for r in ident if r.get("step0_vs_base") is not None]
    if not ident:
        return "No control job (the base at step 0) finished yet to compare the identity_init variants with."
    worst = max(abs(r["step0_vs_base"]) for r in ident)
    verdict = "all start at the base" if worst <= IDENTITY_RTOL else "NOT all start at the base"
    return (f"identity_init variants: {len(ident)} jobs, largest |step-0 ppl / base ppl - 1| = {worst:.1e} "
            f"({verdict}, tolerance {IDENTITY_RTOL:g}).")


def markdown_report(multirun_dir: Path, g: Gathered, plot_name: str) -> str:
    base = base_ppl(g.jobs)
    wall = sum(j.wall_s or 0 for j in g.jobs)
    lines = [
        f"# DUS study: {multirun_dir}",
        "",
        f"{len(g.jobs)} finished jobs" + (f", {len(g.incomplete)} unfinished" if g.incomplete else "")
        + (f"; base held-out perplexity {base:.3f}." if base is not None else "."),
        f"Sum of training (fit) wall time: {wall / 60:.1f} min. Gathered {environment_line()}.",
        "",
        identity_summary(g.rows),
        "",
        "Deltas are relative differences of the final held-out perplexity (negative = better than the control).",
        "",
        "## Best learning rate per variant",
        "",
        "Deltas against each control at its own best learning rate.",
        "",
        to_markdown(g.best, BEST_COLUMNS),
        f"![held-out perplexity vs tokens]({plot_name})",
        "",
        "## Every job",
        "",
        "Deltas against the controls trained at the same learning rate.",
        "",
        to_markdown(g.rows, COLUMNS),
    ]
    if g.incomplete:
        lines += ["Unfinished jobs (no perplexity_report.json): " + ", ".join(p.name for p in g.incomplete), ""]
    return "\n".join(lines)


def gather(multirun_dir: str | Path, out_dir: str | Path | None = None) -> Gathered:
    multirun_dir = Path(multirun_dir)
    out = Path(out_dir) if out_dir else multirun_dir / "study"
    out.mkdir(parents=True, exist_ok=True)
    jobs, incomplete = load_jobs(multirun_dir)
    g = Gathered(jobs, incomplete, all_rows(jobs), best_rows(jobs), {})
    g.files["csv"] = write_csv(g.rows, COLUMNS, out / "results.csv")
    g.files["best_csv"] = write_csv(g.best, BEST_COLUMNS, out / "best.csv")
    g.files["plot"] = plot_curves(best_jobs(jobs), out / "curves.png", base_ppl(jobs))
    g.files["markdown"] = out / "results.md"
    g.files["markdown"].write_text(markdown_report(multirun_dir, g, g.files["plot"].name))
    return g


def log_to_wandb(g: Gathered, mode: str = "auto", project: str | None = None, group: str | None = None):
    """One extra run in the study's W&B group (offline without a login) holding the tables and the plot."""
    from kiwi.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    project = project or next((j.wandb_project for j in g.jobs if j.wandb_project), "kiwi")
    group = group or next((j.wandb_group for j in g.jobs if j.wandb_group), "tiny_dus")
    run = wandb.init(project=project, group=group, job_type="gather", name=f"{group}-gather", mode=mode,
                     dir=str(g.files["markdown"].parent), reinit="finish_previous")
    tables = {"study/all_jobs": (g.rows, COLUMNS), "study/best_lr": (g.best, BEST_COLUMNS)}
    for key, (rows, columns) in tables.items():
        run.log({key: wandb.Table(columns=list(columns), data=[[r.get(c) for c in columns] for r in rows])})
    run.log({"study/curves": wandb.Image(str(g.files["plot"]))})
    run.finish()
    return run


def main(argv: list[str] | None = None) -> Gathered:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", help="a `train.py -m experiment=tiny_dus ...` sweep directory")
    parser.add_argument("--out", default=None, help="output directory (default: <multirun_dir>/study)")
    parser.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"])
    parser.add_argument("--wandb-group", default=None, help="default: the jobs' logger.wandb.group")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    g = gather(args.multirun_dir, args.out)
    log_to_wandb(g, args.wandb, group=args.wandb_group)
    print(g.files["markdown"].read_text())
    for name, path in g.files.items():
        print(f"{name}: {path}")
    return g


if __name__ == "__main__":
    main()
