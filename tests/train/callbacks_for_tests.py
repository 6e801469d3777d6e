"""Test-only callbacks, added to a composed config by ``_target_`` like any shipped callback."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


class SignalAtStep(L.Callback):
    """Send this process a real signal after a given optimizer step (a pre-emption, in-process)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class PoisonLossAtStep(L.Callback):
    """Make the loss of one step non-finite, as a bad batch or an overflow would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step or getattr(pl_module, "_poisoned", False):
            return
        pl_module._poisoned = True
        poison_next_loss(pl_module)


def poison_next_loss(pl_module) -> None:
    """The module's next ``nll`` call returns NaN (once), as a bad batch or an overflow would."""
    original = pl_module.nll

    def poisoned(b):
        nll, n = original(b)
        pl_module.nll = original
        return nll * torch.tensor(float("nan")), n

    pl_module.nll = poisoned


class PoisonLossAtBatch(L.Callback):
    """Make the loss of one micro-batch (by its index in the run) non-finite, e.g. the second micro-batch
    of an accumulation group: the gradients of the first one are then already accumulated."""

    def __init__(self, batch: int):
        self.batch = batch
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._seen += 1
        if self._seen == self.batch + 1:
            poison_next_loss(pl_module)


class _BlockWhenPickled:
    """Pickling this blocks forever after touching ``marker``: a save that hangs half-way (until killed)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        import time

        pathlib.Path(self.marker).touch()
        while True:
            time.sleep(1)


class BlockInSave(L.Callback):
    """From optimizer step ``step`` on, every checkpoint save blocks in the middle of serialising."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step >= self.step:
            checkpoint["zz_block"] = _BlockWhenPickled(self.marker)


class MarkAndWait(L.Callback):
    """Touch ``marker`` and then wait (sleeping in short slices, so signals are served) at one hook: a run
    held in a given state (validation, data loading ...) for a test to signal it there."""

    def __init__(self, hook: str, marker: str, step: int = 0, seconds: float = 60.0):
        self.hook, self.marker, self.step, self.seconds = hook, marker, step, seconds
        self._done = False

    def _maybe_wait(self, trainer, hook):
        import pathlib
        import time

        if self._done or hook != self.hook or trainer.global_step < self.step:
            return
        self._done = True
        pathlib.Path(self.marker).touch()
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(0.05)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._maybe_wait(trainer, "validation")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # after the step's hooks: the next thing the loop does is fetch the next batch
        self._maybe_wait(trainer, "after_step")


class _SlowAfter(torch.utils.data.IterableDataset):
    def __init__(self, dataset, rows: int, marker: str):
        self.dataset, self.rows, self.marker = dataset, rows, marker

    def __iter__(self):
        import pathlib
        import time

        for i, row in enumerate(self.dataset):
            if i == self.rows:
                pathlib.Path(self.marker).touch()
                while True:  # a source that stalls (a slow disk, a hung network read)
                    time.sleep(0.05)
            yield row


def slow_data_module(slow_after_rows: int, marker: str, **data_cfg):
    """The real PackedDataModule whose training stream stalls for good after ``slow_after_rows`` rows."""
    from kiwi.data.datamodule import PackedDataModule

    class SlowDataModule(PackedDataModule):
        def train_dataloader(self):
            self.setup("fit")
            return self._loader(_SlowAfter(self.train_dataset, slow_after_rows, marker), self.batch_size, 0)

    return SlowDataModule(**data_cfg)

class PoisonLossOnRank(PoisonLossAtStep):
    """``PoisonLossAtStep`` on one rank only: the other ranks see a healthy step."""

    def __init__(self, step: int, rank: int):
        super().__init__(step)
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


class InfGradAtStep(L.Callback):
    """Write inf into one gradient after the backward of a step whose loss is finite (an overflow in
    backward), on one rank or on all."""

    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank, self.done = step, rank, False

    def on_after_backward(self, trainer, pl_module):
        if self.done or trainer.global_step != self.step or self.rank not in (None, trainer.global_rank):
            return
        p = next(p for p in pl_module.parameters() if p.grad is not None)
        p.grad.view(-1)[0] = float("inf")
        self.done = True


class RecordRank(L.Callback):
    """Write what this rank trained on and computed to ``<out_dir>/rank<r>.pt`` when training ends: its
    rows in order, the documents they hold (decoded, split at EOS), its held-out losses, its skipped
    steps, optionally its final weights, and the weights before / gradients of one optimizer step."""

    def __init__(self, out_dir: str, weights: bool = False, grads_at_step: int | None = None):
        self.out_dir, self.weights, self.grads_at_step = out_dir, weights, grads_at_step
        self.rows: list[dict] = []
        self.val: list[tuple[int, float]] = []
        self.init = self.grads = None

    @staticmethod
    def _params(pl_module, grad: bool = False) -> dict:
        return {n: (p.grad if grad else p).detach().cpu().clone() for n, p in pl_module.named_parameters()
                if not grad or p.grad is not None}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append({k: v.detach().cpu().clone() for k, v in batch.items() if torch.is_tensor(v)})
        if trainer.global_step == self.grads_at_step and self.init is None:
            self.init = self._params(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.grads_at_step and self.grads is None:
            self.grads = self._params(pl_module, grad=True)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and pl_module.last_val is not None:
            self.val.append(pl_module.last_val)

    def on_train_end(self, trainer, pl_module):
        self._write(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        self._write(trainer, pl_module)  # a run stopped by a signal ends in the signal's exception

    def _write(self, trainer, pl_module):
        from pathlib import Path

        tok = pl_module.tokenizer
        ids = torch.cat([r["input_ids"].reshape(-1) for r in self.rows]) if self.rows else torch.zeros(0)
        docs, start = [], 0
        for end in (ids == tok.eos_token_id).nonzero().flatten().tolist():
            if end > start:  # runs of EOS are the padding of an epoch's last row
                docs.append(tok.decode(ids[start:end].tolist()))
            start = end + 1
        state = {"rows": self.rows, "docs": docs, "val": self.val, "skipped_steps": pl_module.skipped_steps,
                 "global_step": trainer.global_step, "init": self.init, "grads": self.grads}
        if self.weights:
            state["weights"] = self._params(pl_module)
        torch.save(state, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


class LogitsAtStep(L.Callback):
    """Save the training module's logits on ``input_ids`` right after optimizer step ``step``, as the run
    computes them then (a grow-in-steps run with its not-yet-joined layers skipped), to compare the model a
    checkpoint of that step loads as against."""

    def __init__(self, step: int, input_ids: list[int], out: str):
        self.step, self.input_ids, self.out = step, list(input_ids), out
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.done or trainer.global_step != self.step:
            return
        self.done = True
        model = pl_module.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([self.input_ids], device=pl_module.device)).logits
        model.train(was_training)
        torch.save(logits.cpu(), self.out)


class RaiseAtStep(L.Callback):
    """An unexpected exception (a bug, not a KiwiError) after optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise ZeroDivisionError(f"a bug at step {self.step}")
