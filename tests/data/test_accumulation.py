"""``group_label_tokens``: label tokens of each training batch's accumulation group (for a token-weighted
loss), and the data definition every checkpoint carries (``datamodule_hyper_parameters``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from kiwi.data.accumulation import GROUP_TOKENS_KEY, AccumulationGroups
from kiwi.data.datamodule import PackedDataModule
from tests.data.data_helpers import make_docs, split_into_files


def _batch(n_labels: int, seq: int = 8) -> dict:
    labels = torch.full((1, seq), -100)
    labels[0, :n_labels] = 1
    return {"input_ids": torch.zeros(1, seq, dtype=torch.long), "labels": labels}


def test_group_counts():
    counts = [3, 5, 0, 8, 2, 7, 1]
    accumulate = [3]
    groups = AccumulationGroups([_batch(n) for n in counts], lambda: accumulate[0])
    got = [b[GROUP_TOKENS_KEY] for b in groups]
    assert all(g.dtype == torch.int64 and g.shape == () for g in got)
    assert [int(g) for g in got] == [8, 8, 8, 17, 17, 17, 1]  # the last group of the pass is shorter
    accumulate[0] = 2  # read again at the start of every pass
    assert [int(b[GROUP_TOKENS_KEY]) for b in groups] == [8, 8, 8, 8, 9, 9, 1]
    accumulate[0] = 1
    assert [int(b[GROUP_TOKENS_KEY]) for b in groups] == counts
    accumulate[0] = 0
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        list(groups)


class Recorder(L.LightningModule):
    """A tiny real model that records, per training batch, what the loss would use."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.out = torch.nn.Linear(8, vocab)
        self.seen: list[tuple[int, list, int, int]] = []

    def training_step(self, batch, batch_idx):
        labels = batch["labels"]
        self.seen.append((self.global_step, batch["input_ids"].tolist(), int((labels != -100).sum()),
                          int(batch[GROUP_TOKENS_KEY])))
        logits = self.out(self.emb(batch["input_ids"]))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _datamodule(tokenizer, files, **kw) -> PackedDataModule:
    args = {"seq_len": 24, "batch_size": 2, "num_workers": 2, "val_documents": 3, "val_tokens": 40,
            "shuffle_buffer": 4, "seed": 2, **kw}
    return PackedDataModule(tokenizer, {"kind": "files", "files": files}, **args)


def _fit(tmp_path, tokenizer, dm, ckpt_path=None, **trainer_kw) -> Recorder:
    model = Recorder(len(tokenizer))
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        accumulate_grad_batches=2, **trainer_kw)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def _check_groups(seen) -> None:
    """Batches trained in one optimizer step carry the label tokens of exactly those batches."""
    steps: dict[int, list] = {}
    for step, _, n, group in seen:
        steps.setdefault(step, []).append((n, group))
    for step, batches in steps.items():
        assert len(batches) <= 2
        assert all(group == sum(n for n, _ in batches) for _, group in batches), f"step {step}: {batches}"


def test_trainer_fit_groups_and_checkpointed_data_definition(tmp_path, tokenizer):
    """Real Trainer.fit with accumulate_grad_batches=2 over 2 epochs of an odd number of batches; the
    checkpoint carries the data definition, and it rebuilds the same held-out set."""
    files = split_into_files(tmp_path, make_docs(20, seed=4), n_files=2)
    dm = _datamodule(tokenizer, files, repeat=False)
    model = _fit(tmp_path / "run", tokenizer, dm, max_epochs=2)
    per_epoch = len(model.seen) // 2
    assert per_epoch % 2 == 1, "an odd epoch, so its last group is one batch"
    _check_groups(model.seen)
    assert model.seen[per_epoch - 1][3] == model.seen[per_epoch - 1][2]  # the short last group of epoch 0

    (ckpt,) = (tmp_path / "run").rglob("*.ckpt")
    hparams = torch.load(ckpt, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]
    assert dict(hparams) == {
        "source": {"kind": "files", "files": files}, "seq_len": 24, "batch_size": 2, "shuffle_buffer": 4,
        "seed": 2, "num_workers": 2, "val_documents": 3, "val_tokens": 40, "val_seq_len": None,
        "val_batch_size": None, "text_field": "text", "on_error": "raise", "max_documents": None,
        "repeat": False, "tokenize_batch": 64, "pin_memory": False, "encoder": "tokenizer", "partitions": None,
        "reorder_on_resume": False,
        "document_mask": True, "long_docs": None,
    }
    again = PackedDataModule(tokenizer, **hparams)
    again.setup("validate")
    dm.setup("validate")
    a, b = list(dm.val_dataloader()), list(again.val_dataloader())
    assert len(a) == len(b) > 0 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b, strict=True))


def test_resume_is_exact_with_accumulation(tmp_path, tokenizer):
    """Reading a group ahead does not move the saved data position: a run stopped at a checkpoint and
    resumed trains on the same batches, in the same groups, as one that never stopped."""
    files = split_into_files(tmp_path, make_docs(60, seed=5), n_files=2)
    straight = _fit(tmp_path / "straight", tokenizer, _datamodule(tokenizer, files), max_steps=6)
    first = _fit(tmp_path / "first", tokenizer, _datamodule(tokenizer, files), max_steps=3)
    (ckpt,) = (tmp_path / "first").rglob("*.ckpt")
    resumed = _fit(tmp_path / "resumed", tokenizer, _datamodule(tokenizer, files), max_steps=6, ckpt_path=ckpt)
    assert len(straight.seen) == 12
    assert [s[1] for s in first.seen + resumed.seen] == [s[1] for s in straight.seen]
    assert [s[3] for s in first.seen + resumed.seen] == [s[3] for s in straight.seen]
    _check_groups(straight.seen)
