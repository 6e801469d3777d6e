"""Plots are real, non-empty PNG files."""

from __future__ import annotations

import pytest

from kiwi.upscale import duplicated_sources, make_plan, plot_importance, plot_plan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


@pytest.mark.parametrize("identity", [False, True])
def test_plot_plan(tmp_path, identity):
    plan = make_plan("interleave", 24, 38, identity_init=identity)
    out = plot_plan(plan, tmp_path / "sub" / "plan.png")
    assert _is_png(out)


def test_plot_importance(tmp_path):
    scores = [0.1 * (i % 5) for i in range(8)]
    sim = [[1.0 - abs(i - j) / 8 for j in range(8)] for i in range(8)]
    plan = make_plan("importance", 8, 10, scores=scores)
    chosen = duplicated_sources(plan)
    assert len(chosen) == 2
    assert _is_png(plot_importance(scores, tmp_path / "imp.png", similarity=sim, chosen=chosen))
    assert _is_png(plot_importance(scores, tmp_path / "imp_only.png"))
    with pytest.raises(ValueError, match="chosen"):
        plot_importance(scores, tmp_path / "bad.png", chosen=[99])
