"""The shared-context scorer against a straightforward lm-eval-style reference written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiwi.eval.choice_scoring import build_trees, score_choices
from kiwi.eval.encoding import encode_pair
from kiwi.eval.metrics import choice_metrics
from kiwi.eval.tasks import arc_doc, hellaswag_doc, load_docs, openbookqa_doc

from .conftest import fixture_rows, make_tiny_qwen2


def reference_pair(tok, context: str, continuation: str):
    """lm-eval's _encode_pair, written out independently."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    whole = tok.encode(stripped + continuation, add_special_tokens=False)
    ctx = tok.encode(stripped, add_special_tokens=False)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def reference_loglikelihood(model, ctx: list[int], cont: list[int], max_length: int) -> float:
    """One forward per (context, continuation), full-vocabulary log_softmax, batch 1 (lm-eval's default)."""
    inp = (ctx + cont)[-(max_length + 1) :][:-1]
    logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), dim=-1)
    scored = logp[len(inp) - len(cont) :]
    return float(scored.gather(1, torch.tensor(cont)[:, None]).sum())


def _all_fixture_docs():
    return (
        [hellaswag_doc(i, r) for i, r in enumerate(fixture_rows("hellaswag"))]
        + [arc_doc(i, r) for i, r in enumerate(fixture_rows("arc_challenge"))]
        + [openbookqa_doc(i, r) for i, r in enumerate(fixture_rows("openbookqa"))]
    )


def _requests(tok, docs):
    reqs = []
    for doc in docs:
        pairs = [encode_pair(tok, doc.context, " " + c) for c in doc.choices]
        reqs.append((pairs[0][0], [c for _, c in pairs]))
    return reqs


def _reference_metrics(model, tok, docs, max_length):
    acc, acc_norm, lls_all = [], [], []
    for doc in docs:
        lls = []
        for choice in doc.choices:
            ctx, cont = reference_pair(tok, doc.context, " " + choice)
            lls.append(reference_loglikelihood(model, ctx, cont, max_length))
        lls_all.append(lls)
        acc.append(float(np.argmax(lls) == doc.gold))
        acc_norm.append(float(np.argmax(np.array(lls) / [len(c) for c in doc.choices]) == doc.gold))
    return lls_all, float(np.mean(acc)), float(np.mean(acc_norm))


@pytest.mark.parametrize("token_budget", [48, 4096])
def test_fast_scorer_equals_reference(tiny_lm, eval_tokenizer, token_budget):
    """A small budget forces one question per batch (and padding); a large one packs them all."""
    docs = _all_fixture_docs()
    scores = score_choices(tiny_lm, _requests(eval_tokenizer, docs), max_length=512, token_budget=token_budget)
    ref_lls, ref_acc, ref_acc_norm = _reference_metrics(tiny_lm, eval_tokenizer, docs, 512)
    for s, ref, doc in zip(scores, ref_lls, docs, strict=True):
        np.testing.assert_allclose(s.logprobs, ref, rtol=1e-5, atol=1e-4)
        assert s.n_tokens == [len(reference_pair(eval_tokenizer, doc.context, " " + c)[1]) for c in doc.choices]
    metrics = choice_metrics(docs, scores)
    assert metrics["acc"] == ref_acc and metrics["acc_norm"] == ref_acc_norm


def test_truncated_contexts_match_lm_eval_left_truncation(tiny_lm, eval_tokenizer):
    """With a max_length shorter than context + choice, lm-eval keeps the last max_length + 1 tokens."""
    docs = _all_fixture_docs()[3:9]
    reqs = _requests(eval_tokenizer, docs)
    max_length = max(len(c) for _, conts in reqs for c in conts) + 2
    assert any(len(ctx) + len(c) > max_length + 1 for ctx, conts in reqs for c in conts)
    scores = score_choices(tiny_lm, reqs, max_length=max_length, token_budget=64)
    ref_lls, _, _ = _reference_metrics(tiny_lm, eval_tokenizer, docs, max_length)
    for s, ref in zip(scores, ref_lls, strict=True):
        np.testing.assert_allclose(s.logprobs, ref, rtol=1e-5, atol=1e-4)


def test_context_perplexity_terms(tiny_lm, eval_tokenizer):
    """prefix_logprob scores context tokens 2..n, as one full forward over the context would."""
    doc = _all_fixture_docs()[1]
    (ctx, conts) = _requests(eval_tokenizer, [doc])[0]
    s = score_choices(tiny_lm, [(ctx, conts)], max_length=512)[0]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm(torch.tensor([ctx])).logits[0].float(), -1)
    expected = float(sum(logp[i, ctx[i + 1]] for i in range(len(ctx) - 1)))
    assert s.prefix_tokens == [len(ctx) - 1] * len(conts)
    np.testing.assert_allclose(s.prefix_logprob, [expected] * len(conts), rtol=1e-5, atol=1e-4)


def test_metric_definitions_by_hand():
    from kiwi.eval.choice_scoring import ChoiceScores
    from kiwi.eval.tasks import ChoiceDoc

    docs = [ChoiceDoc(0, "c", ("aa", "b"), 0), ChoiceDoc(1, "c", ("aaaa", "bb"), 1)]
    scores = [ChoiceScores([-2.0, -1.5], [2, 1], [-3.0, -3.0], [3, 3]),
              ChoiceScores([-9.0, -6.0], [4, 3], [-5.5, -5.5], [1, 1])]
    m = choice_metrics(docs, scores)
    # doc0: acc picks "b" (wrong), acc_norm -1.0 vs -1.5 picks "aa" (right); doc1: the reverse.
    assert m["acc"] == 0.5 and m["acc_norm"] == 0.5
    assert m["acc_stderr"] == pytest.approx(0.5)  # stdev([0, 1], ddof=1) / sqrt(2)
    assert m["ppl_gold"] == pytest.approx(np.exp((2.0 + 6.0) / (2 + 3)))
    assert m["ppl_gold_mean"] == pytest.approx((np.exp(1.0) + np.exp(2.0)) / 2)
    assert m["ppl_text"] == pytest.approx(np.exp((2.0 + 3.0 + 6.0 + 5.5) / (2 + 3 + 3 + 1)))


def test_tree_mask_needs_sdpa_or_eager(eval_tokenizer):
    model = make_tiny_qwen2(len(eval_tokenizer), attn="flex_attention")
    with pytest.raises(ValueError, match="attn_implementation"):
        score_choices(model, [([1, 2], [[3]])], max_length=16)


def test_bad_requests_are_rejected():
    with pytest.raises(ValueError, match="question 3: the context encodes to no tokens"):
        build_trees(3, [], [[1]], 16)
    with pytest.raises(ValueError, match="question 0: choice 1 encodes to no tokens"):
        build_trees(0, [1], [[2], []], 16)


def test_shared_benchmark_samples(tiny_lm, eval_tokenizer):
    from tests.helpers import requires_shared

    bench = requires_shared("data", "benchmarks")
    for name, fmt, n in (("hellaswag_validation", "hellaswag", 6), ("arc_challenge_test", "arc", 6),
                         ("openbookqa_test", "openbookqa", 6)):
        docs = load_docs({"name": name, "format": fmt, "data_files": str(bench / f"{name}_sample.jsonl")})
        assert len(docs) == 60
        scores = score_choices(tiny_lm, _requests(eval_tokenizer, docs[:n]), max_length=512)
        ref_lls, _, _ = _reference_metrics(tiny_lm, eval_tokenizer, docs[:n], 512)
        for s, ref in zip(scores, ref_lls, strict=True):
            np.testing.assert_allclose(s.logprobs, ref, rtol=1e-5, atol=1e-4)


def test_without_context_scoring_ppl_text_is_absent(tiny_lm, eval_tokenizer):
    docs = _all_fixture_docs()[:3]
    reqs = _requests(eval_tokenizer, docs)
    full = score_choices(tiny_lm, reqs, max_length=512)
    lean = score_choices(tiny_lm, reqs, max_length=512, score_context=False)
    for a, b in zip(full, lean, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-6, atol=1e-5)
        assert b.prefix_tokens is None
    m = choice_metrics(docs, lean)
    assert "ppl_text" not in m and m["acc"] == choice_metrics(docs, full)["acc"]
