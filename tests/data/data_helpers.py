"""Helpers for the data tests: documents of known content and checks of the batch contract."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import torch

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "kiwi",
    "fruit",
    "river",
    "stone",
    "light",
    "dark",
    "pack",
    "row",
    "token",
    "model",
    "layer",
    "deep",
]


def make_docs(n: int, seed: int = 0, long_every: int = 7) -> list[str]:
    """Unique documents (each starts with its index); every ``long_every``-th one is long enough to be
    split across rows at the small ``seq_len`` the tests use."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        length = rng.randint(80, 160) if i % long_every == 3 else rng.randint(2, 25)
        docs.append(f"doc{i} " + " ".join(rng.choice(WORDS) for _ in range(length)))
    return docs


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({field: t, "id": "x"}) + "\n")
    return path


def split_into_files(tmp_path: Path, docs: list[str], n_files: int) -> list[str]:
    """Spread ``docs`` over ``n_files`` JSON-lines files in order (so the global order is ``docs``)."""
    bounds = np.linspace(0, len(docs), n_files + 1).astype(int)
    return [str(write_jsonl(tmp_path / f"part{k}.jsonl", docs[bounds[k] : bounds[k + 1]])) for k in range(n_files)]


def doc_tokens(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)


def check_row(row: dict[str, torch.Tensor], seq_len: int, eos: int) -> None:
    """The batch contract: segments start at position 0 and count up; a segment start inside a row follows
    an EOS; labels equal inputs except -100 at segment starts (and on padding)."""
    ids, pos, labels = row["input_ids"], row["position_ids"], row["labels"]
    assert ids.dtype == pos.dtype == labels.dtype == torch.long
    assert ids.shape == pos.shape == labels.shape == (seq_len,)
    starts = (pos == 0).nonzero().flatten().tolist()
    assert starts[0] == 0
    for a, b in zip(starts, [*starts[1:], seq_len], strict=True):
        assert pos[a:b].tolist() == list(range(b - a))
        if a > 0:
            assert ids[a - 1] == eos, "a segment starts inside a row only after a document's EOS"
        assert labels[a] == -100
        seg_labels, seg_ids = labels[a + 1 : b], ids[a + 1 : b]
        assert bool((seg_labels == seg_ids).all()) or bool((seg_labels == -100).all() and (seg_ids == eos).all())


def stream_documents(rows: list[dict[str, torch.Tensor]], real_tokens: int, eos: int) -> list[tuple[int, ...]]:
    """Documents of one stream, in order: the first ``real_tokens`` tokens of its rows split after each
    EOS; everything after them must be masked EOS padding."""
    flat = torch.cat([r["input_ids"] for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
    labels = torch.cat([r["labels"] for r in rows]) if rows else flat
    assert len(flat) >= real_tokens
    pad_ids, pad_labels = flat[real_tokens:], labels[real_tokens:]
    assert bool((pad_ids == eos).all()) and bool((pad_labels == -100).all())
    assert len(pad_ids) < (len(rows[-1]["input_ids"]) if rows else 1), "only the last row may be padded"
    docs, current = [], []
    for t in flat[:real_tokens].tolist():
        current.append(t)
        if t == eos:
            docs.append(tuple(current))
            current = []
    assert not current, "a stream must end at a document end"
    return docs


def assert_exactly_once(
    rows_by_stream: dict[int, list], docs: list[str], tokenizer, n_streams: int, first: int = 0
) -> None:
    expected_docs = {i: doc_tokens(tokenizer, d) for i, d in enumerate(docs) if i >= first and d.strip()}
    seen: Counter = Counter()
    for stream in range(n_streams):
        owned = [toks for i, toks in expected_docs.items() if i % n_streams == stream]
        got = stream_documents(rows_by_stream.get(stream, []), sum(map(len, owned)), tokenizer.eos_token_id)
        assert Counter(got) == Counter(owned), f"stream {stream} did not yield exactly its documents"
        seen.update(got)
    assert seen == Counter(expected_docs.values())


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds`` (main thread, POSIX)."""

    def _expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: an endless loop instead of a clear error")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def same_rows(a: list[dict], b: list[dict]) -> bool:
    keys = ("input_ids", "position_ids", "labels")
    return len(a) == len(b) and all(all(torch.equal(x[k], y[k]) for k in keys) for x, y in zip(a, b, strict=True))


def consume_training(dm, n: int) -> list[dict]:
    """What Lightning does per training batch of a datamodule: fetch, then ``on_before_batch_transfer``."""
    out = []
    for batch in itertools.islice(iter(dm.train_dataloader()), n):
        batch = dm.on_before_batch_transfer(batch, 0)
        assert "stream_state" not in batch
        out.extend({k: v[i] for k, v in batch.items() if v.dim()} for i in range(len(batch["input_ids"])))
    return out
