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
