"""Evaluation encoding and scoring with the real model's tokenizer: Qwen2.5's exact vocabulary, built offline
(kiwi.data.qwen_tokenizer), rather than the tiny test tokenizer the other eval tests use for speed."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from kiwi.data.qwen_tokenizer import qwen25_tokenizer_dir
from kiwi.eval.choice_scoring import score_choices
from kiwi.eval.encoding import encode_pair
from kiwi.eval.tasks import load_docs
from tests.helpers import requires_shared

from .conftest import make_tiny_qwen2
from .test_choice_scoring import _all_fixture_docs, _reference_metrics, _requests, reference_pair

QWEN25_VOCAB = 151_936  # the model's embedding rows (151,665 tokens, padded)


@pytest.fixture(scope="module")
def qwen(kiwi_cache):
    return AutoTokenizer.from_pretrained(qwen25_tokenizer_dir(kiwi_cache))


@pytest.fixture(scope="module")
def qwen_lm():
    return make_tiny_qwen2(QWEN25_VOCAB, hidden=16, layers=1)


def _shared_docs(n: int):
    bench = requires_shared("data", "benchmarks")
    docs = []
    for name, fmt in (("hellaswag_validation", "hellaswag"), ("arc_challenge_test", "arc"),
                      ("openbookqa_test", "openbookqa")):
        docs += load_docs({"name": name, "format": fmt, "data_files": str(bench / f"{name}_sample.jsonl")})[:n]
    return docs


def test_published_ids_split_into_context_and_continuation(qwen):
    # "Hello world" -> [9707, 1879] in Qwen2/2.5 (the id pair the issue and tests/data/test_qwen_tokenizer.py cite).
    assert encode_pair(qwen, "Hello", " world") == ([9707], [1879])
    # Trailing context whitespace moves to the continuation, as lm-eval's _encode_pair does.
    assert encode_pair(qwen, "Hello ", "world") == ([9707], [1879])


def test_encode_pair_is_lm_evals_rule_on_every_fixture_choice(qwen):
    docs = _all_fixture_docs()
    for doc in docs:
        for choice in doc.choices:
            ctx, cont = encode_pair(qwen, doc.context, " " + choice)
            assert (ctx, cont) == reference_pair(qwen, doc.context, " " + choice)
            assert cont, f"empty continuation for {choice!r}"
            assert max(ctx + cont) < len(qwen)


def test_encode_pair_is_lm_evals_rule_on_the_shared_benchmark_samples(qwen):
    for doc in _shared_docs(60):
        for choice in doc.choices:
            assert encode_pair(qwen, doc.context, " " + choice) == reference_pair(qwen, doc.context, " " + choice)


def test_scorer_equals_reference_with_the_qwen_vocabulary(qwen, qwen_lm):
    """The shared-context scorer vs one forward per choice, on Qwen2.5's ids and a 151,936-row lm_head."""
    docs = _all_fixture_docs()[:6]
    scores = score_choices(qwen_lm, _requests(qwen, docs), max_length=512)
    ref_lls, _, _ = _reference_metrics(qwen_lm, qwen, docs, 512)
    for s, ref in zip(scores, ref_lls, strict=True):
        np.testing.assert_allclose(s.logprobs, ref, rtol=1e-5, atol=1e-4)
