"""The lever search of a study design (kiwi.study.design): at the most trained regime, every setting of every
gather (the main one at 1x the continuation budget, and one per other budget) against both controls of its
own gather, in one table, with the headline the issue asks for: an interval against the equal-FLOPs control
entirely below zero, or, if none is, the tightest one reached."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from kiwi import tables
from kiwi.study.jobs import CONTROL_FLOPS, CONTROL_TOKENS
from kiwi.train.budget import FLOPS_TOLERANCE


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _interval(row: Mapping[str, str], prefix: str) -> tuple[float, float, float] | None:
    mean, low, high = (_float(row.get(f"{prefix}_{k}")) for k in ("mean", "low", "high"))
    return None if None in (mean, low, high) else (mean, low, high)


def lever_rows(outs: Mapping[str | None, Path], regime: str) -> list[dict]:
    """One row per (budget, setting, lr) at ``regime``, read back from each gather's summary.csv."""
    rows = []
    for name, out in outs.items():
        budget = "1x" if name is None else name.removeprefix("budget_")
        path = Path(out) / "summary.csv"
        if not path.exists():
            raise FileNotFoundError(f"lever search: {path} is missing (did that gather run?)")
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["regime"] != regime or row["variant"] in (CONTROL_TOKENS, CONTROL_FLOPS):
                    continue
                rows.append({"budget": budget, "variant": row["variant"], "lr": row["lr"], "seeds": row["seeds"],
                             "vs_tokens": _interval(row, "vs_tokens"), "vs_flops": _interval(row, "vs_flops"),
                             "tokens": row["tokens"], "flops_gap": _float(row.get("flops_vs_flops_ctrl_pct"))})
    return rows


def unequal_flops(row: Mapping) -> bool:
    """Whether the setting's training FLOPs miss its equal-FLOPs control's by more than the tolerance."""
    return row.get("flops_gap") is not None and abs(row["flops_gap"]) > 100 * FLOPS_TOLERANCE


def _cell(interval: tuple[float, float, float] | None, flag: bool = False) -> str:
    if interval is None:
        return "n/a"
    mean, low, high = interval
    star = " *" if low > 0 or high < 0 else ""
    return f"{mean:+.2f}% [{low:+.2f}, {high:+.2f}]{star}{' †' if flag else ''}"


def _gap(row: Mapping) -> str:
    return "n/a" if row.get("flops_gap") is None else f"{row['flops_gap']:+.1f}%"


def headline(rows: list[dict]) -> str:
    """The settings whose interval against the equal-FLOPs control lies below zero, or the tightest one."""
    better = [r for r in rows if r["vs_flops"] and r["vs_flops"][2] < 0]
    if better:
        return ("Better than the equal-FLOPs control (95% interval below zero): "
                + "; ".join(f"{r['variant']} at {r['budget']} {_cell(r['vs_flops'], unequal_flops(r))}"
                            for r in better) + ".")
    known = [r for r in rows if r["vs_flops"]]
    if not known:
        return "No setting has an interval against the equal-FLOPs control."
    best = min(known, key=lambda r: r["vs_flops"][2])
    return ("No interval against the equal-FLOPs control lies below zero. The closest: "
            f"{best['variant']} at {best['budget']} {_cell(best['vs_flops'], unequal_flops(best))} (upper bound "
            f"{best['vs_flops'][2]:+.2f}%).")


def write_lever_search(outs: Mapping[str | None, Path], regime: str, path: Path) -> Path:
    rows = lever_rows(outs, regime)
    order = {"0.5x": 0, "1x": 1, "2x": 2}
    rows.sort(key=lambda r: (r["variant"], order.get(r["budget"], 9), r["budget"]))
    table = tables.markdown_table(
        ["setting", "budget", "lr", "seeds", "tokens", "FLOPs vs equal-FLOPs ctrl", "vs equal-token ctrl (95% CI)",
         "vs equal-FLOPs ctrl (95% CI)"],
        [[r["variant"], r["budget"], r["lr"], r["seeds"], r["tokens"], _gap(r), _cell(r["vs_tokens"]),
          _cell(r["vs_flops"], unequal_flops(r))] for r in rows],
        numeric=[False, False, True, True, True, True, False, False])
    path.write_text(f"# Lever search at {regime}\n\nPaired differences of the final held-out perplexity against "
                    "the controls of the same budget (negative = better); * = the interval excludes zero; † = the "
                    f"setting's training FLOPs miss its equal-FLOPs control's by more than {100 * FLOPS_TOLERANCE:g}% "
                    "(whole-step rounding), so that comparison is not at equal compute.\n\n"
                    f"{table}\n\n{headline(rows)}\n")
    return path
