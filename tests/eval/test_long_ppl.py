"""long_ppl: per-position perplexity on long documents, never padded or silently joined."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kiwi.errors import ConfigError
from kiwi.eval.long_ppl import (
    bucket_edges,
    bucket_metrics,
    load_long_texts,
    position_logprobs,
    select_windows,
)
from kiwi.eval.tasks import TaskDataError

from .conftest import _TRAIN_TEXT, compose_eval


def _write_docs(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _task(files, **kw):
    return {"name": "long_ppl", "type": "long_ppl", "max_length": 128, "documents": 2, "concatenate": False,
            "data_files": [str(files)], "buckets": [32, 64, 1024], **kw}


@pytest.fixture
def docs_file(tmp_path):
    words = " ".join(_TRAIN_TEXT).split() * 10
    long_a = " ".join(words[:400])
    long_b = " ".join(words[200:600])
    medium = " ".join(words[:30])  # over 128 bytes, under 128 tokens: tokenized, then skipped
    return _write_docs(tmp_path / "docs.jsonl", ["short text.", medium, long_a, "another short one.", long_b])


def test_bucket_edges_are_cut_at_max_length():
    assert bucket_edges([1024, 2048, 4096], 3000) == [(0, 1024), (1024, 2048), (2048, 3000)]
    assert bucket_edges([1024, 2048], 4096) == [(0, 1024), (1024, 2048), (2048, 4096)]
    assert bucket_edges([1024, 2048], 512) == [(0, 512)]


def test_short_documents_are_skipped_and_counted_not_padded(docs_file, eval_tokenizer):
    task = _task(docs_file)
    texts = load_long_texts(task, None)
    windows, info = select_windows(eval_tokenizer, texts, task)
    assert [len(w) for w in windows] == [128, 128]
    assert info == {"concatenated": 0, "documents_read": 5, "skipped_short": 1, "documents": 2}
    # the first window is the first long document's own first 128 tokens
    assert windows[0] == eval_tokenizer.encode(texts.texts[1], add_special_tokens=False)[:128]  # [0]: the medium one


def test_no_long_document_is_an_error_that_names_the_option(tmp_path, eval_tokenizer):
    files = _write_docs(tmp_path / "short.jsonl", ["a few words.", "and a few more."])
    with pytest.raises(TaskDataError, match="concatenate=true"):
        load_long_texts(_task(files), None)


def test_concatenation_is_explicit_and_reported(tmp_path, eval_tokenizer):
    words = " ".join(_TRAIN_TEXT).split() * 10
    files = _write_docs(tmp_path / "short.jsonl", [" ".join(words[i : i + 30]) for i in range(0, 600, 30)])
    task = _task(files, concatenate=True)
    windows, info = select_windows(eval_tokenizer, load_long_texts(task, None), task)
    assert info["concatenated"] == 1 and info["documents_joined"] > 2 and len(windows) == 2
    assert all(len(w) == 128 for w in windows)
    assert 0 in windows[0]  # the EOS between documents is in the stream


def test_bad_options_fail_before_loading(docs_file):
    with pytest.raises(ConfigError, match="tasks.long_ppl.max_length"):
        load_long_texts(_task(docs_file, max_length=0), None)


def test_position_logprobs_equal_the_full_logits_reference(tiny_lm, docs_file, eval_tokenizer):
    """Chunked lm_head at the scored positions, batched, equals log_softmax of HF's own full logits."""
    task = _task(docs_file)
    windows, _ = select_windows(eval_tokenizer, load_long_texts(task, None), task)
    lp = position_logprobs(tiny_lm, windows, 0, token_budget=128, chunk=16)  # one window per batch, 8 chunks
    for row, w in zip(lp, windows, strict=True):
        ids = torch.tensor([[0] + w[:-1]])
        ref = torch.log_softmax(tiny_lm(input_ids=ids).logits.double(), -1)[0, torch.arange(128), torch.tensor(w)]
        torch.testing.assert_close(row, ref, atol=1e-4, rtol=1e-4)
    m = bucket_metrics(lp, task["buckets"])
    assert list(m) == ["ppl", "tokens", "ppl@0-32", "ppl@32-64", "ppl@64-128"]
    assert m["ppl@32-64"] == pytest.approx(math.exp(-float(lp[:, 32:64].mean())))


def test_evaluate_writes_table_results_png_and_wandb(tmp_path, kiwi_cache, docs_file):
    """evaluate.py's run: long_ppl on the tiny model, per-bucket numbers in results.json, its own table and
    figure, and the figure in the (offline) W&B run."""
    import wandb

    from kiwi.eval.run import run

    out = tmp_path / "out"
    cfg = compose_eval(["model=tiny", "compare_base=false", "logger=wandb", "run_tasks=[long_ppl]",
                        "progress=false", "tasks.long_ppl.max_length=128", "tasks.long_ppl.documents=2",
                        "tasks.long_ppl.buckets=[32,64]", f"tasks.long_ppl.data_files=[{docs_file}]"], out)
    results = run(cfg)
    (model,) = results
    saved = json.loads((out / "results.json").read_text())["results"][model]["long_ppl"]
    assert {"ppl@0-32", "ppl@32-64", "ppl@64-128"} <= set(saved) and saved["documents"] == 2
    assert (out / "long_ppl.png").stat().st_size > 0 and "ppl@64-128" in (out / "long_ppl.md").read_text()
    assert wandb.run is None
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert list((run_dir / "files" / "media" / "images" / "eval").glob("long_ppl_*.png"))
