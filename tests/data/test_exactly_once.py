"""Every token of every document exactly once per epoch, for any world size and worker count."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch.utils.data import DataLoader

from kiwi.data import DataError, PackedDataset, TextListSource
from tests.data.data_helpers import assert_exactly_once, check_row, make_docs, split_into_files

SEQ = 48


def _collect_direct(source, tokenizer, world_size: int, **kw) -> dict[int, list]:
    rows: dict[int, list] = defaultdict(list)
    for rank in range(world_size):
        ds = PackedDataset(source, tokenizer, SEQ, rank=rank, world_size=world_size, emit_state=True, **kw)
        for sample in ds:
            check_row(sample, SEQ, tokenizer.eos_token_id)
            rows[int(sample["stream_state"][0])].append(sample)
    return rows


def _collect_loader(source, tokenizer, world_size: int, workers: int, batch_size: int, **kw) -> dict[int, list]:
    rows: dict[int, list] = defaultdict(list)
    for rank in range(world_size):
        ds = PackedDataset(source, tokenizer, SEQ, rank=rank, world_size=world_size, emit_state=True, **kw)
        for batch in DataLoader(ds, batch_size=batch_size, num_workers=workers):
            for i in range(len(batch["input_ids"])):
                sample = {k: v[i] for k, v in batch.items()}
                check_row(sample, SEQ, tokenizer.eos_token_id)
                rows[int(sample["stream_state"][0])].append(sample)
    return rows


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shuffle_buffer", [0, 16])
def test_exactly_once_across_ranks(tmp_path, tokenizer, world_size, shuffle_buffer):
    docs = make_docs(61)
    files = split_into_files(tmp_path, docs, n_files=3)  # 3 shards: not divisible by most world sizes
    rows = _collect_direct(files, tokenizer, world_size, shuffle_buffer=shuffle_buffer, seed=3)
    assert_exactly_once(rows, docs, tokenizer, n_streams=world_size)


@pytest.mark.parametrize(("world_size", "workers"), [(1, 2), (3, 2), (2, 1)])
def test_exactly_once_with_dataloader_workers(tmp_path, tokenizer, world_size, workers):
    docs = make_docs(45, seed=5)
    files = split_into_files(tmp_path, docs, n_files=2)
    rows = _collect_loader(files, tokenizer, world_size, workers, batch_size=2, shuffle_buffer=8)
    assert_exactly_once(rows, docs, tokenizer, n_streams=world_size * workers)


def test_more_streams_than_documents(tokenizer):
    """A rank left without documents stops with a clear error (it would otherwise end every epoch at once,
    or leave the other ranks waiting); the ranks that have documents still get exactly theirs."""
    docs = make_docs(5)
    with pytest.raises(DataError, match=r"stream 5 of 8 \(rank 5, worker 0\) has no documents"):
        _collect_direct(TextListSource(docs), tokenizer, world_size=8)
    rows: dict[int, list] = defaultdict(list)
    for rank in range(5):
        ds = PackedDataset(TextListSource(docs), tokenizer, SEQ, rank=rank, world_size=8, emit_state=True)
        for sample in ds:
            rows[int(sample["stream_state"][0])].append(sample)
    assert_exactly_once(rows, docs, tokenizer, n_streams=8)


def test_rank_defaults_to_single_process(tokenizer):
    ds = PackedDataset(TextListSource(make_docs(3)), tokenizer, SEQ)
    assert (ds.rank, ds.world_size) == (0, 1)
    assert not torch.distributed.is_initialized()


def test_hub_code_path_with_a_local_streaming_dataset(tmp_path, tokenizer):
    """HubSource goes through datasets' streaming IterableDataset; a local json stream is the same type, so
    this exercises the hub path offline (including DataLoader workers, where datasets would otherwise
    shard by worker on its own)."""
    import datasets

    from kiwi.data.sources import HubSource

    docs = make_docs(30, seed=9)
    files = split_into_files(tmp_path, docs, n_files=3)

    def loader(path, name, split, revision):
        assert (path, name, split) == ("wikimedia/wikipedia", "20231101.en", "train")
        return datasets.load_dataset("json", data_files=files, split="train", streaming=True)

    source = HubSource("wikimedia/wikipedia", "20231101.en", loader=loader)
    rows = _collect_loader(source, tokenizer, world_size=2, workers=2, batch_size=3)
    assert_exactly_once(rows, docs, tokenizer, n_streams=4)
