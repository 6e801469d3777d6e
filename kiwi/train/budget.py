"""Token budgets, as researchers think of them, turned into optimizer steps."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from kiwi.train.flops import flops_per_token
from kiwi.upscale import count_parameters

# A FLOPs-matched run (budget.match_flops_layers, distillation's flops_matched) whose FLOPs miss their target
# by more than this (relative; whole-step rounding at small budgets) is not equal compute: warned, and flagged
# in the study's equal-FLOPs comparisons.
FLOPS_TOLERANCE = 0.02


@dataclass(frozen=True)
class Budget:
    total_tokens: int
    tokens_per_step: int
    steps: int
    warmup_steps: int

    def describe(self, tokens_per_s: float | None = None) -> str:
        line = (f"budget: {self.total_tokens:,} tokens = {self.steps:,} steps x {self.tokens_per_step:,} "
                f"tokens/step (warmup {self.warmup_steps:,} steps)")
        if tokens_per_s:
            hours = self.total_tokens / tokens_per_s / 3600
            line += f"; about {hours:,.2f} h at {tokens_per_s:,.0f} tokens/s"
        return line


def make_budget(total_tokens: float, batch_size: int, seq_len: int, world_size: int,
                accumulate_grad_batches: int = 1, warmup_fraction: float = 0.01,
                max_steps: int | None = None) -> Budget:
    """Steps from a token budget; an explicit ``max_steps`` wins and sets the budget instead."""
    per_step = int(batch_size) * int(seq_len) * int(world_size) * int(accumulate_grad_batches)
    if per_step <= 0:
        raise ValueError("budget: batch_size, seq_len, devices and accumulate_grad_batches must be positive")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"budget.warmup_fraction: expected a value in [0, 1), got {warmup_fraction}")
    if max_steps is not None and max_steps > 0:
        steps = int(max_steps)
    else:
        if total_tokens is None or total_tokens <= 0:
            raise ValueError(f"budget.total_tokens: expected a positive number, got {total_tokens}")
        steps = math.ceil(float(total_tokens) / per_step)
    return Budget(steps * per_step, per_step, steps, int(round(warmup_fraction * steps)))


def at_depth(config, layers: int):
    """A copy of a model config with ``layers`` decoder layers: the same architecture, deeper or shallower."""
    out = copy.deepcopy(config)
    out.num_hidden_layers = int(layers)
    return out


def flops_matched_tokens(total_tokens: float, config, match_layers: int, seq_len: int) -> int:
    """Tokens that cost ``config``'s model the training FLOPs of ``total_tokens`` through the same
    architecture at ``match_layers`` decoder layers (an equal-compute control for a deeper model).

    FLOPs per token follow kiwi.train.flops with each row one document of ``seq_len`` tokens, so both
    sides count attention the same way."""
    if match_layers is None or int(match_layers) < 1:
        raise ValueError(f"budget.match_flops_layers: expected a positive layer count, got {match_layers}")
    ratio = flops_per_token(at_depth(config, int(match_layers)), [seq_len]) / flops_per_token(config, [seq_len])
    return int(round(float(total_tokens) * ratio))


def training_flops(config, tokens: int, seq_len: int) -> float:
    """Model FLOPs of training ``tokens`` tokens (6N matmuls + attention, rows of one ``seq_len``
    document), the convention of kiwi.train.flops; frozen layers are counted as trained."""
    return float(tokens) * flops_per_token(config, [seq_len])


def forward_flops(config, tokens: int, seq_len: int) -> float:
    """Model FLOPs of a forward pass over ``tokens`` tokens: a third of ``training_flops`` in this
    convention (2N of 6N matmul FLOPs, and the attention's forward share). What a distillation teacher costs."""
    return training_flops(config, tokens, seq_len) / 3


def teacher_matched_tokens(total_tokens: float, config, teacher_config, seq_len: int) -> int:
    """Tokens at which training ``config``'s model *plus* a teacher's forward pass on every token costs
    the FLOPs of training it alone on ``total_tokens``: distillation at equal compute."""
    own = flops_per_token(config, [seq_len])
    return int(round(float(total_tokens) * own / (own + forward_flops(teacher_config, 1, seq_len))))


def tokens_per_param_budget(tokens_per_param: float, model) -> int:
    """``budget.tokens_per_param`` x every parameter of ``model`` (tied embeddings once): the training
    regime (Qwen2.5-0.5B saw ~36,000 tokens per parameter) as a token budget."""
    if tokens_per_param is None or float(tokens_per_param) <= 0:
        raise ValueError(f"budget.tokens_per_param: expected a positive number, got {tokens_per_param}")
    return int(round(float(tokens_per_param) * count_parameters(model)))
