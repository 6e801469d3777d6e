"""Depth up-scaling engine: plan which source layers fill a deeper model, then build it.

Pure module (no Lightning/Hydra): plain mappings in, plain data and HF models out.
"""

from kiwi.upscale.layer_selection import plan_from_config
from kiwi.upscale.params import count_parameters, layer_parameter_count, n_target_for_budget
from kiwi.upscale.plan import LayerPlan
from kiwi.upscale.plan_files import write_plan_files
from kiwi.upscale.plots import duplicated_sources, plot_importance, plot_plan
from kiwi.upscale.strategies import STRATEGIES, check_options, make_plan, strategy_options
from kiwi.upscale.surgery import (
    PLAN_CONFIG_KEY,
    apply_trainable,
    decoder_layers,
    remove_layers,
    upscale,
    upscaled_config,
    zero_residual_branch,
)

__all__ = [
    "PLAN_CONFIG_KEY",
    "STRATEGIES",
    "LayerPlan",
    "apply_trainable",
    "check_options",
    "count_parameters",
    "decoder_layers",
    "duplicated_sources",
    "layer_parameter_count",
    "make_plan",
    "n_target_for_budget",
    "plan_from_config",
    "plot_importance",
    "plot_plan",
    "remove_layers",
    "strategy_options",
    "upscale",
    "upscaled_config",
    "write_plan_files",
    "zero_residual_branch",
]
