"""Depth up-scaling engine: plan which source layers fill a deeper model, then build it.

Pure module (no Lightning/Hydra): plain mappings in, plain data and HF models out.
Planning needs no torch; the names below load their module on first use.
"""

import importlib

# name -> the module defining it. Loaded on first use (PEP 562), so that checking a layer selection
# (layer_selection, strategies, params, plan) imports no torch: train.py refuses a bad depth in ~1 s.
_EXPORTS = {
    "plan_from_config": "layer_selection",
    "count_parameters": "params", "layer_parameter_count": "params", "n_target_for_budget": "params",
    "LayerPlan": "plan",
    "write_plan_files": "plan_files",
    "duplicated_sources": "plots", "plot_importance": "plots", "plot_plan": "plots",
    "STRATEGIES": "strategies", "check_options": "strategies", "make_plan": "strategies",
    "strategy_options": "strategies",
    "PLAN_CONFIG_KEY": "surgery", "apply_trainable": "surgery", "decoder_layers": "surgery", "remove_layers": "surgery",
    "upscale": "surgery",
    "upscaled_config": "surgery", "zero_residual_branch": "surgery",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


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
