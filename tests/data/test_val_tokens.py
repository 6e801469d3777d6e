"""The held-out set is bounded in tokens as well as documents (``data.val_tokens``, issue 14)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from kiwi.data.datamodule import PackedDataModule
from tests.data.data_helpers import WORDS, doc_tokens, make_docs, write_jsonl
from tests.helpers import compose


def _val_rows(dm: PackedDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(dm.val_dataloader())
    return torch.cat([b["input_ids"] for b in batches]), torch.cat([b["labels"] for b in batches])


@pytest.mark.parametrize("workers", [0, 2])
def test_val_tokens_cuts_the_first_documents_at_that_many_tokens(tmp_path, tokenizer, workers):
    docs = make_docs(30, seed=3)
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    expected = [t for d in docs[:6] for t in doc_tokens(tokenizer, d)]
    cut = 70
    assert len(expected) > cut
    dm = PackedDataModule(tokenizer, {"kind": "files", "files": [str(path)]}, seq_len=16, batch_size=2,
                          num_workers=workers, val_documents=6, val_tokens=cut)
    dm.setup("fit")
    ids, labels = _val_rows(dm)
    assert ids.shape == (-(-cut // 16), 16)  # ceil(cut / seq_len) rows, independent of num_workers
    flat, flat_labels = ids.flatten(), labels.flatten()
    assert flat[:cut].tolist() == expected[:cut]
    assert bool((flat[cut:] == tokenizer.eos_token_id).all()) and bool((flat_labels[cut:] == -100).all())

    unbounded = PackedDataModule(tokenizer, {"kind": "files", "files": [str(path)]}, seq_len=16, batch_size=2,
                                 num_workers=workers, val_documents=6, val_tokens=len(expected) + 5)
    unbounded.setup("fit")
    assert unbounded.val_dataset is not None
    assert _val_rows(unbounded)[0].flatten()[: len(expected)].tolist() == expected


def test_val_tokens_must_be_positive(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", make_docs(5))
    with pytest.raises(ValueError, match="data.val_tokens must be >= 1 or null"):
        PackedDataModule(tokenizer, {"kind": "files", "files": [str(path)]}, val_documents=2, val_tokens=0)


@pytest.mark.parametrize("data", ["corpus", "local", "wikipedia", "wikitext_shared"])
def test_every_data_config_bounds_its_held_out_set(data):
    cfg = compose("train", [f"data={data}", "data.source.files=[x.jsonl]"] if data == "local" else [f"data={data}"])
    assert cfg.data.val_tokens >= cfg.data.seq_len
    assert compose("train", ["experiment=quickstart", f"data={data}"]).data.val_tokens == 16384


def test_quickstart_validation_cost_does_not_depend_on_document_length(tmp_path, tokenizer):
    """The quickstart's 8 held-out documents: short ones give a few rows; long ones (Wikipedia articles)
    stop at val_tokens (16384 = 8 batches of 4 x 512) instead of 55+ batches."""
    short = write_jsonl(tmp_path / "short.jsonl", make_docs(40))
    long = write_jsonl(tmp_path / "long.jsonl", [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(6000))
                                                  for i in range(40)])
    n_batches = {}
    for path in (short, long):
        cfg = compose("train", ["experiment=quickstart", "data=local", f"data.source.files=[{path}]"])
        dm = instantiate(cfg.data, tokenizer=tokenizer)
        dm.setup("validate")
        n_batches[path.stem] = len(list(dm.val_dataloader()))
    assert n_batches["short"] <= 8 and n_batches["long"] == 8
