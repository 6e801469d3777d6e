"""Label-token counts per gradient-accumulation group, for a loss that weights every token of a step equally.

A token-weighted loss over an optimizer step needs, on every micro-batch, the number of label tokens of
the whole step. Dataloader workers interleave their batches, so the count cannot come from the dataset:
``AccumulationGroups`` wraps the training ``DataLoader`` in the main process and reads one group ahead.

Groups are ``accumulate`` consecutive batches counted from the first batch of each iteration (each epoch);
the last group of an iteration may be shorter. This matches Lightning's accumulation boundaries when an
iteration starts at an optimizer-step boundary, as every epoch and every resume from a step checkpoint does.
Only the batch dicts are touched, so the ``stream_state`` tags still reach ``on_before_batch_transfer``
with the batch that is trained on (exact resume is unaffected by the read-ahead). A ``DataError`` raised in
a worker comes out as the worker's one-line message, not torch's re-wrapped traceback.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from kiwi.data.packed_dataset import unwrap_worker_error
from kiwi.data.packing import IGNORE_INDEX
from kiwi.errors import DataError

GROUP_TOKENS_KEY = "group_label_tokens"


def label_tokens(batch: dict[str, Any]) -> int:
    """Positions that are predicted (labels != -100): what a token-mean loss divides by."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


class AccumulationGroups:
    """Iterable over ``loader``'s batches, each with ``GROUP_TOKENS_KEY``: an int64 0-d tensor holding the
    label tokens of all batches of its accumulation group. ``accumulate`` is called at the start of each
    iteration (Lightning's ``trainer.accumulate_grad_batches`` is only known once the trainer is attached)."""

    def __init__(self, loader: Iterable[dict[str, Any]], accumulate: Callable[[], int]) -> None:
        self.loader = loader
        self.accumulate = accumulate

    def __iter__(self) -> Iterator[dict[str, Any]]:
        size = int(self.accumulate())
        if size < 1:
            raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {size}")
        batches = iter(self.loader)
        while group := self._next_group(batches, size):
            total = torch.tensor(sum(label_tokens(b) for b in group), dtype=torch.int64)
            for batch in group:
                yield {**batch, GROUP_TOKENS_KEY: total.clone()}

    @staticmethod
    def _next_group(batches: Iterator[dict[str, Any]], size: int) -> list[dict[str, Any]]:
        try:
            return list(itertools.islice(batches, size))
        except DataError as error:  # from a worker: keep the one line that names the file and line
            unwrapped = unwrap_worker_error(error)
            if unwrapped is error:
                raise
            raise unwrapped from None
