"""One table of every job of a ``train.py -m`` sweep, in the sweep dir: summary.md, summary.csv, summary.png.

A Hydra callback (conf/train.yaml, ``hydra.callbacks.sweep_summary``), so it works with any launcher. The
table is rebuilt from the job directories themselves (``.hydra/overrides.yaml``, perplexity_report.json,
the FAILED / INTERRUPTED files kiwi.cli writes), never from in-memory job returns: a job that ended in
``kiwi: error:`` leaves Hydra by SystemExit, which skips ``on_job_end`` and aborts the sweep before
``on_multirun_end``, so the summary is also written when the launching process exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kiwi.cli import FAILED, INTERRUPTED
from kiwi.plotting import pyplot, save_figure
from kiwi.tables import markdown_table, write_csv

log = logging.getLogger(__name__)

REPORT = "perplexity_report.json"  # kiwi.train.run.write_perplexity_report
# (column, key in perplexity_report.json)
METRICS = (("val/ppl", "val_ppl_after"), ("tokens", "tokens"), ("train_flops", "train_flops"),
           ("fit_wall_s", "fit_wall_s"))


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job: its overrides, status (finished / interrupted / failed / running), reason and report values."""
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    row: dict[str, Any] = {"job": job_dir.name, "overrides": dict(o.split("=", 1) for o in overrides if "=" in o)}
    report_path = job_dir / REPORT
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for column, key in METRICS:
        row[column] = report.get(key)
    row["status"], row["reason"] = "running", ""  # no report and no marker: not ended (or killed hard)
    for marker, status in ((FAILED, "failed"), (INTERRUPTED, "interrupted")):
        if (job_dir / marker).exists():
            lines = (job_dir / marker).read_text(encoding="utf-8").strip().splitlines()
            row["status"], row["reason"] = status, lines[0] if lines else ""
            return row
    if report:
        row["status"] = "finished"
    return row


def sweep_rows(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    """(the override keys whose values differ between jobs, one row per job dir in job-number order)."""
    jobs = [d for d in Path(sweep_dir).iterdir() if (d / ".hydra" / "overrides.yaml").exists()]
    order = lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name)  # noqa: E731
    rows = [job_row(d) for d in sorted(jobs, key=order)]
    keys = sorted({k for r in rows for k in r["overrides"]})
    differing = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    return differing, rows


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e5 else f"{value:.3f}"
    return "" if value is None else value


def write_summary(sweep_dir: Path) -> tuple[list[str], list[list]]:
    """Write summary.md, summary.csv and summary.png into ``sweep_dir``; returns the table (header, rows)."""
    sweep_dir = Path(sweep_dir)
    differing, rows = sweep_rows(sweep_dir)
    if not rows:
        return [], []
    header = ["job", *differing, "status", *(c for c, _ in METRICS), "reason"]
    values = [[r["job"], *(r["overrides"].get(k) for k in differing), r["status"],
               *(r[c] for c, _ in METRICS), r["reason"]] for r in rows]
    numeric = [False] * (len(differing) + 2) + [True] * len(METRICS) + [False]
    md = markdown_table(header, [[_cell(v) for v in row] for row in values], numeric)
    done = sum(r["status"] == "finished" for r in rows)
    _replace(sweep_dir / "summary.md", f"# Sweep summary: {sweep_dir}\n\n{done} of {len(rows)} jobs finished.\n\n{md}")
    tmp = sweep_dir / f".summary.csv.{os.getpid()}"
    write_csv(tmp, header, values)
    os.replace(tmp, sweep_dir / "summary.csv")
    plot_summary(rows, differing, sweep_dir / "summary.png")
    return header, values


def _replace(path: Path, text: str) -> None:
    """Write atomically: jobs of a parallel launcher may rewrite the summary at the same time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def log_to_wandb(config: DictConfig, sweep_dir: Path, header: list[str], values: list[list]) -> None:
    """The table as a W&B Table, in one short run of the sweep's group (job_type sweep_summary), when the
    sweep logs to W&B (``logger.wandb``); offline without a login, as the jobs' runs are (kiwi.loggers)."""
    wb = OmegaConf.select(config, "logger.wandb")
    if not wb or not values:
        return
    from kiwi.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(str(wb.get("mode", "auto")))
    if mode == "disabled":
        return
    import wandb

    group = wb.get("group")
    run = wandb.init(project=wb.get("project"), group=group, job_type="sweep_summary", name=f"{group}-sweep-summary",
                     dir=str(sweep_dir), mode=mode, reinit="create_new",
                     settings=wandb.Settings(quiet=True, console="off"))
    run.log({"sweep_summary": wandb.Table(columns=header, data=[[_wandb_cell(v) for v in row] for row in values])})
    run.finish()


def _wandb_cell(value: Any) -> Any:
    return value if isinstance(value, (int, float)) or value is None else str(value)


def plot_summary(rows: list[dict], differing: list[str], path: Path) -> None:
    """summary.png: see summary_figure."""
    save_figure(summary_figure(rows, differing), path)


def summary_figure(rows: list[dict], differing: list[str]):
    """Final val/ppl per job as dots; a job without one is drawn as a red cross labelled with its status."""
    plt = pyplot()
    labels = [" ".join([f"#{r['job']}", *(f"{k}={r['overrides'].get(k)}" for k in differing)]) for r in rows]
    ppl = [r["val/ppl"] for r in rows]
    known = [p for p in ppl if p is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    pad = max(hi - lo, abs(hi) * 0.05, 1e-9)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    for y, r, p in zip(ys, rows, ppl, strict=True):
        if p is not None:
            ax.plot(p, y, "o", color="tab:blue")
            ax.annotate(f"{p:.3f}", (p, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        else:  # at the axis' left edge (axes coordinates): it must not read as a perplexity value
            edge = ax.get_yaxis_transform()
            ax.plot(0.02, y, "x", color="tab:red", markersize=9, mew=2, transform=edge, clip_on=False)
            ax.annotate(f"{r['status']}: no val/ppl", (0.02, y), xycoords=edge, textcoords="offset points",
                        xytext=(8, -3), color="tab:red", fontsize=9)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("final held-out perplexity (val/ppl, lower is better)")
    ax.set_title("sweep: final val/ppl per job (red x: job without a final value)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


class SweepSummary(Callback):
    """Rewrite the sweep's summary after each job and at the end of the sweep, and once more when the
    launching process exits (a failed job can abort the sweep before ``on_multirun_end``)."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._write)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
            self._write(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The whole sweep ran (no job aborted it): the files, and the table to W&B once."""
        sweep_dir = Path(config.hydra.sweep.dir)
        table = self._write(sweep_dir)
        if table:
            try:
                log_to_wandb(config, sweep_dir, *table)
            except Exception as err:  # W&B trouble must not fail a finished sweep; the files are written
                log.warning("sweep summary not logged to W&B: %s: %s", type(err).__name__, err)
        log.info("sweep summary: %s", sweep_dir / "summary.md")

    def _write(self, sweep_dir: Path | None = None) -> tuple | None:
        sweep_dir = sweep_dir or self._sweep_dir
        if sweep_dir is None or not Path(sweep_dir).is_dir():
            return None
        try:
            return write_summary(sweep_dir)
        except Exception as err:  # a summary must never turn a finished sweep into a failed one
            log.warning("sweep summary not written in %s: %s: %s", sweep_dir, type(err).__name__, err)
            return None
