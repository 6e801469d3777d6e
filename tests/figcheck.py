"""figure_problems: what a reader of a saved figure could not see, measured from matplotlib's own artist
extents after a draw (display pixels), so a test can hold every kiwi plot to it."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox

TOL = 1.0  # pixels: a point on the axes' edge (a bar's base at y=0) is visible


def _finite(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    return points[np.isfinite(points).all(axis=1)]


def data_points(ax) -> list[tuple[str, np.ndarray]]:
    """(artist description, display-space points) for every plotted datum: line vertices, scatter offsets,
    error-bar segment ends, bar tips."""
    out = []
    for line in ax.get_lines():
        if not line.get_visible() or not len(line.get_xydata()):
            continue
        pts = line.get_transform().transform(_finite(line.get_xydata()))
        out.append((f"line {line.get_label()!r}", _finite(pts)))
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, PathCollection):
            pts = coll.get_offset_transform().transform(_finite(coll.get_offsets()))
        elif isinstance(coll, LineCollection) and coll.get_segments():
            pts = coll.get_transform().transform(_finite(np.concatenate(coll.get_segments())))
        else:
            continue
        out.append((f"{type(coll).__name__} {coll.get_label()!r}", _finite(pts)))
    horizontal = {id(b) for c in ax.containers if getattr(c, "orientation", None) == "horizontal" for b in c}
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible():
            x, y, w, h = patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()
            if all(math.isfinite(v) for v in (x, y, w, h)):
                tip = (x + w, y + h / 2) if id(patch) in horizontal else (x + w / 2, y + h)
                out.append(("bar", _finite(patch.get_data_transform().transform([tip]))))
    return [(name, pts) for name, pts in out if len(pts)]


def _inside(points: np.ndarray, box) -> np.ndarray:
    return ((points[:, 0] >= box.x0 - TOL) & (points[:, 0] <= box.x1 + TOL)
            & (points[:, 1] >= box.y0 - TOL) & (points[:, 1] <= box.y1 + TOL))


def _strictly_inside(points: np.ndarray, box) -> np.ndarray:
    return ((points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & (points[:, 1] < box.y1))


def shown_ticklabels(ax, axis) -> list:
    """Tick labels at ticks inside the view limits (matplotlib keeps labels for ticks beyond them, undrawn)."""
    lo, hi = sorted(axis.get_view_interval())
    return [tick.label1 for tick in axis.get_major_ticks() if lo - 1e-9 * (hi - lo) <= tick.get_loc() <= hi
            + 1e-9 * (hi - lo) and tick.label1.get_visible() and tick.label1.get_text().strip()]


def _texts(ax) -> list:
    texts = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    texts += shown_ticklabels(ax, ax.xaxis) + shown_ticklabels(ax, ax.yaxis)
    if ax.get_legend() is not None:
        texts += ax.get_legend().get_texts()
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def figure_problems(fig) -> list[str]:
    """Human-readable problems: a data point outside its axes' view limits, a text outside the saved area, a
    legend over a data point or a value label, overlapping tick labels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # kiwi.plotting.save_figure saves the tight box around every artist: a text is cut off only outside both
    shown = Bbox.union([fig.bbox, fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)])
    problems = []
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison and not ax.get_children():
            continue
        name = f"axes {k} ({ax.get_title()!r})" if ax.get_title() else f"axes {k}"
        box = ax.get_window_extent(renderer)
        points = data_points(ax)
        for what, pts in points:
            outside = pts[~_inside(pts, box)]
            if len(outside):
                data = ax.transData.inverted().transform(outside[:1])[0]
                problems.append(f"{name}: {what}: {len(outside)} point(s) outside the view limits, e.g. "
                                f"({data[0]:.4g}, {data[1]:.4g}) with xlim {ax.get_xlim()} ylim {ax.get_ylim()}")
        for text in _texts(ax):
            ext = text.get_window_extent(renderer)
            if ext.x0 < shown.x0 - TOL or ext.x1 > shown.x1 + TOL or ext.y0 < shown.y0 - TOL \
                    or ext.y1 > shown.y1 + TOL:
                problems.append(f"{name}: text {text.get_text()!r} lies outside the figure")
        legends = [ax.get_legend()] if ax.get_legend() is not None else []
        for legend in legends:
            lbox = legend.get_window_extent(renderer)
            for what, pts in points:
                covered = pts[_strictly_inside(pts, lbox)]
                if len(covered):
                    data = ax.transData.inverted().transform(covered[:1])[0]
                    problems.append(f"{name}: the legend covers {len(covered)} point(s) of {what}, e.g. "
                                    f"({data[0]:.4g}, {data[1]:.4g})")
            for text in ax.texts:
                if text.get_visible() and text.get_text().strip() and \
                        text.get_window_extent(renderer).overlaps(lbox):
                    problems.append(f"{name}: the legend covers the label {text.get_text()!r}")
        for axis in (ax.xaxis, ax.yaxis):
            labels = shown_ticklabels(ax, axis)
            boxes = [t.get_window_extent(renderer) for t in labels]
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    if boxes[i].overlaps(boxes[j]):
                        problems.append(f"{name}: tick labels {labels[i].get_text()!r} and "
                                        f"{labels[j].get_text()!r} overlap")
    return problems
