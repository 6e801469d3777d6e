"""``data.document_mask`` reaches every row the datamodule makes (training and held-out): false gives
positions 0..seq_len-1 straight through, with the masked rows' tokens and labels."""

from __future__ import annotations

import pytest
import torch

from kiwi.data.datamodule import PackedDataModule
from kiwi.errors import ConfigError

from .data_helpers import make_docs, write_jsonl


def _rows(tokenizer, path, document_mask, n=3):
    dm = PackedDataModule(tokenizer, {"kind": "files", "files": [str(path)]}, seq_len=64, batch_size=1,
                          shuffle_buffer=0, num_workers=0, val_documents=8, document_mask=document_mask)
    dm.setup("fit")
    train = [b for _, b in zip(range(n), dm.train_dataloader(), strict=False)]
    val = list(dm.val_dataloader())
    return train, val


def test_document_mask_false_reaches_train_and_val_rows(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", make_docs(60))
    masked, unmasked = _rows(tokenizer, path, True), _rows(tokenizer, path, False)
    for m_rows, u_rows in zip(masked, unmasked, strict=True):
        assert len(m_rows) == len(u_rows) > 0
        for m, u in zip(m_rows, u_rows, strict=True):
            assert torch.equal(m["input_ids"], u["input_ids"]) and torch.equal(m["labels"], u["labels"])
            assert torch.equal(u["position_ids"], torch.arange(64).expand_as(u["position_ids"]))
    # the masked rows do restart (several documents per 64-token row)
    assert any(int((b["position_ids"] == 0).sum()) > 1 for b in masked[0])


def test_document_mask_must_be_a_boolean(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", make_docs(4))
    with pytest.raises(ConfigError, match="data.document_mask must be true or false"):
        PackedDataModule(tokenizer, {"kind": "files", "files": [str(path)]}, document_mask="no")
