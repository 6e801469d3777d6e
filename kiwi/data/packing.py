"""Greedy packing of tokenized documents into fixed-length rows, plus a seeded buffer shuffle.

Conventions (the batch contract of the whole project):

- every document ends with EOS, and that EOS belongs to the document (it is predicted from the last
  word, so the model learns to end documents);
- a row is filled with documents back to back; a document that does not fit is split and its rest
  starts the next row;
- ``position_ids`` restart at 0 at the start of every segment: at a real document start and also at
  the start of a continuation in a new row. A continuation cannot attend to the earlier part (that is
  in another row), so restarting keeps positions equal to the attended context and below ``seq_len``;
- ``labels`` are the inputs (HF convention, unshifted) with -100 at every segment start, so nothing is
  ever predicted across a document boundary;
- only the very last row of a stream may be short; it is padded with EOS tokens whose labels are -100
  and whose positions restart at 0, so the padding is its own masked "document".

``document_mask=False`` (``data.document_mask``) is the other common choice: the row is one causal
sequence, ``position_ids`` run 0..seq_len-1 straight through it, and every token attends to every
earlier token of the row, other documents included. transformers sees no packed documents in
monotone positions, so sdpa, eager and flex_attention all get the plain causal mask. The labels are
the same as with the mask (-100 at every segment start and on padding), so both settings score the
same tokens and their losses compare one to one; only what each token attends to changes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

IGNORE_INDEX = -100
T = TypeVar("T")


def buffer_shuffle(items: Iterable[T], buffer_size: int, rng: random.Random) -> Iterator[T]:
    """Streaming shuffle: the output order depends only on the rng and the number of items, so it can be
    replayed exactly when resuming."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = rng.randrange(buffer_size)
        out, buffer[j] = buffer[j], item
        yield out
    rng.shuffle(buffer)
    yield from buffer


def _row(parts: list[np.ndarray], seq_len: int, pad_id: int, document_mask: bool = True) -> dict[str, np.ndarray]:
    lengths = [len(p) for p in parts]
    fill = sum(lengths)
    if fill < seq_len:
        parts = [*parts, np.full(seq_len - fill, pad_id, dtype=np.int64)]
        lengths.append(seq_len - fill)
    input_ids = np.concatenate(parts)
    starts = np.cumsum([0, *lengths[:-1]])
    position_ids = np.arange(seq_len, dtype=np.int64)
    if document_mask:
        position_ids -= np.repeat(starts, lengths)
    labels = input_ids.copy()
    labels[starts] = IGNORE_INDEX
    if fill < seq_len:
        labels[fill:] = IGNORE_INDEX
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def pack_documents(
    docs: Iterable[np.ndarray], seq_len: int, pad_id: int, doc: int = 0, offset: int = 0, document_mask: bool = True
) -> Iterator[tuple[dict[str, np.ndarray], int, int]]:
    """Yield ``(row, next_doc, next_offset)``; ``docs`` are token arrays (EOS included) numbered from
    ``doc``, and the first one is entered at token ``offset`` (resuming mid-document).

    ``(next_doc, next_offset)`` is where the following row starts, which is all a resume needs.
    """
    if seq_len < 1:
        raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
    parts: list[np.ndarray] = []
    fill = 0
    for tokens in docs:
        length = len(tokens)
        pos, offset = offset, 0
        while pos < length:
            take = min(length - pos, seq_len - fill)
            parts.append(tokens[pos : pos + take])
            fill += take
            pos += take
            if fill == seq_len:
                nxt = (doc, pos) if pos < length else (doc + 1, 0)
                yield _row(parts, seq_len, pad_id, document_mask), *nxt
                parts, fill = [], 0
        doc += 1
    if fill:
        yield _row(parts, seq_len, pad_id, document_mask), doc, 0
