"""Row conventions of the packer: boundaries, long-document splitting, final padding, shuffle replay."""

from __future__ import annotations

import random

import numpy as np

from kiwi.data.packing import buffer_shuffle, pack_documents

EOS = 0


def _docs(*lengths: int) -> list[np.ndarray]:
    start = 1
    out = []
    for n in lengths:  # distinct token values per document, EOS last
        out.append(np.array([*range(start, start + n - 1), EOS], dtype=np.int64))
        start += n
    return out


def test_boundaries_positions_and_labels():
    rows = list(pack_documents(_docs(3, 4, 2), seq_len=5, pad_id=EOS))
    ids = [r["input_ids"].tolist() for r, _, _ in rows]
    pos = [r["position_ids"].tolist() for r, _, _ in rows]
    lab = [r["labels"].tolist() for r, _, _ in rows]
    assert ids == [[1, 2, 0, 4, 5], [6, 0, 8, 0, 0]]
    assert pos == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 0]]  # continuation restarts at 0; padding is its own segment
    assert lab == [[-100, 2, 0, -100, 5], [-100, 0, -100, 0, -100]]
    # (next_doc, next_offset) after each row: doc 1 resumes at token 2; then the stream is done.
    assert [(d, o) for _, d, o in rows] == [(1, 2), (3, 0)]


def test_long_document_is_split_not_dropped():
    (doc,) = _docs(12)
    rows = list(pack_documents([doc], seq_len=5, pad_id=EOS))
    assert [(d, o) for _, d, o in rows] == [(0, 5), (0, 10), (1, 0)]
    flat = np.concatenate([r["input_ids"] for r, _, _ in rows])
    assert flat[:12].tolist() == doc.tolist() and flat[12:].tolist() == [EOS] * 3
    last = rows[-1][0]
    assert last["labels"].tolist() == [-100, 0, -100, -100, -100]
    assert last["position_ids"].tolist() == [0, 1, 0, 1, 2]


def test_full_rows_are_not_padded_and_resume_offset_enters_mid_document():
    docs = _docs(5, 5)
    rows = list(pack_documents(docs, seq_len=5, pad_id=EOS))
    assert len(rows) == 2 and all((r["labels"][1:] != -100).all() for r, _, _ in rows)
    resumed = list(pack_documents(docs[1:], seq_len=3, pad_id=EOS, doc=1, offset=2))
    assert resumed[0][0]["input_ids"].tolist() == docs[1][2:5].tolist()
    assert resumed[0][1:] == (2, 0)


def test_buffer_shuffle_is_a_seeded_permutation():
    items = list(range(100))
    a = list(buffer_shuffle(items, 10, random.Random(1)))
    b = list(buffer_shuffle(iter(items), 10, random.Random(1)))
    c = list(buffer_shuffle(items, 10, random.Random(2)))
    assert a == b and a != c and sorted(a) == items and a != items
    assert list(buffer_shuffle(items, 0, random.Random(1))) == items
