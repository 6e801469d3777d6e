"""Rolling (wikitext) and held-out perplexity against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kiwi.eval.encoding import rolling_windows
from kiwi.eval.metrics import count_bytes, count_words, rolling_metrics
from kiwi.eval.perplexity import heldout_nll, score_documents
from kiwi.eval.tasks import load_docs
from kiwi.model.loss import lm_nll

from .conftest import FIXTURES


def test_rolling_windows_by_hand():
    t = list(range(100, 110))  # 10 tokens, windows of 4, prefix token 7
    assert list(rolling_windows(t, 7, 4)) == [
        ([7], [100, 101, 102, 103]),  # model input [7, 100, 101, 102]
        ([103], [104, 105, 106, 107]),  # input [103..106]
        ([105, 106, 107], [108, 109]),  # the short last window keeps max_length tokens of input
    ]
    assert list(rolling_windows(t[:3], 7, 4)) == [([7], [100, 101, 102])]
    assert list(rolling_windows([], 7, 4)) == []


@torch.no_grad()
def _hand_loglikelihood(model, tokens: list[int], prefix: int, max_length: int) -> float:
    """Token i is predicted from at most max_length previous tokens: the first max_length tokens from
    [prefix] + tokens[:i]; each later block of max_length tokens from the max_length tokens that end just
    before the block's last token."""
    total = 0.0
    n = len(tokens)
    for block_start in range(0, n, max_length):
        block_end = min(block_start + max_length, n)
        if block_start == 0:
            inp = [prefix] + tokens[: block_end - 1]
            first_pos = 0
        else:
            inp = tokens[block_end - max_length - 1 : block_end - 1]
            first_pos = len(inp) - (block_end - block_start)
        logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), -1)
        for j, i in enumerate(range(block_start, block_end)):
            total += float(logp[first_pos + j, tokens[i]])
    return total


@pytest.mark.parametrize("max_length", [8, 512])
def test_wikitext_metrics_match_hand_computation(tiny_lm, eval_tokenizer, max_length):
    docs = load_docs({"name": "wikitext", "format": "wikitext", "data_files": str(FIXTURES / "wikitext.jsonl")})
    prefix = eval_tokenizer.eos_token_id
    ll, n_tok = score_documents(tiny_lm, eval_tokenizer, docs, prefix_token=prefix, max_length=max_length,
                                token_budget=40)
    expected = []
    for doc in docs:
        tokens = eval_tokenizer.encode(doc.text, add_special_tokens=False)
        assert len(tokens) > 3 * 8  # several windows at max_length=8
        expected.append(_hand_loglikelihood(tiny_lm, tokens, prefix, max_length))
    np.testing.assert_allclose(ll, expected, rtol=1e-5, atol=1e-3)
    # Words and bytes are counted on the original page (hand-counted for the second fixture page).
    assert count_words(docs[1].original) == 23
    assert count_bytes(docs[1].original) == len(docs[1].original)
    m = rolling_metrics(docs, ll, n_tok)
    words = sum(count_words(d.original) for d in docs)
    n_bytes = sum(count_bytes(d.original) for d in docs)
    assert m["word_perplexity"] == pytest.approx(math.exp(-sum(expected) / words), rel=1e-5)
    assert m["byte_perplexity"] == pytest.approx(math.exp(-sum(expected) / n_bytes), rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(-sum(expected) / n_bytes / math.log(2), rel=1e-5)


def test_full_window_equals_one_forward_from_the_prefix(tiny_lm, eval_tokenizer):
    docs = load_docs({"name": "wikitext", "format": "wikitext", "data_files": str(FIXTURES / "wikitext.jsonl")})
    tokens = eval_tokenizer.encode(docs[1].text, add_special_tokens=False)
    ll, _ = score_documents(tiny_lm, eval_tokenizer, docs[1:], prefix_token=0, max_length=512)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm(torch.tensor([[0] + tokens[:-1]])).logits[0], -1)
    assert ll[0] == pytest.approx(float(logp.gather(1, torch.tensor(tokens)[:, None]).sum()), abs=1e-3)


def _packed_row(tokenizer, texts, seq_len=256):
    """One row as the data pipeline packs it: EOS-terminated documents back to back, positions restarting
    at each document, label -100 on each document's first token and on the padding."""
    ids, pos, labels = [], [], []
    for text in texts:
        doc = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids += doc
        pos += list(range(len(doc)))
        labels += [-100] + doc[1:]
    pad = seq_len - len(ids)
    assert pad >= 0
    ids += [tokenizer.eos_token_id] * pad
    pos += list(range(pad))
    labels += [-100] * pad
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "labels": torch.tensor([labels])}


def test_heldout_nll_is_lm_nll_over_the_same_batches(tiny_lm, eval_tokenizer):
    from tests.eval.conftest import _TRAIN_TEXT

    batches = [_packed_row(eval_tokenizer, _TRAIN_TEXT[:2]), _packed_row(eval_tokenizer, _TRAIN_TEXT[2:])]
    nll, n_tok = heldout_nll(tiny_lm, batches)
    with torch.no_grad():
        direct = [lm_nll(tiny_lm, b["input_ids"], b["labels"], b["position_ids"]) for b in batches]
    assert n_tok == sum(int(n) for _, n in direct) > 0
    assert nll == pytest.approx(sum(float(x) for x, _ in direct), rel=1e-6)
    # And on packed rows that is the plain full-vocabulary NLL of each document on its own.
    with torch.no_grad():
        ref = 0.0
        for text in _TRAIN_TEXT:
            doc = eval_tokenizer.encode(text, add_special_tokens=False) + [eval_tokenizer.eos_token_id]
            logp = torch.log_softmax(tiny_lm(torch.tensor([doc])).logits[0], -1)
            ref -= float(logp[:-1].gather(1, torch.tensor(doc[1:])[:, None]).sum())
    assert nll == pytest.approx(ref, rel=1e-4)


def test_heldout_rejects_batches_without_labels(tiny_lm):
    with pytest.raises(ValueError, match="no 'labels'"):
        heldout_nll(tiny_lm, [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}])
