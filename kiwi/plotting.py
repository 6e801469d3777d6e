"""The one matplotlib set-up every kiwi picture uses: a headless pyplot (Agg needs no display) imported
lazily, because matplotlib is slow to import and most commands draw nothing, and one way to save a figure
(tight bounding box, so no label is cut off; the figure is closed so long runs do not pile them up)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: float | str = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path
