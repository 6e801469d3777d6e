"""Readers for each file format, WikiText article splitting, and the held-out validation documents."""

from __future__ import annotations

import pytest
import torch

from kiwi.data import FileSource
from kiwi.data.datamodule import PackedDataModule
from kiwi.data.sources import Selection, SourceStats
from tests.data.data_helpers import doc_tokens, make_docs, split_into_files, write_jsonl
from tests.helpers import requires_shared


def _texts(source) -> list[str]:
    return [t for _, t in source.records(Selection(), SourceStats())]


def test_all_formats_give_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = ["alpha beta", "gamma\ndelta", "kiwi"]
    write_jsonl(tmp_path / "a.jsonl", docs)
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    (tmp_path / "a.txt").write_text("\n\n".join(docs) + "\n")
    assert _texts(FileSource(str(tmp_path / "a.jsonl"))) == docs
    assert _texts(FileSource(str(tmp_path / "a.parquet"))) == docs
    assert _texts(FileSource(str(tmp_path / "a.txt"), sample_by="paragraph")) == docs
    assert _texts(FileSource(str(tmp_path / "a.txt"), sample_by="line")) == ["alpha beta", "gamma", "delta", "kiwi"]
    assert _texts(FileSource(str(tmp_path / "a.txt"), sample_by="document")) == ["\n\n".join(docs)]
    assert _texts(FileSource(str(tmp_path / "*.jsonl"))) == docs


def test_wikitext_articles_split_at_top_level_headings(tmp_path):
    text = " \n = First = \n \n Body one . \n \n = = Section = = \n \n More . \n = Second = \n \n Body two . \n"
    (tmp_path / "w.txt").write_text(text)
    arts = _texts(FileSource(str(tmp_path / "w.txt"), sample_by="wikitext"))
    assert len(arts) == 2
    assert arts[0].startswith(" = First = ") and "= = Section = =" in arts[0] and "Second" not in arts[0]
    assert arts[1].startswith(" = Second = ") and "Body two" in arts[1]


def test_shared_wikitext_has_one_document_per_article():
    path = requires_shared("data", "wikitext-2-raw", "valid.txt")
    arts = _texts(FileSource(str(path), sample_by="wikitext"))
    titles = sum(
        1
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith(" = ") and not line.startswith(" = = ")
    )
    assert len(arts) == titles == 60


def _contains(haystack: torch.Tensor, needle: tuple[int, ...]) -> bool:
    hay = haystack.tolist()
    return any(tuple(hay[i : i + len(needle)]) == needle for i in range(len(hay) - len(needle) + 1))


@pytest.mark.parametrize("workers", [0, 2])
def test_held_out_documents_never_trained_on(tmp_path, tokenizer, workers):
    docs = make_docs(40, seed=8)
    files = split_into_files(tmp_path, docs, n_files=2)
    dm = PackedDataModule(
        tokenizer,
        source={"kind": "files", "files": files},
        seq_len=64,
        batch_size=2,
        num_workers=workers,
        val_documents=5,
        repeat=False,
        shuffle_buffer=4,
    )
    dm.setup("fit")
    train = torch.cat([dm.on_before_batch_transfer(b, 0)["input_ids"].flatten() for b in dm.train_dataloader()])
    val_a = torch.cat([b["input_ids"].flatten() for b in dm.val_dataloader()])
    val_b = torch.cat([b["input_ids"].flatten() for b in dm.val_dataloader()])
    assert torch.equal(val_a, val_b), "validation is deterministic"
    for i, doc in enumerate(docs):
        full = doc_tokens(tokenizer, doc)
        marker = full[:3]  # "doc", its index digit(s), the first word: unique per document
        if i < 5:
            assert _contains(val_a, full) and not _contains(train, marker)
        else:
            assert not _contains(val_a, marker)


def test_validation_is_the_same_on_every_rank(tmp_path, tokenizer):
    """Every rank evaluates the whole held-out set, so validation metrics agree without a collective."""
    files = split_into_files(tmp_path, make_docs(20), n_files=1)
    rows = []
    for rank in (0, 2):
        dm = PackedDataModule(tokenizer, source={"kind": "files", "files": files}, seq_len=32, val_documents=4)
        dm.trainer = None
        dm._rank_world = lambda rank=rank: (rank, 3)  # what a 3-process run reports on this rank
        dm.setup("fit")
        assert dm.train_dataset.rank == rank and dm.val_dataset.world_size == 1
        rows.append(torch.cat([b["input_ids"] for b in dm.val_dataloader()]))
    assert torch.equal(rows[0], rows[1])
