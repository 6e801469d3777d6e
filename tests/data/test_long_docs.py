"""``data.long_docs``: the long-document share is measured in the emitted stream, every document is read the
number of times the plan gives it (whatever the layout), resume is exact, and a changed plan is refused."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch
from torch.utils.data import DataLoader

from kiwi.data import PackedDataset
from kiwi.data.datamodule import PackedDataModule
from kiwi.data.long_docs import LongDocPlan
from kiwi.errors import ConfigError
from tests.data.data_helpers import consume_training, doc_tokens, make_docs, same_rows, split_into_files

SEQ = 48
MIN_TOKENS = 60  # make_docs: every 7th document has 80-160 words, the others 2-25


def _docs() -> list[str]:
    return make_docs(140, seed=11)


def _plan(tokenizer, files, mode: str, share: float = 0.8) -> LongDocPlan:
    reader = PackedDataset(files, tokenizer, SEQ)
    option = LongDocPlan.check({"min_tokens": MIN_TOKENS, "target_share": share, "mode": mode})
    return LongDocPlan.measure(reader.document_lengths(option["sample_documents"]), option)


def _epoch_documents(files, tokenizer, plan, world_size: int = 1, workers: int = 0, **kw) -> list[tuple[int, ...]]:
    """Every document (as token ids) one epoch emits, over all ranks and workers."""
    rows: dict[int, list] = defaultdict(list)
    for rank in range(world_size):
        ds = PackedDataset(files, tokenizer, SEQ, rank=rank, world_size=world_size, emit_state=True,
                           long_docs=plan, shuffle_buffer=8, seed=5, **kw)
        for batch in DataLoader(ds, batch_size=1, num_workers=workers):
            rows[int(batch["stream_state"][0, 0])].append({k: v[0] for k, v in batch.items()})
    out = []
    for stream_rows in rows.values():  # split each stream after every EOS; padding is EOS alone
        doc: list[int] = []
        for t in torch.cat([r["input_ids"] for r in stream_rows]).tolist():
            doc.append(t)
            if t == tokenizer.eos_token_id:
                out += [tuple(doc)] if len(doc) > 1 else []
                doc = []
        assert not doc, "a stream ends at a document end"
    return out


def _long_share(docs: list[tuple[int, ...]]) -> float:
    long = sum(len(d) for d in docs if len(d) >= MIN_TOKENS)
    return long / sum(len(d) for d in docs)


@pytest.mark.parametrize("mode", ["repeat", "subsample"])
def test_the_emitted_stream_reaches_the_target_share(tmp_path, tokenizer, mode):
    files = split_into_files(tmp_path, _docs(), n_files=2)
    expected = [doc_tokens(tokenizer, d) for d in _docs()]
    plain = _long_share(expected)
    plan = _plan(tokenizer, files, mode)
    assert plan.sample_share == pytest.approx(plain) and plain < 0.6
    emitted = _epoch_documents(files, tokenizer, plan)
    assert _long_share(emitted) == pytest.approx(0.8, abs=0.04)  # measured on the stream, not the plan
    if mode == "repeat":
        assert len(emitted) > len(expected) and set(emitted) == set(expected)
    else:
        assert len(emitted) < len(expected) and set(emitted) < set(expected)
        assert {d for d in expected if len(d) >= MIN_TOKENS} <= set(emitted)  # long ones are always kept


@pytest.mark.parametrize("mode", ["repeat", "subsample"])
def test_every_document_is_read_as_often_as_the_plan_says_on_any_layout(tmp_path, tokenizer, mode):
    """Exactly once, generalised: per epoch, document i appears plan.copies(i) times, counted by id, and the
    counts are the same on 1 rank, 2 ranks, and 2 ranks x 2 workers."""
    docs = _docs()
    files = split_into_files(tmp_path, docs, n_files=3)
    plan = _plan(tokenizer, files, mode)
    tokens = [doc_tokens(tokenizer, d) for d in docs]
    want = Counter()
    for i, t in enumerate(tokens):
        want[t] += plan.copies(len(t), seed=5, epoch=0, index=i)
    assert any(c > 1 for c in want.values()) or any(c == 0 for c in want.values())
    for world, workers in [(1, 0), (2, 0), (2, 2)]:
        got = Counter(_epoch_documents(files, tokenizer, plan, world, workers))
        assert +got == +want, (world, workers)


def _datamodule(tokenizer, files, workers: int, long_docs, setup: bool = True) -> PackedDataModule:
    dm = PackedDataModule(tokenizer, source={"kind": "files", "files": files}, seq_len=SEQ, batch_size=2,
                          shuffle_buffer=6, seed=1, num_workers=workers, val_documents=3, long_docs=long_docs)
    if setup:
        dm.setup("fit")
    return dm


LONG = {"min_tokens": MIN_TOKENS, "target_share": 0.8, "mode": "repeat"}


@pytest.mark.parametrize(("workers", "stop_after"), [(0, 7), (2, 9)])
def test_resume_with_long_docs_is_exact(tmp_path, tokenizer, workers, stop_after):
    """Across copies and past the epoch end (repeat=true): the rows after a restore are the uninterrupted ones."""
    files = split_into_files(tmp_path, _docs(), n_files=2)
    total = 60
    full = consume_training(_datamodule(tokenizer, files, workers, LONG), total)
    first = _datamodule(tokenizer, files, workers, LONG)
    head = consume_training(first, stop_after)
    second = _datamodule(tokenizer, files, workers, LONG, setup=False)
    second.load_state_dict(first.state_dict())
    second.setup("fit")
    assert same_rows(head + consume_training(second, total - stop_after), full)


@pytest.mark.parametrize("other", [None, {**LONG, "target_share": 0.7}, {**LONG, "mode": "subsample"}])
def test_resume_under_another_plan_is_refused(tmp_path, tokenizer, other):
    files = split_into_files(tmp_path, _docs(), n_files=1)
    first = _datamodule(tokenizer, files, 0, LONG)
    consume_training(first, 2)
    second = _datamodule(tokenizer, files, 0, other, setup=False)
    second.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="data.long_docs plan"):
        second.setup("fit")


def test_no_plan_reads_every_document_once_in_todays_order(tmp_path, tokenizer):
    """long_docs=null is the plain reader: the same rows as a dataset built without the option."""
    files = split_into_files(tmp_path, _docs(), n_files=2)
    plain = list(PackedDataset(files, tokenizer, SEQ, shuffle_buffer=8, seed=5))
    off = list(PackedDataset(files, tokenizer, SEQ, shuffle_buffer=8, seed=5, long_docs=None))
    assert same_rows(plain, off)
    assert _long_share(_epoch_documents(files, tokenizer, None)) == pytest.approx(
        _long_share([doc_tokens(tokenizer, d) for d in _docs()]))


@pytest.mark.parametrize(("option", "needle"), [
    ({**LONG, "target_share": 1.5}, "data.long_docs.target_share must be in (0, 1), got 1.5"),
    ({**LONG, "mode": "both"}, "data.long_docs.mode must be one of repeat, subsample, got 'both'"),
    ({**LONG, "min_tokens": 0}, "data.long_docs.min_tokens must be an integer >= 2, got 0"),
    ({**LONG, "share": 0.5}, "data.long_docs: expected null or"),
    ({**LONG, "min_tokens": 100_000}, "none has >= 100000 tokens: nothing to upsample"),
    ({**LONG, "target_share": 0.01}, "at least target_share=0.01: nothing to do"),
])
def test_a_bad_plan_is_one_line_at_setup(tmp_path, tokenizer, option, needle):
    files = split_into_files(tmp_path, _docs(), n_files=1)
    with pytest.raises(ConfigError) as err:
        _datamodule(tokenizer, files, 0, option)
    assert needle in str(err.value) and "\n" not in str(err.value)
