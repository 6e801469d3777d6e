"""The elastic data order (``data.partitions``, kiwi.data.partitions) in process: the micro-batches do not
depend on ranks x workers, a saved position resumes on another layout, every document is read once per
partition epoch across a layout change, and what cannot be resumed exactly is refused in one line.

Ranks are simulated here by setting a dataset's rank and world size (the real 2-process runs are in
tests/train/test_elastic_runs.py); dataloader workers are real processes."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import pytest

from kiwi.data.datamodule import PackedDataModule
from kiwi.data.partitions import merge_positions
from kiwi.errors import ConfigError, DataError
from tests.data.data_helpers import doc_tokens, make_docs, write_jsonl

SEQ, BATCH, PARTS, VAL = 32, 2, 8, 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = make_docs(120, seed=5)
    return docs, str(write_jsonl(tmp_path_factory.mktemp("elastic") / "docs.jsonl", docs))


def _dm(corpus, workers=0, rank=0, world=1, state=None, **kw) -> PackedDataModule:
    kw = {"batch_size": BATCH, "partitions": PARTS, **kw}
    dm = PackedDataModule(_dm.tokenizer, source={"kind": "files", "files": [corpus[1]]}, seq_len=SEQ,
                          shuffle_buffer=16, seed=3, num_workers=workers, val_documents=VAL, **kw)
    dm.setup("fit")
    dm.train_dataset.rank, dm.train_dataset.world_size = rank, world
    if state is not None:
        dm.load_state_dict(state)
    return dm


@pytest.fixture(autouse=True)
def _tokenizer(tokenizer):
    _dm.tokenizer = tokenizer


def _take(dm, n: int) -> list[dict]:
    """``n`` micro-batches as Lightning consumes them (the tag recorded, then dropped), tags kept aside."""
    out = []
    for batch in itertools.islice(iter(dm.train_dataloader()), n):
        tags = batch["stream_state"].clone()
        batch = dm.on_before_batch_transfer(batch, 0)
        out.append({"input_ids": batch["input_ids"], "tags": tags})
    return out


def _ranks(corpus, world: int, workers: int, n: int, state=None) -> tuple[list[dict], dict]:
    """The global micro-batch sequence of ``world`` simulated ranks (step-major, as DDP consumes it) and
    the merged state they would save."""
    dms = [_dm(corpus, workers, rank, world, state) for rank in range(world)]
    per_rank = [_take(dm, n // world) for dm in dms]  # n rounded down to whole steps of the world
    merged = [b for step in zip(*per_rank, strict=True) for b in step]
    positions, next_batch = merge_positions([dm.train_dataset.state_dict() for dm in dms])
    saved = {**dms[0].train_dataset.state_dict(), "positions": positions, "next_batch": next_batch}
    return merged, saved


def _ids(batches) -> list[list]:
    return [b["input_ids"].tolist() for b in batches]


@pytest.mark.parametrize(("world", "workers"), [(1, 2), (1, 4), (2, 0), (2, 2), (4, 1), (8, 0)])
def test_every_layout_trains_the_same_micro_batches(corpus, world, workers):
    reference, _ = _ranks(corpus, 1, 0, 48)
    batches, _ = _ranks(corpus, world, workers, 48)
    assert _ids(batches) == _ids(reference)
    assert [int(b["tags"][0, 5]) for b in batches] == list(range(48))  # micro-batch u, in order


def test_one_partition_is_the_per_stream_order_of_one_stream(corpus):
    """partitions=1 reproduces the old single-stream order row for row: the per-stream order's shuffle
    and packing are reused per partition, not rewritten."""
    assert _ids(_take(_dm(corpus, partitions=1), 30)) == _ids(_take(_dm(corpus, partitions=None), 30))


@pytest.mark.parametrize(("before", "after"), [((1, 0), (2, 2)), ((2, 1), (1, 2)), ((2, 0), (4, 1)),
                                               ((1, 2), (8, 0))])
@pytest.mark.parametrize("stop", [6, 18])  # not multiples of the partitions: the readers' partitions rotate
def test_resume_on_another_layout_continues_the_uninterrupted_order(corpus, before, after, stop):
    reference, _ = _ranks(corpus, 1, 0, 48)
    head, state = _ranks(corpus, *before, stop)
    tail, _ = _ranks(corpus, *after, 48 - stop, state=state)
    assert len(head + tail) >= 40 and _ids(head + tail) == _ids(reference[: len(head + tail)])


def _docs_by_partition_epoch(batches, tokenizer) -> dict[tuple[int, int], Counter]:
    """Documents (as token tuples) in the rows of each (partition, epoch), from the rows' tags; a
    document split across rows is joined back by its continuation rows."""
    eos, pieces = tokenizer.eos_token_id, defaultdict(list)
    for b in batches:
        for ids, (part, _, epoch, _, _, _) in zip(b["input_ids"].tolist(), b["tags"].tolist(), strict=True):
            pieces[(part, epoch)].extend(ids)  # the position after the row, in the row's epoch
    out = {}
    for key, flat in pieces.items():
        docs, current = Counter(), []
        for t in flat:
            current.append(t)
            if t == eos:
                if len(current) > 1:  # a lone EOS is padding of the epoch's last row
                    docs[tuple(current)] += 1
                current = []
        out[key] = docs
    return out


def test_every_document_once_per_partition_epoch_across_a_layout_change(corpus, tokenizer):
    head, state = _ranks(corpus, 2, 2, 40)
    tail, _ = _ranks(corpus, 1, 2, 120, state=state)
    seen = _docs_by_partition_epoch(head + tail, tokenizer)
    docs = corpus[0]
    for part in range(PARTS):
        own = Counter(doc_tokens(tokenizer, d) for i, d in enumerate(docs) if i >= VAL and i % PARTS == part)
        epochs = sorted(e for p, e in seen if p == part)
        assert len(epochs) >= 2, f"partition {part}: the run must finish an epoch"
        for epoch in epochs[:-1]:  # the last one may still be running
            assert seen[(part, epoch)] == own, f"partition {part} epoch {epoch}: not each document once"


def test_a_layout_that_does_not_divide_the_partitions_is_refused_in_one_line(corpus):
    dm = PackedDataModule(_dm.tokenizer, source={"kind": "files", "files": [corpus[1]]}, seq_len=SEQ,
                          batch_size=BATCH, num_workers=3, val_documents=VAL, partitions=PARTS)
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message and "data.partitions=8" in message and "3 readers" in message
    assert "(1, 2, 4, 8)" in message


def test_fewer_documents_than_partitions_is_refused_in_one_line(corpus):
    with pytest.raises(DataError) as err:
        _dm(corpus, partitions=256)
    assert "\n" not in str(err.value) and "data.partitions=256" in str(err.value)


@pytest.mark.parametrize(("kw", "match"), [
    ({"partitions": None}, r"data\.partitions=8, this run has None"),
    ({"partitions": 4}, r"data\.partitions=8, this run has 4"),
    ({"batch_size": 1}, r"micro-batches of 2, this run has 1 in micro-batches of 1"),
])
def test_a_resume_that_would_change_the_order_is_refused_in_one_line(corpus, kw, match):
    _, state = _ranks(corpus, 1, 0, 4)
    state["rows_per_step"] = 2 * BATCH  # as saved by 2 processes (or an accumulation of 2)
    with pytest.raises(ConfigError, match=match) as err:
        dm = _dm(corpus, **kw, state=state)
        _take(dm, 1)
    assert "\n" not in str(err.value)


def test_another_global_batch_names_the_accumulation_that_keeps_it(corpus):
    _, state = _ranks(corpus, 1, 0, 4)
    state["rows_per_step"] = 2 * BATCH
    with pytest.raises(ConfigError, match=r"set trainer\.accumulate_grad_batches=2 to resume exactly"):
        _dm(corpus, state=state)


def test_a_checkpoint_of_the_per_stream_order_is_refused_not_reordered(corpus):
    legacy = _dm(corpus, partitions=None)
    _take(legacy, 4)
    state = legacy.state_dict()
    with pytest.raises(ConfigError, match=r"per-stream data order .* resume it with data\.partitions=null"):
        _dm(corpus, state=state)
    resumed = _dm(corpus, partitions=None, state=state)  # on its own order it still resumes exactly
    reference = _dm(corpus, partitions=None)
    assert _ids(_take(resumed, 6)) == _ids(_take(reference, 10)[4:])


def test_reorder_on_resume_goes_on_from_every_partition_position(corpus, tokenizer):
    """Another micro-batch size with data.reorder_on_resume: no document is lost or repeated."""
    head, state = _ranks(corpus, 1, 0, 30)
    dm = _dm(corpus, state={**state, "rows_per_step": BATCH}, batch_size=1, reorder_on_resume=True)
    tail = _take(dm, 240)
    seen = _docs_by_partition_epoch(head + tail, tokenizer)
    for part in range(PARTS):
        own = Counter(doc_tokens(tokenizer, d) for i, d in enumerate(corpus[0]) if i >= VAL and i % PARTS == part)
        epochs = sorted(e for p, e in seen if p == part)
        assert len(epochs) >= 2
        assert all(seen[(part, e)] == own for e in epochs[:-1]), f"partition {part}"


def test_merge_keeps_each_partitions_furthest_position():
    states = [{"positions": {0: [1, 4, 0], 1: [0, 9, 3]}, "next_batch": 12},
              {"positions": {0: [0, 7, 2], 1: [1, 0, 5]}, "next_batch": 13}]
    assert merge_positions(states) == ({0: (1, 4, 0), 1: (1, 0, 5)}, 13)


def test_the_saved_state_has_no_layout_in_it(corpus):
    _, state = _ranks(corpus, 2, 1, 8)
    assert "world_size" not in state and "n_streams" not in state
    assert state["next_batch"] == 8 and sorted(state["positions"]) == list(range(PARTS))


LONG_DOCS = {"min_tokens": 60, "target_share": 0.6, "mode": "repeat"}


def test_long_document_upsampling_keeps_the_order_elastic(corpus):
    """data.long_docs inside partitions: the copies depend on (seed, epoch, document), so the layouts and a
    resume across them still train the same micro-batches."""
    def ranks(world, workers, n, state=None):
        dms = [_dm(corpus, workers, rank, world, state, long_docs=LONG_DOCS) for rank in range(world)]
        per_rank = [_take(dm, n // world) for dm in dms]
        positions, next_batch = merge_positions([dm.train_dataset.state_dict() for dm in dms])
        return ([b for step in zip(*per_rank, strict=True) for b in step],
                {**dms[0].train_dataset.state_dict(), "positions": positions, "next_batch": next_batch})

    reference, _ = ranks(1, 0, 40)
    assert _ids(ranks(2, 2, 40)[0]) == _ids(reference)
    head, state = ranks(1, 2, 10)
    tail, _ = ranks(2, 1, 30, state)
    assert _ids(head + tail) == _ids(reference)
    assert _ids(reference) != _ids(_ranks(corpus, 1, 0, 40)[0]), "the plan must copy some documents"


def test_the_partition_encoder_keeps_each_partitions_order_and_tokenizes_little_ahead(tokenizer):
    """Batches across partitions: every partition gets exactly its own texts tokenized, in order, and what
    waits tokenized is bounded by the next visits' needs (not a batch per partition)."""
    from kiwi.data import PackedDataset, TextListSource
    from kiwi.data.partitions import PartitionEncoder

    texts = {p: make_docs(60, seed=p) for p in range(4)}
    encode = PackedDataset(TextListSource([]), tokenizer)._encode  # the real encoder of the rows
    encoder = PartitionEncoder(encode, batch=16, order=[0, 1, 2, 3], visit_tokens=48)
    streams = {p: encoder.tokenized(p, iter(texts[p])) for p in texts}
    got = defaultdict(list)
    longest = max(len(t) for ts in texts.values() for t in encode(ts))
    for visit in range(60):
        part = visit % 4
        encoder.visit(part)
        taken = 0
        while taken < 48:
            tokens = next(streams[part], None)
            if tokens is None:
                break
            got[part].append(tokens.tolist())
            taken += len(tokens)
        assert sum(encoder.ready_tokens.values()) <= 4 * (48 + longest)
    for part, own in texts.items():
        expected = [t.tolist() for t in encode(own)]
        assert got[part] == expected[: len(got[part])] and len(got[part]) > 10


@pytest.mark.parametrize(("kw", "match"), [
    ({"partitions": 0, "repeat": True}, r"data\.partitions must be a positive integer or null"),
    ({"partitions": 4, "repeat": False}, r"data\.partitions needs data\.repeat=true"),
    ({"partitions": 4, "repeat": True, "batch_rows": 0}, r"batch_rows=0 must be >= 1"),
])
def test_the_dataset_refuses_what_the_config_check_refuses(tokenizer, kw, match):
    from kiwi.data import PackedDataset, TextListSource

    with pytest.raises((ConfigError, ValueError), match=match) as err:
        PackedDataset(TextListSource([]), tokenizer, **kw)
    assert "\n" not in str(err.value)


def _subsampled(tmp_path, tokenizer, share: float) -> PackedDataModule:
    path = write_jsonl(tmp_path / "docs.jsonl", make_docs(80, seed=1, long_every=8))  # the long ones: partition 3
    dm = PackedDataModule(tokenizer, source={"kind": "files", "files": [str(path)]}, seq_len=32, batch_size=2,
                          shuffle_buffer=16, seed=3, num_workers=0, val_documents=0, partitions=8,
                          long_docs={"min_tokens": 60, "target_share": share, "mode": "subsample",
                                     "sample_documents": 80})
    dm.setup("fit")
    return dm


def test_an_epoch_that_long_docs_subsampling_empties_is_skipped_not_an_error(tmp_path, tokenizer):
    """Subsampling drops short documents at random per (seed, epoch, document), so a small partition can lose
    all of them in one epoch; that partition goes on to its next epoch (found by review: it raised "has no
    documents" after one micro-batch)."""
    dm = _subsampled(tmp_path, tokenizer, 0.9)
    batches = list(itertools.islice(iter(dm.train_dataloader()), 400))
    assert len(batches) == 400
    dropped = dm.train_dataset.upsampled["short_docs_dropped"]
    assert dropped > 0, "the plan must have dropped documents for this test to mean anything"


def test_a_plan_that_keeps_nothing_epoch_after_epoch_is_one_line_not_a_loop(tmp_path, tokenizer):
    dm = _subsampled(tmp_path, tokenizer, 0.99999)
    with pytest.raises(DataError, match=r"dropped every document of partition 0 of data\.partitions=8 in 100 epochs"):
        list(itertools.islice(iter(dm.train_dataloader()), 400))


def test_partitions_that_drift_many_epochs_apart_say_so(tmp_path, tokenizer, caplog):
    """All long documents in one partition of 8: it goes through its epochs far slower than the others, and
    the reader keeps the documents read ahead for every epoch between them (found by review)."""
    path = write_jsonl(tmp_path / "docs.jsonl", make_docs(80, seed=1, long_every=8))
    dm = PackedDataModule(tokenizer, source={"kind": "files", "files": [str(path)]}, seq_len=32, batch_size=2,
                          shuffle_buffer=16, seed=3, num_workers=0, val_documents=0, partitions=8)
    dm.setup("fit")
    with caplog.at_level("WARNING", logger="kiwi.data.packed_dataset"):
        list(itertools.islice(iter(dm.train_dataloader()), 300))
    assert any("partitions are 8 epochs apart" in r.getMessage() for r in caplog.records)
