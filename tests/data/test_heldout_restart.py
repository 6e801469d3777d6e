"""The held-out set is scored on the same rows at every validation (and by evaluate.py's heldout task)."""

from __future__ import annotations

import itertools
import json

import torch
from transformers import AutoTokenizer

from kiwi.data.datamodule import PackedDataModule
from kiwi.data.tokenizer import save_as_qwen2, train_bpe


def test_every_validation_pass_starts_at_the_first_held_out_row(tmp_path):
    texts = [f"Document {i} talks about topic {i % 7} and the number {i * 13}. " * (1 + i % 5) for i in range(60)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = AutoTokenizer.from_pretrained(save_as_qwen2(train_bpe(texts, 300), tmp_path / "tok"))
    dm = PackedDataModule(tok, {"kind": "files", "files": [str(tmp_path / "docs.jsonl")]}, seq_len=32,
                          batch_size=2, val_documents=10)
    dm.setup("fit")
    first = [b["input_ids"] for b in itertools.islice(dm.val_dataloader(), 2)]  # a partial pass (limit_val_batches)
    again = [b["input_ids"] for b in itertools.islice(dm.val_dataloader(), 2)]
    assert len(first) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
