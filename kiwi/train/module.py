"""The LightningModule: a thin wrapper that owns the upscaled HF model and the loss.

It takes configs (not modules), so ``save_hyperparameters`` and ``load_from_checkpoint`` rebuild it; the
layer plan it used is stored too, so an ``importance`` plan is not re-measured when a checkpoint is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DeepSpeedStrategy

from kiwi.data.accumulation import GROUP_TOKENS_KEY
from kiwi.errors import ConfigError, KiwiError
from kiwi.model.build import BuiltModel, as_dict, build_model
from kiwi.model.checkpointing import apply_activation_checkpointing
from kiwi.model.loss import DEFAULT_CHUNK, lm_nll, lm_nll_and_kl, perplexity
from kiwi.train.checkpoint import match_accumulation
from kiwi.train.levers import distill_settings, skipped_layers, split_copied

log = logging.getLogger(__name__)


def mid_accumulation(trainer: L.Trainer) -> bool:
    """Whether the micro-batch just run is not the last of its optimizer step (Lightning's own rule; a
    private method, so it is called here only)."""
    return trainer.fit_loop.epoch_loop._should_accumulate()


class NonFiniteLossError(KiwiError, RuntimeError):
    """A training step had a non-finite loss or gradient norm (``module.nonfinite_loss=stop``)."""


class KiwiLM(L.LightningModule):
    def __init__(self, model_cfg: Mapping, optimizer: Mapping, scheduler: Mapping | None = None,
                 cache_dir: str = "~/.cache/kiwi", loss_chunk: int = DEFAULT_CHUNK,
                 nonfinite_loss: str = "stop", warmup_steps: int = 0, total_steps: int = 1,
                 loss_impl: str = "auto", device: str = "cpu",
                 plan: Mapping | None = None, built: BuiltModel | None = None, distill: Mapping | None = None):
        super().__init__()
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"module.nonfinite_loss: expected 'stop' or 'skip', got {nonfinite_loss!r}")
        self.distill = distill_settings(distill)
        self.save_hyperparameters(ignore=["built"])
        self.hparams["distill"] = self.distill  # a plain dict: checkpoints load with weights_only (resume)
        if built is None:
            # A stored plan (e.g. a measured importance plan) is reused, never re-derived.
            from kiwi.upscale import LayerPlan

            built = build_model(model_cfg, cache_dir, plan=LayerPlan.from_dict(plan) if plan else None,
                                device=device)
        self.model = built.model
        self.tokenizer = built.tokenizer
        self.plan = built.plan
        self.importance = built.importance
        self.hparams["plan"] = built.plan.to_dict()
        # The distillation teacher is the base itself, frozen; held in a tuple so that it is not a submodule
        # (not in state_dict, the optimizer or the parameter counts).
        self._teacher = (self._load_teacher(built.base_path, model_cfg, device),) if self.distill else ()
        self.skipped_steps = 0
        self._step_nll: torch.Tensor | None = None  # this rank's NLL sum over the step's micro-batches
        self._step_tokens: torch.Tensor | None = None  # label tokens of the step over all ranks
        self.last_val: tuple[int, float] | None = None  # (global step, mean held-out loss)

    @property
    def teacher(self):
        return self._teacher[0] if self._teacher else None

    @staticmethod
    def _load_teacher(base_path: str, model_cfg: Mapping, device: str = "cpu"):
        """The base, frozen, with the student's dtype and the attention kernel chosen for ``device``."""
        from kiwi.model.io import load_model  # model I/O is needed only when distilling

        mcfg = as_dict(model_cfg)
        teacher = load_model(base_path, dtype=mcfg.get("dtype", "float32"),
                             attn_implementation=mcfg.get("attn_implementation", "auto"), device=device)[0]
        return teacher.eval().requires_grad_(False)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.hparams.nonfinite_loss == "skip" and isinstance(self.trainer.strategy, DeepSpeedStrategy):
            # DeepSpeed steps from its own gradient partitions, out of reach of the skip (which drops p.grad).
            raise ConfigError("module.nonfinite_loss=skip is not supported with DeepSpeed: its ZeRO optimizer "
                              "would still apply the step; use module.nonfinite_loss=stop, or trainer=gpu/fsdp")

    def configure_model(self) -> None:
        mcfg = as_dict(self.hparams.model_cfg)
        apply_activation_checkpointing(self.model, mcfg.get("activation_checkpointing", "none"),
                                       every=int(mcfg.get("checkpoint_every", 2)))
        if mcfg.get("compile"):
            # Per decoder layer (not the whole model): one graph reused 38 times, and parameter names,
            # checkpoints and exports are unchanged. Measured +38% tokens/s on an H100 (README).
            for layer in self.model.model.layers:
                layer.compile()

    def nll(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return lm_nll(self.model, batch["input_ids"], batch["labels"], batch.get("position_ids"),
                      chunk=self.hparams.loss_chunk, impl=self.hparams.loss_impl)

    def step_label_tokens(self, batch: Mapping[str, Any], n_tokens: torch.Tensor) -> torch.Tensor:
        """Label tokens of the whole optimizer step (every micro-batch, every rank): the loss's denominator."""
        group = batch.get(GROUP_TOKENS_KEY)
        if group is None:
            if self.trainer.accumulate_grad_batches > 1:
                raise ConfigError(
                    f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches} needs training batches "
                    f"carrying '{GROUP_TOKENS_KEY}' (label tokens of the step's micro-batches on this rank) to "
                    "weight every token of the step equally; kiwi's PackedDataModule provides it, this datamodule "
                    "does not. Use it, add the key, or set trainer.accumulate_grad_batches=1.")
            group = n_tokens
        group = torch.as_tensor(group, device=self.device).detach()
        if group.numel() != 1:
            raise ValueError(f"batch['{GROUP_TOKENS_KEY}'] must be one count per batch (0-d), got shape "
                             f"{tuple(group.shape)}")
        group = group.to(torch.int64).reshape(()).clone()  # a fresh tensor: the all-reduce works in place
        if self.trainer.world_size > 1:
            group = self.trainer.strategy.reduce(group, reduce_op="sum")
        return group

    def training_step(self, batch, batch_idx):
        """Loss = sum of this micro-batch's token NLLs x (accumulation x world size) / label tokens of the
        whole step, so after Lightning's division by the accumulation and DDP's mean over ranks the gradient
        is that of (sum of NLLs) / (tokens) over the global batch: every token weighs the same."""
        if self.teacher is None:
            nll, n_tokens = self.nll(batch)
            objective = nll
        else:  # distillation (module.distill): (1 - alpha) NLL + alpha KL(base || model), both token sums
            nll, n_tokens, kl = lm_nll_and_kl(
                self.model, self.teacher, batch["input_ids"], batch["labels"], batch.get("position_ids"),
                temperature=self.distill["temperature"], chunk=self.hparams.loss_chunk, impl=self.hparams.loss_impl)
            objective = (1 - self.distill["alpha"]) * nll + self.distill["alpha"] * kl
            self.log("train/distill_kl", (kl.detach() / n_tokens.clamp_min(1)).float())
        tokens = self.step_label_tokens(batch, n_tokens)
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        loss = objective * (scale / tokens.clamp_min(1).to(nll.dtype))
        nll = nll.detach().double()
        self._step_nll = nll if self._step_nll is None else self._step_nll + nll
        self._step_tokens = tokens
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """After the step's last backward (gradients all-reduced), before clipping and the update: decide,
        on every rank alike, whether the step is finite. A non-finite loss or gradient norm on any rank
        either stops the run (``stop``) or drops every gradient so the optimizer leaves weights and its
        state untouched (``skip``: AdamW skips parameters without a gradient, decay and moments included).
        The LR schedule still advances with the global step."""
        if mid_accumulation(self.trainer):
            return  # DeepSpeed calls this hook for every micro-batch; the step ends at the last one
        nll = self._step_nll if self._step_nll is not None else torch.zeros((), dtype=torch.float64)
        tokens = self._step_tokens if self._step_tokens is not None else torch.zeros((), dtype=torch.int64)
        self._step_nll = self._step_tokens = None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        world, rank = self.trainer.world_size, self.trainer.global_rank
        # one all-reduce: [sum of NLLs, ranks with a non-finite loss, ranks with a non-finite gradient norm]
        stats = torch.zeros(1 + 2 * world, dtype=torch.float64, device=self.device)
        stats[0] = nll.to(stats.device)
        stats[1 + rank] = (~torch.isfinite(nll)).to(stats)
        stats[1 + world + rank] = (~torch.isfinite(grad_norm)).to(stats)
        if world > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        stats = stats.cpu()  # one device sync per optimizer step
        bad_loss = [r for r in range(world) if stats[1 + r] > 0]
        bad_grad = [r for r in range(world) if stats[1 + world + r] > 0]
        if bad_loss or bad_grad:
            self._nonfinite_step(optimizer, bad_loss, bad_grad)
            return
        loss = (stats[0] / tokens.cpu().clamp_min(1)).float()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", perplexity(loss))
        self.log("train/tokens_in_step", tokens.float())

    def _nonfinite_step(self, optimizer, bad_loss: list[int], bad_grad: list[int]) -> None:
        what = (f"non-finite training loss on rank(s) {bad_loss}" if bad_loss
                else f"non-finite gradient norm (finite loss) on rank(s) {bad_grad}")
        where = f"at global step {self.global_step} (epoch {self.current_epoch})"
        if self.hparams.nonfinite_loss == "stop":
            log.error("%s %s: stopping before the update", what, where)
            raise NonFiniteLossError(
                f"{what} {where}. Stopped before this step's update, so no checkpoint holds a poisoned state; "
                "lower optimizer.lr, check the data, or set module.nonfinite_loss=skip.")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        log.warning("%s %s: update skipped on every rank (%d skipped so far)", what, where, self.skipped_steps)

    def on_validation_epoch_start(self) -> None:
        self._val_nll = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        nll, n_tokens = self.nll(batch)
        self._val_nll += nll.double()
        self._val_tokens += n_tokens.double()

    def on_validation_epoch_end(self) -> None:
        # Every rank scores the whole held-out set (PackedDataModule), so these are already the totals:
        # summing them over ranks would count each token world_size times.
        nll, tokens = self._val_nll, self._val_tokens
        if tokens.item() == 0:
            return
        mean = nll / tokens
        if not self.trainer.sanity_checking:
            self.last_val = (self.global_step, float(mean))
        # Token-pooled over the whole held-out set: the same definition as evaluate.py's `heldout` task.
        self.log("val/loss", mean.float(), sync_dist=False, prog_bar=True)
        self.log("val/ppl", perplexity(mean).float(), sync_dist=False, prog_bar=True)
        self.log("val/tokens", tokens.float(), sync_dist=False)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # Norm gains and biases are not regularised (by name: FSDP flattens shapes); tied embeddings
            # appear once.
            (no_decay if name.endswith(".bias") or "norm" in name else decay).append(p)
        opt_cfg = dict(as_dict(self.hparams.optimizer))
        if opt_cfg.get("fused", "absent") is None:
            # Lightning's mixed-precision plugin refuses to clip gradients for an optimizer that unscales
            # internally (torch's fused AdamW); the multi-tensor path is used then instead.
            trainer = self._trainer
            clips = bool(trainer and trainer.gradient_clip_val) and "mixed" in str(trainer.precision)
            opt_cfg["fused"] = self.device.type == "cuda" and not clips
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        copied_lr_scale = opt_cfg.pop("copied_lr_scale", None)  # a DUS lever (kiwi.train.levers)
        if copied_lr_scale is not None:
            groups = split_copied(groups, self.model, self.plan, float(opt_cfg["lr"]), copied_lr_scale)
        optimizer = instantiate(opt_cfg)(groups)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(as_dict(self.hparams.scheduler))(
            optimizer, warmup_steps=self.hparams.warmup_steps, total_steps=self.hparams.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Enough to rebuild the architecture without the base weights (kiwi.model.io), and the model as it
        # computes now: grow_in_steps layers that have not joined yet are skipped (identity) until they do.
        checkpoint["kiwi"] = {"hf_config": self.model.config.to_dict(), "plan": self.plan.to_dict(),
                              "tokenizer_dir": getattr(self.tokenizer, "name_or_path", None),
                              "skipped_layers": skipped_layers(self.model)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resume with another accumulation (same global batch, other layout) steps where it would have."""
        trainer = self._trainer
        data = getattr(trainer, "datamodule", None)
        saved = (checkpoint.get(type(data).__qualname__) or {}).get("accumulate") if data is not None else None
        if saved:
            match_accumulation(checkpoint, int(saved), int(trainer.accumulate_grad_batches))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
