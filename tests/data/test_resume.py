"""Exact resume: the rows after a restore equal the rows of an uninterrupted run."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from kiwi.data import PackedDataset, TextListSource
from kiwi.data.datamodule import PackedDataModule
from tests.data.data_helpers import consume_training, make_docs, same_rows, split_into_files

SEQ = 40


@pytest.mark.parametrize("stop_after", [1, 4, 13, 30])
def test_dataset_resume_in_process(tokenizer, stop_after):
    """Includes stops inside a long (split) document and, with repeat, across the epoch boundary."""
    source = TextListSource(make_docs(50, seed=2))
    kw = {"shuffle_buffer": 8, "seed": 4, "repeat": True}
    full = list(itertools.islice(PackedDataset(source, tokenizer, SEQ, **kw), 60))
    first = PackedDataset(source, tokenizer, SEQ, **kw)
    head = list(itertools.islice(iter(first), stop_after))
    state = first.state_dict()
    second = PackedDataset(source, tokenizer, SEQ, **kw)
    second.load_state_dict(state)
    rest = list(itertools.islice(iter(second), 60 - stop_after))
    assert same_rows(head + rest, full)
    assert full[29]["position_ids"][0] == 0  # every row starts a segment


def test_resume_lands_mid_document(tokenizer):
    source = TextListSource(make_docs(20, seed=2))
    ds = PackedDataset(source, tokenizer, SEQ)
    offsets = []
    for _ in ds:
        offsets.append(ds.state_dict()["positions"][0][2])
    assert any(o > 0 for o in offsets), "the fixture should split a document across rows"


def _datamodule(tokenizer, files, workers: int, setup: bool = True, **kw) -> PackedDataModule:
    dm = PackedDataModule(
        tokenizer,
        source={"kind": "files", "files": files},
        seq_len=SEQ,
        batch_size=2,
        shuffle_buffer=6,
        seed=1,
        num_workers=workers,
        val_documents=3,
        **kw,
    )
    if setup:
        dm.setup("fit")
    return dm


@pytest.mark.parametrize(("workers", "stop_after"), [(0, 5), (2, 5), (2, 6), (3, 7)])
def test_datamodule_resume_through_dataloader(tmp_path, tokenizer, workers, stop_after):
    files = split_into_files(tmp_path, make_docs(70, seed=6), n_files=3)
    total = 24
    full = consume_training(_datamodule(tokenizer, files, workers), total)
    first = _datamodule(tokenizer, files, workers)
    head = consume_training(first, stop_after)
    state = first.state_dict()
    second = _datamodule(tokenizer, files, workers, setup=False)
    second.load_state_dict(state)  # before setup, as Lightning restores the datamodule
    second.setup("fit")
    rest = consume_training(second, total - stop_after)
    assert same_rows(head + rest, full)


def test_resume_with_other_worker_count_is_refused(tmp_path, tokenizer):
    files = split_into_files(tmp_path, make_docs(30), n_files=1)
    dm = _datamodule(tokenizer, files, workers=2)
    consume_training(dm, 2)
    other = _datamodule(tokenizer, files, workers=1)
    other.load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="num_workers"):
        next(iter(DataLoader(other.train_dataset, batch_size=1, num_workers=0)))


def test_resume_with_other_seq_len_is_refused(tmp_path, tokenizer):
    files = split_into_files(tmp_path, make_docs(30), n_files=1)
    dm = _datamodule(tokenizer, files, workers=0)
    consume_training(dm, 2)
    other = PackedDataModule(tokenizer, source={"kind": "files", "files": files}, seq_len=SEQ + 1)
    other.setup("fit")
    with pytest.raises(ValueError, match="seq_len"):
        other.load_state_dict(dm.state_dict())


def _batches(dm: PackedDataModule, limit: int | None = None) -> list[dict]:
    """One pass over the train loader (a Lightning epoch), or its first ``limit`` batches, consumed as
    Lightning does."""
    out = []
    for batch in itertools.islice(iter(dm.train_dataloader()), limit):
        out.append(dm.on_before_batch_transfer(batch, 0))
    return out


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b, strict=True))


def test_resume_is_exact_at_every_stop_around_the_end_of_an_epoch(tmp_path, tokenizer):
    """repeat=false, 2 workers: a stream that finished its epoch before the stop stays silent for the rest of
    that epoch after a restore (it used to start its next epoch inside the current one)."""
    files = split_into_files(tmp_path, make_docs(56, seed=6), n_files=2)
    kw = {"repeat": False}
    dm = _datamodule(tokenizer, files, 2, **kw)
    epochs = [_batches(dm), _batches(dm)]
    n = len(epochs[0])
    assert 15 < n < 40 and len(epochs[1]) == n
    for stop in range(n - 4, n + 2):
        first = _datamodule(tokenizer, files, 2, **kw)
        head = _batches(first, stop) if stop <= n else _batches(first) + _batches(first, stop - n)
        second = _datamodule(tokenizer, files, 2, setup=False, **kw)
        second.load_state_dict(first.state_dict())
        second.setup("fit")
        rest_of_epoch = _batches(second)
        if stop < n:
            assert _same_batches(head + rest_of_epoch, epochs[0]), f"stop after batch {stop} of {n}"
            rest_of_epoch += _batches(second)
        got = head + rest_of_epoch
        if stop <= n:
            assert _same_batches(got, epochs[0] + epochs[1]), f"stop after batch {stop} of {n}"
        else:
            assert _same_batches(got, epochs[0] + epochs[1][: len(got) - n]) and len(got) == 2 * n, stop
