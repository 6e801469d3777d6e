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
