"""Learning-rate schedules as LambdaLR factories; steps come from the token budget at run time."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check(warmup_steps: int, total_steps: int) -> None:
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"scheduler: need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1):
    _check(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_constant(optimizer: Optimizer, warmup_steps: int, total_steps: int):
    _check(warmup_steps, total_steps)
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
