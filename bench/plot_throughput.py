"""Bar chart of one or more markdown tables written by bench/train_throughput.py (full optimizer step rows).

    python bench/plot_throughput.py bench/results/h100-2026-11-27/train_throughput*.md \
        --out bench/results/h100-2026-11-27/train_throughput.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kiwi.plotting import pyplot, save_figure


def read_rows(paths: list[Path]) -> list[dict]:
    """Rows of mode ``step`` with numbers, in file order: variant, tok/s, peak GiB."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 10 or cells[5] != "step" or not cells[6].replace(",", "").isdigit():
                continue
            rows.append({"variant": cells[0], "tok_s": float(cells[6].replace(",", "")),
                         "peak": float(cells[9]) if cells[9] not in ("-", "") else None})
    if not rows:
        raise ValueError(f"no 'step' rows with numbers in {[str(p) for p in paths]}")
    return rows


def plot(rows: list[dict], out: Path, target: float | None = None) -> Path:
    return save_figure(throughput_figure(rows, target), out)


def throughput_figure(rows: list[dict], target: float | None = None):
    """A bar per variant (HF baselines grey), labelled with tok/s and peak memory."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.5))
    names = [r["variant"] for r in rows]
    colors = ["tab:gray" if n.startswith("hf_") else "tab:green" for n in names]
    bars = ax.barh(names, [r["tok_s"] for r in rows], color=colors)
    for bar, r in zip(bars, rows, strict=True):
        note = f"{r['tok_s']:,.0f} tok/s" + (f", {r['peak']:.1f} GiB" if r["peak"] is not None else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + note, va="center", fontsize=8)
    if target:
        ax.axvline(target, color="tab:red", linestyle="--", linewidth=1, label=f"target {target:,.0f} tok/s")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s, full optimizer step (32,768 tokens)")
    ax.set_title("Training step throughput, 38-layer Qwen2 (702.8M)")
    ax.set_xlim(0, max(r["tok_s"] for r in rows) * 1.35)
    fig.tight_layout()
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", type=float, default=60_000)
    args = ap.parse_args()
    print(plot(read_rows(args.tables), args.out, args.target))


if __name__ == "__main__":
    main()
