"""Results on disk and in W&B: results.json, one-row-per-model tables (markdown, CSV), a bar chart.

Every model is compared with the first row (the base model when ``compare_base`` is on), so the table
answers "what did up-scaling / training change" directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from kiwi import tables
from kiwi.plotting import pyplot, save_figure

# Metrics shown in tables and charts (all of them, stderrs included, are in results.json).
TABLE_METRICS = (
    "acc",
    "acc_norm",
    "ppl_gold",
    "ppl_text",
    "ppl_gold_mean",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
    "ppl",
)
CHART_METRICS = ("acc_norm", "ppl_gold", "word_perplexity", "ppl")

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # model -> task -> metric -> value


def table_columns(results: Results) -> list[tuple[str, str]]:
    cols: list[tuple[str, str]] = []
    for tasks in results.values():
        for task, metrics in tasks.items():
            for metric in TABLE_METRICS:
                if metric in metrics and (task, metric) not in cols:
                    cols.append((task, metric))
    return cols


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def table_rows(results: Results) -> tuple[list[str], list[list]]:
    """Header and rows: model, then per (task, metric) the value and its delta vs the first model."""
    cols = table_columns(results)
    models = list(results)
    base = results[models[0]] if models else {}
    header = ["model"]
    for task, metric in cols:
        header += [f"{task}/{metric}", f"{task}/{metric}_delta"]
    rows = []
    for model in models:
        row: list = [model]
        for task, metric in cols:
            value = results[model].get(task, {}).get(metric)
            ref = base.get(task, {}).get(metric)
            row += [value, None if value is None or ref is None else value - ref]
        rows.append(row)
    return header, rows


def markdown_table(results: Results) -> str:
    cols = table_columns(results)
    models = list(results)
    base = results[models[0]] if models else {}
    rows = []
    for i, model in enumerate(models):
        cells = [model]
        for task, metric in cols:
            value = results[model].get(task, {}).get(metric)
            ref = base.get(task, {}).get(metric)
            cell = _fmt(value)
            if i > 0 and value is not None and ref is not None:
                cell += f" ({value - ref:+.4f})"
            cells.append(cell)
        rows.append(cells)
    header = ["model", *(f"{t} {m}" for t, m in cols)]
    table = tables.markdown_table(header, rows, numeric=[False] + [True] * len(cols))
    note = f"Deltas in parentheses are against the first row ({models[0]})." if models else ""
    return table + "\n" + note + "\n"


def plot_results(results: Results, path: Path) -> Path:
    """results.png: see results_figure."""
    return save_figure(results_figure(results), path)


def results_figure(results: Results):
    """One panel per (task, headline metric), one bar per model."""
    plt = pyplot()
    panels = [(t, m) for t, m in table_columns(results) if m in CHART_METRICS]
    if not panels:
        panels = table_columns(results)[:4]
    models = list(results)
    n = max(1, len(panels))
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (task, metric) in zip(axes.flat, panels, strict=False):
        values = [results[m].get(task, {}).get(metric, float("nan")) for m in models]
        errors = [results[m].get(task, {}).get(f"{metric}_stderr") for m in models]
        errors = [e if isinstance(e, (int, float)) and math.isfinite(e) else 0.0 for e in errors]
        bars = ax.bar(range(len(models)), values, color=[colors[i % len(colors)] for i in range(len(models))],
                      yerr=errors if any(errors) else None, capsize=4, ecolor="0.25")
        # every bar says its value, so a panel of zeros reads "0", not empty; ±stderr where there is one
        ax.bar_label(bars, labels=[_bar_label(v, e) for v, e in zip(values, errors, strict=True)], fontsize=7,
                     padding=2)
        finite = [v + e for v, e in zip(values, errors, strict=True) if math.isfinite(v)]
        top = max(finite, default=0.0)
        if metric.startswith("acc"):
            ax.set_ylim(0, max(1.0, top) * 1.15)
        else:
            ax.set_ylim(0, (top or 1.0) * 1.18)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        better = "higher" if metric.startswith("acc") else "lower"
        ax.set_title(f"{task}\n{metric} ({better} is better)", fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _bar_label(value: float, stderr: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3g}".replace("e+0", "e").replace("e+", "e")
    return text + (f"\n±{stderr:.2g}" if stderr else "")


def write_report(results: Results, out_dir: Path, meta: Mapping | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "csv": out_dir / "results.csv",
        "chart": out_dir / "results.png",
    }
    payload = {"results": results, **({"meta": dict(meta)} if meta else {})}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(results), encoding="utf-8")
    tables.write_csv(paths["csv"], *table_rows(results))
    plot_results(results, paths["chart"])
    return paths


def log_to_loggers(loggers: list, results: Results, chart: Path, figures: Mapping[str, Path] | None = None) -> None:
    """W&B gets the table, the chart and the tasks' own ``figures`` (W&B key -> PNG); other Lightning
    loggers get the flat metrics."""
    flat = {
        f"eval/{model}/{task}/{metric}": value
        for model, tasks in results.items()
        for task, metrics in tasks.items()
        for metric, value in metrics.items()
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))
    }
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb  # lazy: wandb is heavy to import and only needed with a W&B logger

            header, rows = table_rows(results)
            logger.experiment.log(
                {
                    "eval/results": wandb.Table(columns=header, data=rows),
                    "eval/chart": wandb.Image(str(chart)),
                    **{key: wandb.Image(str(png)) for key, png in (figures or {}).items()},
                    **flat,
                }
            )
        else:
            logger.log_metrics(flat)
            if hasattr(logger, "save"):
                logger.save()
