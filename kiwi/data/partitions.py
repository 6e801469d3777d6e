"""Elastic data order (``data.partitions``): the training rows of global optimizer step ``s`` are the same
whatever the number of devices, nodes or dataloader workers, and a run resumes exactly on another layout.

The order is a function of the seed, the data definition, ``data.partitions`` (``P``) and ``data.batch_size``
(``m``), never of the layout:

- document ``d`` (global index) belongs to partition ``d % P``; each partition shuffles and packs its own
  documents exactly as one stream of the per-stream order does (its own seeded shuffle, every document once
  per epoch), and runs through its epochs on its own;
- the global micro-batch ``u`` is the next ``m`` rows of partition ``u % P``; optimizer step ``s`` is the
  micro-batches ``[s * k, (s + 1) * k)`` with ``k = devices x accumulate_grad_batches`` (the global batch);
- rank ``i`` trains on ``u = i, i + W, i + 2W ...`` (``W`` ranks), and a rank's ``w`` dataloader workers take
  its batches in turn, so the physical reader ``i + W * j`` (worker ``j``) reads ``u ≡ i + W * j (mod W * w)``:
  whole partitions, those congruent to it modulo the number of readers. That is why ``W * w`` must divide
  ``P``; any layout that does sees exactly the same micro-batches in every step.

A checkpoint records every partition's position and the next micro-batch, not the physical streams, so a
resume on another layout re-deals the partitions from there (``reader_class``). The global batch (rows per
step) and ``m`` are part of the order: changing them on resume is refused unless ``data.reorder_on_resume``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from kiwi.errors import ConfigError

Position = tuple[int, int, int]  # (epoch, doc, offset) of the next row of a partition (kiwi.data.packed_dataset)


def valid_readers(partitions: int) -> list[int]:
    """Reader counts (ranks x max(1, workers)) that take whole partitions: the divisors of ``partitions``."""
    return [n for n in range(1, partitions + 1) if partitions % n == 0]


def check_partitions(partitions: Any, repeat: bool = True) -> int | None:
    """``data.partitions`` as an int (None: the per-stream order of kiwi before it), or a one-line error."""
    if partitions is None:
        return None
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ConfigError(f"data.partitions must be a positive integer or null (the per-stream order), got "
                          f"{partitions!r}")
    if not repeat:
        raise ConfigError("data.partitions needs data.repeat=true (partitions run through their epochs on their "
                          "own; a single pass would end them at different steps); set data.partitions=null for "
                          "one pass over the data")
    return partitions


def check_layout(partitions: int, world_size: int, num_workers: int) -> int:
    """The number of physical readers, or a one-line error naming the layouts that fit ``partitions``."""
    readers = world_size * max(1, num_workers)
    if partitions % readers:
        fits = ", ".join(str(n) for n in valid_readers(partitions))
        raise ConfigError(
            f"data.partitions={partitions} cannot be split evenly over {world_size} "
            f"process{'es' if world_size != 1 else ''} x "
            f"{max(1, num_workers)} dataloader worker{'s' if max(1, num_workers) != 1 else ''} = {readers} readers; "
            "processes x max(1, data.num_workers) "
            f"must divide it ({fits}): change trainer.devices / trainer.num_nodes / data.num_workers, or "
            "data.partitions (which changes the data order)")
    return readers


def reader_class(next_batch: int, slot: int, readers: int) -> int:
    """The partitions (those ``≡`` the returned class modulo ``readers``) that reader ``slot`` (rank + world
    x worker) reads when its dataloader starts at global micro-batch ``next_batch``."""
    return (next_batch + slot) % readers


def later(a: Position, b: Position) -> Position:
    """The further of two positions of one partition (positions only move forward)."""
    return tuple(max(tuple(a), tuple(b)))


def merge_positions(states: list[dict[str, Any]]) -> tuple[dict[int, Position], int]:
    """Every partition's furthest position, and the next micro-batch, over the ranks' states: each rank
    advances only the partitions it trained on."""
    positions: dict[int, Position] = {}
    for state in states:
        for part, pos in state.get("positions", {}).items():
            part = int(part)
            positions[part] = later(positions[part], tuple(pos)) if part in positions else tuple(pos)
    return positions, max(int(s.get("next_batch", 0)) for s in states)


class EpochDemux:
    """One read of a reader's documents for one epoch, dealt to its partitions by ``index % partitions``: the
    source is read once however many partitions the reader holds. A partition that runs ahead takes from the
    source; the others' documents wait in their queues. Partitions drift apart by their token counts (each
    gets 1/P of the micro-batches), and a reader keeps one demux per epoch between its slowest and fastest
    partition: on a small or unevenly split corpus repeated for many epochs that grows (a warning says so)."""

    def __init__(self, records: Iterator[tuple[int, str]], partitions: int, owned: list[int]) -> None:
        self.records = records
        self.partitions = partitions
        self.queues: dict[int, deque] = {p: deque() for p in owned}

    def documents(self, partition: int) -> Iterator[tuple[int, str]]:
        queue = self.queues[partition]
        while True:
            if queue:
                yield queue.popleft()
                continue
            item = next(self.records, None)
            if item is None:
                return
            self.queues[item[0] % self.partitions].append(item)


class PartitionEncoder:
    """Tokenizes a reader's partitions ahead along its visit order (a visit: the ``visit_tokens`` of one
    micro-batch of a partition), in batches of up to ``tokenize_batch`` documents across partitions.

    A batch takes, for the asking partition and then for the next ones in visit order, the documents its
    visit still needs, estimated from their characters (at the tokens-per-character ratio seen so far).
    So almost nothing is tokenized that the next visits do not pack. A fixed batch per partition would
    tokenize ``tokenize_batch`` documents ahead in each of them (64 x 64 for 64 partitions) before the first
    rows; a batch per visit would be a few documents, which the tokenizer encodes more slowly."""

    def __init__(self, encode: Callable[[list[str]], list[np.ndarray]], batch: int, order: list[int],
                 visit_tokens: int) -> None:
        self.encode = encode
        self.batch = max(1, batch)
        self.order = list(order)  # the reader's partitions in the cyclic order it visits them
        self.visit_tokens = visit_tokens
        self.texts: dict[int, Iterator[str]] = {}
        self.ready: dict[int, deque] = {p: deque() for p in order}
        self.ready_tokens = dict.fromkeys(order, 0)
        self.taken_tokens = dict.fromkeys(order, 0)  # in the current visit of that partition
        self.ratio = [1, 4]  # tokens, characters seen (a start of 1 token per 4 characters)

    def visit(self, partition: int) -> None:
        """The reader starts a micro-batch of ``partition``."""
        self.taken_tokens[partition] = 0

    def tokenized(self, partition: int, texts: Iterator[str]) -> Iterator[np.ndarray]:
        """``texts`` (one epoch of ``partition``) tokenized, in order."""
        self.texts[partition] = iter(texts)
        ready = self.ready[partition]  # empty: an epoch's iterator ends only when its documents are taken
        while True:
            if not ready:
                self._fill(partition)
                if not ready:
                    return
            tokens = ready.popleft()
            self.ready_tokens[partition] -= len(tokens)
            self.taken_tokens[partition] += len(tokens)
            yield tokens

    def _fill(self, asking: int) -> None:
        start = self.order.index(asking)
        batch: list[str] = []
        owners: list[int] = []
        per_char = self.ratio[0] / self.ratio[1]
        for i in range(len(self.order)):
            part = self.order[(start + i) % len(self.order)]
            if part not in self.texts:
                continue
            need = self.visit_tokens - self.ready_tokens[part] - (self.taken_tokens[part] if i == 0 else 0)
            while len(batch) < self.batch and (need > 0 or (i == 0 and part not in owners)):
                text = next(self.texts[part], None)
                if text is None:
                    break
                batch.append(text)
                owners.append(part)
                need -= len(text) * per_char
            if len(batch) >= self.batch:
                break
        if not batch:
            return
        encoded = self.encode(batch)
        self.ratio[0] += sum(len(t) for t in encoded)
        self.ratio[1] += sum(len(t) for t in batch)
        for part, tokens in zip(owners, encoded, strict=True):
            self.ready[part].append(tokens)
            self.ready_tokens[part] += len(tokens)
