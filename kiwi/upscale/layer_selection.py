"""Turn a layer_selection config mapping (e.g. conf/model/layer_selection/*.yaml) into a LayerPlan,
rejecting every unknown or malformed key before any weights are loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kiwi.upscale.params import n_target_for_budget
from kiwi.upscale.plan import LayerPlan
from kiwi.upscale.strategies import check_options, make_plan

DEFAULT_N_TARGET = 38
SIZE_KEYS = ("n_target", "param_budget")


def plan_from_config(
    cfg: Mapping[str, Any],
    n_source: int,
    *,
    scores: Sequence[float] | None = None,
    model_config: Any = None,
) -> LayerPlan:
    """``scores`` feeds the 'importance' strategy when the config does not list them itself;
    ``model_config`` (the source HF config) is needed to resolve ``param_budget``."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"layer_selection config must be a mapping, got {type(cfg).__name__}")
    strategy = cfg.get("strategy")
    options = {k: v for k, v in cfg.items() if k not in ("strategy",) + SIZE_KEYS}
    check_options(strategy, options)
    if strategy == "importance" and options.get("scores") is None:
        if scores is None:
            raise ValueError(
                "layer_selection (strategy='importance'): option 'scores' is missing: pass scores= from "
                "kiwi.upscale.importance.layer_scores(model, batches) or list them in the config"
            )
        options["scores"] = list(scores)
    options = {k: v for k, v in options.items() if v is not None}
    n_target = _resolve_n_target(cfg, strategy, n_source, model_config)
    return make_plan(strategy, n_source, n_target, **options)


def _resolve_n_target(cfg: Mapping[str, Any], strategy: str, n_source: int, model_config: Any) -> int | None:
    budget = cfg.get("param_budget")
    default = None if strategy in ("explicit", "none") else DEFAULT_N_TARGET
    n_target = cfg.get("n_target", default)
    if budget is None:
        if n_target is None and strategy not in ("explicit", "none"):
            raise ValueError(
                f"layer_selection (strategy={strategy!r}): set option 'n_target' or 'param_budget'"
            )
        return n_target
    if n_target is not None:
        raise ValueError(
            f"layer_selection (strategy={strategy!r}): options 'n_target'={n_target} and "
            f"'param_budget'={budget} are both set; set one of them to null"
        )
    if model_config is None:
        raise ValueError(
            "layer_selection: option 'param_budget' needs the source model config: "
            "plan_from_config(cfg, n_source, model_config=hf_config)"
        )
    if isinstance(budget, str):
        try:
            budget = float(budget)
        except ValueError as err:
            raise ValueError(
                f"layer_selection: option 'param_budget' must be a number, got {budget!r}"
            ) from err
    try:
        return n_target_for_budget(model_config, budget)
    except ValueError as err:
        raise ValueError(f"layer_selection: option 'param_budget': {err}") from err
