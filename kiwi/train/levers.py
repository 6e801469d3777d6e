"""Levers for continued pretraining of a grown model (the DUS study's conf/study/*_2phase, *_lrcopy).

- ``optimizer.copied_lr_scale``: the weights carried over from the base (embeddings, final norm and the
  first occurrence of every base layer) train at ``scale`` x the peak lr; the new layers (the plan's 2nd+
  copies) at the full lr. Same FLOPs as the plain variant.
- :class:`TwoPhase`: for the first ``new_only_fraction`` of the steps only the new layers update (the
  gradients of the rest are dropped before the step, so AdamW leaves them and their state untouched);
  then all train. The backward still computes every gradient, so its FLOPs are those of the plain
  variant and the study counts them so (an upper bound on what a frozen-weights phase 1 would cost).
"""

from __future__ import annotations

import torch
from lightning import Callback

from kiwi.upscale import LayerPlan, decoder_layers


def new_layer_params(model: torch.nn.Module, plan: LayerPlan) -> set[int]:
    """ids of the parameters of the plan's new layers (its 2nd+ copies of a base layer)."""
    layers = decoder_layers(model)
    if len(layers) != plan.n_target:
        raise ValueError(f"levers: model has {len(layers)} layers, plan.n_target={plan.n_target}")
    if not plan.new_layers:
        raise ValueError(f"levers: plan {plan.strategy} {plan.n_source}->{plan.n_target} has no new layers; "
                         "copied_lr_scale and two_phase need an up-scaled model")
    return {id(p) for j in plan.new_layers for p in layers[j].parameters()}


def split_copied(groups: list[dict], model: torch.nn.Module, plan: LayerPlan, lr: float,
                 scale: float) -> list[dict]:
    """Each optimizer group split in (copied from the base: lr x scale, new: lr); empty groups dropped."""
    if not float(scale) > 0:
        raise ValueError(f"optimizer.copied_lr_scale: expected a positive number, got {scale}")
    new = new_layer_params(model, plan)
    out = []
    for group in groups:
        copied = [p for p in group["params"] if id(p) not in new]
        fresh = [p for p in group["params"] if id(p) in new]
        rest = {k: v for k, v in group.items() if k != "params"}
        out += [{**rest, "params": ps, "lr": lr * f} for ps, f in ((copied, float(scale)), (fresh, 1.0)) if ps]
    return out


class TwoPhase(Callback):
    """Phase 1 (the first ``new_only_fraction`` of the optimizer steps): only the new layers update."""

    def __init__(self, new_only_fraction: float = 0.5):
        if not 0 < new_only_fraction < 1:
            raise ValueError(f"two_phase.new_only_fraction: expected a value in (0, 1), got {new_only_fraction}")
        self.new_only_fraction = float(new_only_fraction)
        self._frozen: list[torch.nn.Parameter] = []

    def phase1_steps(self, max_steps: int) -> int:
        return int(round(self.new_only_fraction * max_steps))

    def on_fit_start(self, trainer, pl_module) -> None:
        new = new_layer_params(pl_module.model, pl_module.plan)
        self._frozen = [p for p in pl_module.model.parameters() if id(p) not in new]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step < self.phase1_steps(trainer.max_steps):
            for p in self._frozen:
                p.grad = None
