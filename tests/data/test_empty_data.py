"""Empty or exhausted data fails fast with a clear error naming the source and the reason (issue 10).

Before the fix, each of these trained on nothing: an endless loop of empty epochs, or a stream that ran
alone while another had nothing. Every test runs under a deadline, so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader

from kiwi.cli import ROOT_DIR
from kiwi.data import DataError, FileSource, PackedDataset
from kiwi.data.datamodule import PackedDataModule
from tests.data.data_helpers import deadline, make_docs, write_jsonl
from tests.helpers import compose


def _datamodule(tokenizer, path, setup: str | None = "fit", world: int | None = None, **kw) -> PackedDataModule:
    dm = PackedDataModule(tokenizer, source={"kind": "files", "files": [str(path)]}, seq_len=32, **kw)
    if world is not None:
        dm._rank_world = lambda: (0, world)  # what rank 0 of a `world`-process run reports
    if setup:
        dm.setup(setup)
    return dm


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.txt", "blank.txt"])
def test_empty_file_is_a_clear_error(tmp_path, tokenizer, name):
    path = tmp_path / name
    path.write_text("\n  \n" if name.startswith("blank") else "")
    with deadline(20), pytest.raises(DataError, match=rf"{name}.*holds no documents"):
        _datamodule(tokenizer, path, val_documents=2)
    with deadline(20), pytest.raises(DataError, match=rf"{name}.*has no documents"):
        next(iter(PackedDataset(FileSource(str(path)), tokenizer, seq_len=32, repeat=True)))


def test_every_record_skipped_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"body": f"no text {i}"}) + "\n" for i in range(6)))
    with deadline(20), pytest.raises(DataError, match=r"bad.jsonl.*none of the 6 training records.*bad_records"):
        _datamodule(tokenizer, path, on_error="skip")
    with deadline(20), pytest.raises(DataError, match=r"bad.jsonl.*none of the 2 held-out records"):
        _datamodule(tokenizer, path, on_error="skip", val_documents=2)
    source = FileSource(str(path), on_error="skip")
    with deadline(20), pytest.raises(DataError, match=r"has no documents.*bad_records"):
        next(iter(PackedDataset(source, tokenizer, seq_len=32, repeat=True)))


@pytest.mark.parametrize("val_documents", [5, 8])
def test_val_documents_covering_the_source_is_a_clear_error(tmp_path, tokenizer, val_documents):
    path = write_jsonl(tmp_path / "five.jsonl", make_docs(5))
    with deadline(20), pytest.raises(DataError, match=rf"five.jsonl holds 5 documents and data.val_documents="
                                                      rf"{val_documents}.*nothing is left to train on"):
        _datamodule(tokenizer, path, val_documents=val_documents)
    # evaluating the held-out set alone (evaluate.py's heldout) is fine
    dm = _datamodule(tokenizer, path, setup="validate", val_documents=val_documents)
    assert len(list(dm.val_dataloader())) >= 1


def test_worker_or_rank_without_documents_is_a_clear_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "five.jsonl", make_docs(5))
    with deadline(20), pytest.raises(DataError, match=r"2 training records for 3 streams \(1 ranks x 3 dataloader "
                                                      r"workers\); rank 0 worker 2 would get no training document"):
        _datamodule(tokenizer, path, val_documents=3, num_workers=3)
    with deadline(20), pytest.raises(DataError, match=r"for 3 streams \(3 ranks x 1 dataloader workers\); rank 2 "
                                                      r"worker 0 would get no training document"):
        _datamodule(tokenizer, path, val_documents=3, world=3)
    _datamodule(tokenizer, path, val_documents=3, num_workers=2)  # exactly one document per stream is enough


def test_a_worker_without_documents_stops_the_loader(tmp_path, tokenizer):
    """The stream-level guard behind the up-front check: one worker's stream is empty, the other would
    cycle its epochs forever."""
    path = write_jsonl(tmp_path / "one.jsonl", make_docs(1))
    ds = PackedDataset(FileSource(str(path)), tokenizer, seq_len=32, repeat=True)
    with deadline(60), pytest.raises(DataError, match=r"stream 1 of 2 \(rank 0, worker 1\) has no documents"):
        list(DataLoader(ds, batch_size=1, num_workers=2))


@pytest.mark.slow
def test_train_py_on_an_empty_file_exits_with_the_reason(tmp_path, kiwi_cache):
    """The reported case, as a user runs it: a real ``train.py`` process on an empty file."""
    from kiwi.model.build import build_tiny_base

    build_tiny_base(compose("train", ["experiment=quickstart"]).model.tiny, kiwi_cache)  # not part of the timing
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    env = {**os.environ, "KIWI_CACHE": str(kiwi_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["experiment=quickstart", "logger=none", "data=local", f"data.source.files=[{empty}]",
            f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT_DIR, env=env, capture_output=True, text=True,
                          timeout=90)  # on timeout subprocess.run kills the run (SIGKILL) and the test fails
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{empty}" in output and "holds no documents" in output, output[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_a_single_pass_on_several_processes_is_refused(tmp_path, tokenizer):
    """``repeat=false`` on 2 ranks: the ranks' passes end at different steps and the first one done would
    wait for the others forever (found by running it); refused at setup instead, naming the option."""
    import lightning as L

    from kiwi.errors import ConfigError

    path = write_jsonl(tmp_path / "docs.jsonl", make_docs(40))
    dm = PackedDataModule(tokenizer, source={"kind": "files", "files": [str(path)]}, seq_len=32,
                          val_documents=2, repeat=False)
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # built, not launched
    assert dm.trainer.world_size == 2
    with deadline(30), pytest.raises(ConfigError, match="data.repeat=false with 2 training processes"):
        dm.setup("fit")
    dm.setup("validate")  # evaluation only reads the held-out set, on every rank alike
