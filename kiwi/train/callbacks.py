"""Callbacks a researcher watches: tokens/s and MFU, the layer plan, a progress bar in tokens; and the ones
that make a run trustworthy: a ``last.ckpt`` that is always the final state, a stop on SIGTERM/SIGINT in
every state, and an error (not an endless loop) for an epoch without data."""

from __future__ import annotations

import copy
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer import call
from lightning.pytorch.utilities import rank_zero_only

from kiwi.errors import DataError, KiwiError
from kiwi.model.attention import document_lengths
from kiwi.train.checkpoint import link_checkpoint, unshare, writes_directories
from kiwi.train.flops import flops_per_token, peak_flops
from kiwi.train.module import NonFiniteLossError, mid_accumulation
from kiwi.upscale import duplicated_sources, plot_importance, write_plan_files

log = logging.getLogger(__name__)


def log_images(trainer: L.Trainer, images: dict[str, str | Path]) -> None:
    """Log PNGs to every W&B logger of the trainer (other loggers keep the files on disk)."""

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb  # lazy: wandb is heavy to import and only needed with a W&B logger

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
        if self.peak_flops is None and pl_module.device.type == "cuda":
            self.peak_flops = peak_flops(torch.cuda.get_device_name(pl_module.device))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
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
    """The usual bar, with tokens/s and tokens seen next to the loss; a resumed run's bar continues its
    epoch (``Epoch 0: 25/40``) rather than starting an open-ended ``Training: 25/?``. When stdout is not a
    terminal (a log file, a pipe, SLURM) the bar's ``\\r`` redraws would pile up into one multi-kilobyte
    line, so it prints instead one plain line every ``plain_every`` optimizer steps (default: every tenth
    of the run). ``plain`` forces either form (None: decide by stdout)."""

    _epoch_set_up = False

    def __init__(self, refresh_rate: int = 1, plain_every: int | None = None, plain: bool | None = None,
                 **kwargs):
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.plain = not sys.stdout.isatty() if plain is None else plain
        self.plain_every = plain_every
        self._printed_step = -1
        if self.plain:
            self.disable()

    def on_train_epoch_start(self, trainer, *args):
        super().on_train_epoch_start(trainer, *args)
        self._epoch_set_up = True

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._epoch_set_up = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.plain or self._epoch_set_up:
            return
        # Resumed mid-epoch: Lightning skips on_train_epoch_start, so the bar has neither total nor epoch;
        # batch_idx batches of this epoch are done, total_train_batches is what is left of it.
        self._epoch_set_up = True
        bar, remaining = self.train_progress_bar, self.total_train_batches
        bar.reset(total=None if remaining == float("inf") else batch_idx + int(remaining))
        bar.initial = bar.n = batch_idx  # the rate counts this run's batches only
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.plain:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step, total = trainer.global_step, trainer.max_steps
        every = self.plain_every or max(1, total // 10 if total and total > 0 else 50)
        if step == self._printed_step or not (step % every == 0 or step == total) or not trainer.is_global_zero:
            return
        self._printed_step = step
        metrics = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in self.get_metrics(trainer, pl_module).items())
        of = f"/{total} ({100 * step / total:.0f}%)" if total and total > 0 else ""
        print(f"Epoch {trainer.current_epoch}: step {step}{of}, {metrics}", flush=True)

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


def end_progress_bars(trainer) -> None:
    """Close the trainer's progress bars and draw no more: after a stop message nothing redraws a bar line."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is None:
        return
    for name in ("_train_progress_bar", "_val_progress_bar", "_test_progress_bar", "_predict_progress_bar"):
        tq = getattr(bar, name, None)
        if tq is not None:
            tq.close()  # ends its line (a training bar stays, as at a normal end); later updates are no-ops
    bar.disable()  # bars opened from now on (the validation Lightning starts at a stop) draw nothing


class RunInterrupted(KiwiError, RuntimeError):
    """A run stopped by SIGTERM or SIGINT; the process exits with 128 + the signal (143, 130) as a shell's
    child killed by it would, so schedulers and scripts see an interruption, not a failure."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum) if signum is not None else 1


class CheckpointOnSignal(L.Callback):
    """Stop on SIGTERM or SIGINT in every state of a run, and say why.

    ``run`` installs the handler at the very start (model build, ``validate_before``), not at train start.
    A signal during a training step lets the step finish: the run stops at its optimizer step, where
    ``ModelCheckpoint`` writes ``last.ckpt``. Anywhere else (model build, validation, data loading, an
    empty epoch) a single-process run raises ``RunInterrupted`` at once; on several ranks the flag is
    agreed on collectively at the next hook (train/validation batch, epoch start/end). A second signal
    stops immediately. The run then exits non-zero with a one-line reason.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.interrupted = False
        self.distributed = False  # set by run() once the world size is known: then never raise in the handler
        self._in_step = False
        self._trainer = None
        self._previous: dict[int, object] = {}

    # ------------------------------------------------------------------------------------------ handler

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (main thread only; ``restore`` gives them back)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def error(self) -> RunInterrupted:
        name = signal.Signals(self.received).name if self.received is not None else "a signal"
        step = self._trainer.global_step if self._trainer is not None else 0
        where = f"at step {step}" if self._trainer is not None else "before training started"
        saved = ""
        ckpt = self._checkpoint()
        if ckpt is not None and ckpt.last_model_path and Path(ckpt.last_model_path).exists():
            saved = f"; last checkpoint {ckpt.last_model_path} (resume with ckpt_path=<it>)"
        return RunInterrupted(f"interrupted by {name} {where}{saved}", self.received)

    def _handler(self, signum, frame):
        if self.received is not None:  # the second signal: stop now, whatever is in flight
            log.warning("received %s again: stopping immediately", signal.Signals(signum).name)
            raise self.error()  # ModelCheckpoint saves nothing if a step was cut short
        self.received = signum
        end_progress_bars(self._trainer)
        ckpt = self._checkpoint()
        if self._in_step or self.distributed or (ckpt is not None and not ckpt.consistent):
            log.warning("received %s: will checkpoint after this step and stop (send it again to stop now)",
                        signal.Signals(signum).name)
            return
        raise self.error()

    def _checkpoint(self):
        trainer = self._trainer
        return next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None) if trainer else None

    def _agreed(self, trainer, pl_module) -> bool:
        """Whether any rank received a signal (collective on several ranks: call it on all of them)."""
        if trainer.world_size == 1:
            return self.received is not None
        flag = torch.tensor(1 if self.received is not None else 0, device=pl_module.device)
        return int(trainer.strategy.reduce(flag, reduce_op="max")) > 0

    def _raise_if_received(self, trainer, pl_module) -> None:
        if self._agreed(trainer, pl_module):
            self.interrupted = True
            raise self.error()

    # -------------------------------------------------------------------------------------------- hooks

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer
        self.install()  # also when used without run()

    def _take_over(self) -> None:
        """Lightning registers its own SIGTERM handler inside fit/validate (its loops then raise SystemExit,
        and on several ranks it broadcasts from within the handler); ours replaces it. Lightning's teardown
        puts back what it found (ours), and ``restore`` the handlers from before the run."""
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) != self._handler:
                signal.signal(sig, self._handler)

    def on_train_start(self, trainer, pl_module):
        self._take_over()

    def on_validation_start(self, trainer, pl_module):
        self._take_over()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._raise_if_received(trainer, pl_module)
        self._in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if mid_accumulation(trainer):
            self._in_step = False  # mid-accumulation: no weight changed; stop at the optimizer step
            return
        self._in_step = False
        if not self._agreed(trainer, pl_module):
            return
        log.warning("stopping after step %d (signal %s)", trainer.global_step, self.received)
        trainer.should_stop = True  # ModelCheckpoint writes last.ckpt for this step
        self.interrupted = True

    def on_train_epoch_start(self, trainer, pl_module):
        self._raise_if_received(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._raise_if_received(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._raise_if_received(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._in_step = False

    def on_exception(self, trainer, pl_module, exception):
        self._in_step = False


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, whose ``last.ckpt`` always ends as the run's final state.

    Lightning rewrites ``last.ckpt`` only with a periodic checkpoint, so a run ending between two of them
    left an older ``last.ckpt``. Here it is also written at the step where training ends (``max_steps``,
    the token budget, ``trainer.should_stop``), at train end, and when a run stops on an anticipated
    exception (``RunInterrupted``, ``NonFiniteLossError``): then it holds the last completed optimizer
    step, never a poisoned or half-applied one.

    Exactness: the loop counters, callback states and data positions are snapshotted at every optimizer
    step (a few small dicts). Weights and optimizer state change only inside a step, so after a stop
    during validation, data loading or mid-accumulation (micro-batches of the next step were consumed but
    nothing was applied), the checkpoint pairs the untouched weights with that snapshot: resuming from it
    replays the interrupted optimizer step from its first micro-batch, exactly as an uninterrupted run.
    """

    def __init__(self, *args, save_last: bool | str = True, **kwargs):
        super().__init__(*args, save_last=save_last, **kwargs)
        self.consistent = True  # weights == the state of the last snapshot (or of the run's start)
        self._boundary: dict | None = None
        self._use_boundary = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.consistent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if mid_accumulation(trainer):
            self.consistent = self._boundary is not None or trainer.global_step == 0
            return
        self._boundary = self._snapshot(trainer)
        self.consistent = True
        max_steps = trainer.max_steps
        if trainer.should_stop or (max_steps is not None and 0 < max_steps <= trainer.global_step):
            self._save_final(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save_final(trainer)

    def on_exception(self, trainer, pl_module, exception):
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, NonFiniteLossError):
            ok = True  # raised before the poisoned step changes any weight
        elif isinstance(exception, (RunInterrupted, KeyboardInterrupt)):
            ok = self.consistent  # False when a second signal cut a step short
        else:
            return  # an unexpected error: the state it left is unknown
        b = self._boundary
        if not ok or b is None or b["global_step"] != trainer.global_step:
            return
        self._use_boundary = True
        try:
            self._save_final(trainer)
        finally:
            self._use_boundary = False

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        """``last.ckpt`` is a hard link to the periodic checkpoint written at this same step (the same state:
        at full size 7.9 GB once, not twice); written in full only when there is none (a final step between
        periodic checkpoints, the state after a stop) or the strategy writes directories."""
        saved, step = self._last_checkpoint_saved, trainer.global_step
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if not (self.save_last and saved and self._last_global_step_saved == step and not self._use_boundary
                and not writes_directories(trainer.strategy) and Path(saved) != Path(filepath)):
            if trainer.is_global_zero and self.save_last:
                unshare(filepath)
            trainer.strategy.barrier()
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        previous, self.last_model_path = self.last_model_path, filepath
        if trainer.is_global_zero:
            link_checkpoint(saved, filepath)
        trainer.strategy.barrier()
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_final(self, trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == 0:
            return
        if self._last_global_step_saved == trainer.global_step and self.last_model_path:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        log.info("final checkpoint (step %d): %s", trainer.global_step, self.last_model_path)

    def _snapshot(self, trainer) -> dict:
        data = getattr(trainer.datamodule, "train_dataset", None)
        return {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                "loops": copy.deepcopy(trainer._checkpoint_connector._get_loops_state_dict()),
                "callbacks": copy.deepcopy(call._call_callbacks_state_dict(trainer)),
                "data": copy.deepcopy(data.state_dict()) if hasattr(data, "state_dict") else None}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        """When writing the last good state after a stop, put the snapshot's counters and positions in."""
        if not self._use_boundary:
            return
        b = self._boundary
        checkpoint["loops"] = b["loops"]
        checkpoint["epoch"] = b["epoch"]
        own = checkpoint.get("callbacks", {}).get(self.state_key)
        checkpoint["callbacks"] = {**b["callbacks"], **({self.state_key: own} if own is not None else {})}
        data = getattr(trainer.datamodule, "train_dataset", None)
        key = type(trainer.datamodule).__qualname__ if trainer.datamodule is not None else None
        if b["data"] is not None and key in checkpoint:
            current = data.state_dict()
            data.load_state_dict(b["data"])
            try:
                checkpoint[key] = trainer.datamodule.state_dict()
            finally:
                data.load_state_dict(current)


class EmptyEpochGuard(L.Callback):
    """An epoch that yields no training batch is an error naming the data source, not a reason to start
    the next one (an empty or exhausted source would otherwise loop through empty epochs forever)."""

    def __init__(self, source: str = "the training data"):
        self.source = source
        self._batches = 0
        self._empty_in_a_row = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batches += 1

    def on_train_epoch_end(self, trainer, pl_module):
        # Two in a row: a resumed stream may legitimately finish an epoch that had no batch left.
        self._empty_in_a_row = self._empty_in_a_row + 1 if self._batches == 0 else 0
        if self._empty_in_a_row >= 2 and not trainer.should_stop:
            raise DataError(f"{self.source}: training epochs {trainer.current_epoch - 1} and "
                            f"{trainer.current_epoch} yielded no batch (the source is empty, or every document "
                            "went to validation); check data.source and data.val_documents")


class LogLayerPlan(L.Callback):
    """Write the plan (JSON, table, mergekit YAML, picture) beside the run and log it to W&B at start."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module):
        plan = pl_module.plan
        model = pl_module.model  # its base: the path or hub id it was built from (kiwi.model.build)
        files = write_plan_files(plan, self.out_dir, base_model=str(model.config.kiwi_base_model), dtype=model.dtype)
        images = {"layer_plan": files["plot"]}
        measured = getattr(pl_module, "importance", None)
        if measured is not None:
            metric = plan.options.get("metric", "block_influence")
            images["layer_importance"] = plot_importance(
                measured.scores(metric), self.out_dir / "layer_importance.png",
                similarity=measured.similarity_cosine, chosen=duplicated_sources(plan), metric=metric)
        log_images(trainer, images)
