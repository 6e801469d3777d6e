"""Named study designs for ``python -m kiwi.study.run --design NAME``: which regimes, settings and seeds,
and which extra sweeps run at the most trained regime (a lever search). A sweep whose jobs train another
definition than the main one (another continuation budget) is gathered apart, into its own folder, since
the gather never pairs jobs of different definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

V2_SETTINGS = ("control_flops", "control_tokens", "importance", "importance_id", "interleave", "interleave_id",
               "interleave_id_2phase", "interleave_id_distill", "interleave_id_grow2", "interleave_id_lrcopy",
               "interleave_id_norewarm", "llama_pro", "llama_pro_all", "llama_pro_noid", "solar", "solar_id",
               "stack", "stack_id")
# The controls first, then the settings every regime runs (issue 22: interleave_id, interleave, the two
# best v2 levers and their combination).
V3_SETTINGS = ("control_tokens", "control_flops", "interleave", "interleave_id", "interleave_id_lrcopy",
               "interleave_id_distill", "interleave_id_lrcopy_distill")


@dataclass(frozen=True)
class Sweep:
    """One extra multirun per seed at the most trained regime: ``variants`` (``+study=``) with ``overrides``
    (values may be swept, ``a,b``); ``budget`` scales the profile's continuation tokens (budget.total_tokens)
    and puts the sweep in a gather of its own, ``budget_<budget>x``."""

    name: str
    variants: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    budget: float | None = None

    @property
    def gather(self) -> str | None:
        return None if self.budget is None else f"budget_{self.budget:g}x"


@dataclass(frozen=True)
class Design:
    regimes: tuple[float, ...]
    seeds: int
    variants: tuple[str, ...]
    top: tuple[Sweep, ...] = ()


DESIGNS = {
    # Study v2 (docs/study/): both regimes, every setting it had, 3 seeds; the default of kiwi.study.run.
    "v2": Design(regimes=(64, 8192), seeds=3, variants=V2_SETTINGS),
    "v3": Design(
        regimes=(16, 64, 256, 1024, 8192),
        seeds=8,
        variants=V3_SETTINGS,
        top=(
            Sweep("lrcopy", ("interleave_id_lrcopy",), ("optimizer.copied_lr_scale=0.03,0.3",)),
            Sweep("alpha", ("interleave_id_distill",), ("module.distill.alpha=0.25,0.75",)),
            # 0.5x only: a 2x sweep (24 jobs of twice the main ones) did not fit the CPU study's 90 minutes
            Sweep("budget0.5x", ("control_tokens", "control_flops", "interleave_id_lrcopy_distill"), budget=0.5),
        ),
    ),
}
