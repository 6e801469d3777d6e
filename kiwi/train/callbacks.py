"""Callbacks a researcher watches: tokens/s and MFU, the layer plan, a progress bar in tokens, and a
checkpoint on SIGTERM/SIGINT so a pre-empted job resumes where it stopped."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def log_images(trainer: L.Trainer, images: dict[str, str | Path]) -> None:
    """Log PNGs to every W&B logger of the trainer (other loggers keep the files on disk)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({k: wandb.Image(str(v)) for k, v in images.items()})


class ThroughputMonitor(L.Callback):
    """Tokens/s, MFU (kiwi.train.flops: matmuls incl. lm_head + document-masked attention of the actual
    batch) and peak memory, per training batch over a sliding window; tokens counted across all ranks."""

    def __init__(self, peak_flops: float | None = None, window: int = 10):
        self.peak_flops = peak_flops
        self.window = window
        self.tokens_seen = 0
        self._times: list[float] = []
        self._tokens: list[int] = []
        self._flops: list[float] = []
        self._t0: float | None = None

    def on_train_start(self, trainer, pl_module):
        from kiwi.train.flops import peak_flops

        if self.peak_flops is None and pl_module.device.type == "cuda":
            self.peak_flops = peak_flops(torch.cuda.get_device_name(pl_module.device))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from kiwi.model.attention import document_lengths
        from kiwi.train.flops import flops_per_token

        n = int(batch["input_ids"].numel()) * trainer.world_size
        self.tokens_seen += n
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self._times.append(now - (self._t0 if self._t0 is not None else now))
        self._tokens.append(n)
        self._t0 = now
        lengths = [n for row in document_lengths(batch["position_ids"]) for n in row]
        fpt = flops_per_token(pl_module.model.config, lengths)
        self._flops.append(fpt * n)
        w = self.window
        self._times, self._tokens, self._flops = self._times[-w:], self._tokens[-w:], self._flops[-w:]
        elapsed = max(sum(self._times), 1e-9)
        tps = sum(self._tokens) / elapsed
        metrics = {"trainer/tokens_seen": float(self.tokens_seen), "perf/tokens_per_s": tps,
                   "perf/model_tflops_per_s": sum(self._flops) / elapsed / 1e12}
        if self.peak_flops:
            metrics["perf/mfu"] = sum(self._flops) / elapsed / (self.peak_flops * trainer.world_size)
        if pl_module.device.type == "cuda":
            metrics["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module):
        self._t0 = None  # validation time is not training throughput

    def state_dict(self):
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict):
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))


class TokensProgressBar(TQDMProgressBar):
    """The usual bar, with tokens/s and tokens seen next to the loss."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        tps = trainer.callback_metrics.get("perf/tokens_per_s")
        if tps is not None:
            items["tok/s"] = f"{float(tps):,.0f}"
        seen = trainer.callback_metrics.get("trainer/tokens_seen")
        if seen is not None:
            items["tokens"] = f"{float(seen):.3g}"
        return items


class CheckpointOnSignal(L.Callback):
    """On SIGTERM or SIGINT, finish the current step, write a checkpoint, then stop cleanly."""

    def __init__(self, dirpath: str, filename: str = "interrupted.ckpt"):
        self.path = Path(dirpath) / filename
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self.interrupted = False

    def _handler(self, signum, frame):
        log.warning("received signal %d: will checkpoint after this step and stop", signum)
        self.received = signum

    def on_train_start(self, trainer, pl_module):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: wait for the optimizer step so the checkpoint resumes exactly
        flag = torch.tensor(1 if self.received is not None else 0, device=pl_module.device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if int(flag) == 0:
            return
        trainer.save_checkpoint(self.path)
        log.warning("checkpoint written to %s; resume with ckpt_path=%s", self.path, self.path)
        trainer.should_stop = True
        self.interrupted = True

    def on_train_end(self, trainer, pl_module):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class LogLayerPlan(L.Callback):
    """Write the plan (JSON, table, mergekit YAML, picture) beside the run and log it to W&B at start."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module):
        from kiwi.train.export import write_plan_files

        plan = pl_module.plan
        files = write_plan_files(plan, self.out_dir, base_model=str(
            pl_module.hparams.model_cfg.get("base") or "tiny-base"))
        images = {"layer_plan": files["plot"]}
        measured = getattr(pl_module, "importance", None)
        if measured is not None:
            from kiwi.upscale import duplicated_sources, plot_importance

            metric = plan.options.get("metric", "block_influence")
            images["layer_importance"] = plot_importance(
                measured.scores(metric), self.out_dir / "layer_importance.png",
                similarity=measured.similarity_cosine, chosen=duplicated_sources(plan), metric=metric)
        log_images(trainer, images)
