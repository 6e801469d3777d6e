"""Levers for continued pretraining of a grown model (the DUS study's conf/study/interleave_id_*.yaml).

- ``optimizer.copied_lr_scale``: the weights carried over from the base (embeddings, final norm and the
  first occurrence of every base layer) train at ``scale`` x the peak lr; the new layers (the plan's 2nd+
  copies) at the full lr. Same FLOPs as the plain variant.
- :class:`TwoPhase`: for the first ``new_only_fraction`` of the steps only the new layers update (the
  gradients of the rest are dropped before the step, so AdamW leaves them and their state untouched);
  then all train. The backward still computes every gradient, so its FLOPs are those of the plain
  variant and the study counts them so (an upper bound on what a frozen-weights phase 1 would cost).
- ``module.distill``: KL to the base's next-token distribution mixed into the loss
  (kiwi.model.loss.lm_nll_and_kl). The base's forward pass on every token is counted (``run_flops``), and
  with ``flops_matched`` the run trains on fewer tokens so that student + teacher cost the plain run's FLOPs.
- :class:`GrowInSteps`: the new layers join in several stages instead of at once; a layer costs FLOPs only
  from the step it joins (``run_flops``).
- Re-warming or not is a schedule choice (conf/study/interleave_id_norewarm.yaml), not code.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import torch
from lightning import Callback
from omegaconf import DictConfig, OmegaConf

from kiwi.errors import ConfigError
from kiwi.train.budget import at_depth, forward_flops, training_flops
from kiwi.upscale import LayerPlan, decoder_layers, zero_residual_branch

DISTILL_OPTIONS = {"alpha": 0.5, "temperature": 1.0, "flops_matched": True}


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


def distill_settings(distill) -> dict | None:
    """``module.distill`` checked and completed: None (off: null or false) or {alpha, temperature,
    flops_matched} (true or {} = the defaults). The loss is (1 - alpha) x cross-entropy + alpha x
    temperature² x KL(base || model)."""
    if distill is None or distill is False:
        return None
    if distill is True:
        distill = {}
    if isinstance(distill, DictConfig):
        distill = OmegaConf.to_container(distill, resolve=True)
    if not isinstance(distill, Mapping):
        raise ConfigError(f"module.distill: expected null, true or a mapping of {sorted(DISTILL_OPTIONS)}, "
                          f"got {distill!r}")
    unknown = sorted(set(distill) - set(DISTILL_OPTIONS))
    if unknown:
        raise ConfigError(f"module.distill: unknown option(s) {unknown}; expected {sorted(DISTILL_OPTIONS)}")
    out = {**DISTILL_OPTIONS, **{k: v for k, v in distill.items() if v is not None}}
    for key in ("alpha", "temperature"):
        try:
            out[key] = float(out[key])
        except (TypeError, ValueError):
            raise ConfigError(f"module.distill.{key}: expected a number, got {out[key]!r}") from None
    if not isinstance(out["flops_matched"], bool):
        raise ConfigError(f"module.distill.flops_matched: expected true or false, got {out['flops_matched']!r}")
    if not 0 < out["alpha"] <= 1:
        raise ConfigError(f"module.distill.alpha: expected a value in (0, 1], got {out['alpha']}")
    if not out["temperature"] > 0:
        raise ConfigError(f"module.distill.temperature: expected a positive number, got {out['temperature']}")
    return out


def _pass_through(self, hidden_states, *args, **kwargs):
    return hidden_states


def skipped_layers(model: torch.nn.Module) -> list[int]:
    """Decoder layers that GrowInSteps skips now (not joined yet: their forward returns its input), which
    a checkpoint records so that its model loads as it was trained (kiwi.model.io)."""
    return [j for j, layer in enumerate(decoder_layers(model))
            if getattr(layer.__dict__.get("forward"), "__func__", None) is _pass_through]


class GrowInSteps(Callback):
    """Grow in ``stages`` steps instead of once: the plan's new layers (in depth order) join in ``stages``
    groups, group k at optimizer step round(k x max_steps / stages), group 0 from the start. Until it
    joins, a new layer is skipped (its forward returns its input: no FLOPs, no gradient, no optimizer
    state). When it joins it is copied again from the *current* weights of the layer it duplicates (that
    base layer's first copy), with identity_init re-applied, so the model grows from what it has learned
    since the last growth rather than from the base. Single process only (DDP would see unused parameters).
    Checkpoints record the layers still skipped (``skipped_layers``), so evaluate.py and the export load a
    mid-growth checkpoint as it was trained: without them (kiwi.model.io)."""

    def __init__(self, stages: int = 2):
        if int(stages) < 2:
            raise ValueError(f"grow_in_steps.stages: expected 2 or more (1 is growing once), got {stages}")
        self.stages = int(stages)
        self.joined_at: dict[int, int] = {}  # stage -> the optimizer step its layers joined (checkpointed)
        self._planned: set[int] = set()  # stages a first-format checkpoint says have joined

    def groups(self, plan: LayerPlan) -> list[list[int]]:
        new = sorted(plan.new_layers)
        if len(new) < self.stages:
            raise ConfigError(f"grow_in_steps.stages={self.stages}: the plan {plan.strategy} "
                              f"{plan.n_source}->{plan.n_target} has only {len(new)} new layer(s)")
        size, extra = divmod(len(new), self.stages)
        bounds = [k * size + min(k, extra) for k in range(self.stages + 1)]
        return [new[bounds[k]:bounds[k + 1]] for k in range(self.stages)]

    def start_step(self, stage: int, max_steps: int) -> int:
        return int(round(stage * max_steps / self.stages))

    def state_dict(self) -> dict:
        return {"joined_at": {str(k): v for k, v in self.joined_at.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.joined_at = {int(k): int(v) for k, v in state_dict.get("joined_at", {}).items()}
        # the first format kept only which stages had joined; they joined at their planned step
        self._planned = {int(k) for k in state_dict.get("grown", [])} - set(self.joined_at)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size > 1:
            raise ConfigError("grow_in_steps runs in one process only: under DDP the layers that have not "
                              "joined yet would be unused parameters")
        if not trainer.max_steps or trainer.max_steps < 1:
            raise ConfigError(f"grow_in_steps needs trainer.max_steps >= 1 to place its stages, "
                              f"got {trainer.max_steps}")
        self._sync(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # A stage joins as soon as its step is reached (the same weights as at the next batch's start), so a
        # checkpoint of that step (ModelCheckpoint runs after this) holds the model its validation scores.
        self._sync(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._sync(trainer, pl_module)

    def _sync(self, trainer, pl_module) -> None:
        plan, layers = pl_module.plan, decoder_layers(pl_module.model)
        for k in self._planned:
            self.joined_at.setdefault(k, self.start_step(k, trainer.max_steps))
        self._planned = set()
        for k, group in enumerate(self.groups(plan)):
            # once joined, always joined (a resume with another max_steps does not drop a trained layer)
            joined = k in self.joined_at or self.start_step(k, trainer.max_steps) <= trainer.global_step
            for j in group:
                if joined and k not in self.joined_at and k > 0:
                    layers[j].load_state_dict(layers[plan.sources.index(plan.sources[j])].state_dict())
                    if plan.identity_init[j]:
                        zero_residual_branch(layers[j], j)
                if joined:
                    layers[j].__dict__.pop("forward", None)
                else:
                    layers[j].forward = types.MethodType(_pass_through, layers[j])
            if joined and k not in self.joined_at:
                self.joined_at[k] = trainer.global_step

    def training_flops(self, config, plan: LayerPlan, steps: int, max_steps: int, tokens_per_step: int,
                       seq_len: int) -> float:
        """Training FLOPs of ``steps`` steps, each stage at the depth it had (layers not joined cost nothing):
        stages start at the step they joined, or, not joined yet, at their planned step."""
        groups = self.groups(plan)
        starts = [self.joined_at.get(k, self.start_step(k, max_steps)) for k in range(self.stages)] + [steps]
        total = 0.0
        for k in range(self.stages):
            n = max(0, min(steps, starts[k + 1]) - min(steps, starts[k]))
            depth = plan.n_target - sum(len(g) for g in groups[k + 1:])
            total += training_flops(at_depth(config, depth), n * tokens_per_step, seq_len)
        return total


def run_flops(callbacks, config, plan: LayerPlan, teacher_config, steps: int, max_steps: int,
              tokens_per_step: int, seq_len: int) -> tuple[float, float]:
    """(training FLOPs of a run with its levers, of which the distillation teacher's forward passes)."""
    grow = next((cb for cb in callbacks if isinstance(cb, GrowInSteps)), None)
    tokens = steps * tokens_per_step
    own = (grow.training_flops(config, plan, steps, max_steps, tokens_per_step, seq_len) if grow
           else training_flops(config, tokens, seq_len))
    teacher = forward_flops(teacher_config, tokens, seq_len) if teacher_config is not None else 0.0
    return own + teacher, teacher
