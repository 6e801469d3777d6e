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
        original = pl_module.nll

        def poisoned(b):
            nll, n = original(b)
            pl_module.nll = original
            return nll * torch.tensor(float("nan")), n

        pl_module._poisoned = True
        pl_module.nll = poisoned


class PoisonLossAtBatch(L.Callback):
    """Make the loss of one micro-batch (by its index in the run) non-finite, e.g. the second micro-batch
    of an accumulation group: the gradients of the first one are then already accumulated."""

    def __init__(self, batch: int):
        self.batch = batch
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._seen += 1
        if self._seen != self.batch + 1:
            return
        original = pl_module.nll

        def poisoned(b):
            nll, n = original(b)
            pl_module.nll = original
            return nll * torch.tensor(float("nan")), n

        pl_module.nll = poisoned


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
            return self._loader(_SlowAfter(self.train_dataset, slow_after_rows, marker), self.batch_size)

    return SlowDataModule(**data_cfg)
