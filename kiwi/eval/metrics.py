"""Metrics, defined once, from per-example log-likelihoods.

Multiple choice (lm-eval definitions):
  acc       argmax over choices of sum log p(choice tokens | context) equals the gold index.
  acc_norm  the same after dividing each sum by the choice's length in *characters* (``len(choice)``,
            without the " " target delimiter) - lm-eval's ``completion_len``. Ties go to the first choice.
  *_stderr  lm-eval's sample standard error of the mean: stdev(ddof=1) / sqrt(n).
Perplexities of the same forward passes (lower is better):
  ppl_gold       exp(-sum_examples log p(gold tokens | context) / sum_examples gold tokens): per-token
                 perplexity of the gold continuation, pooled over the split. This is the number to put next
                 to a "perplexity on HellaSwag / ARC-C / OBQA" table such as the Kiwi model card's (the card
                 does not say which text it scored: confirm by running evaluate.py on Qwen/Qwen2.5-0.5B).
  ppl_text       exp(-sum log p(context + gold tokens) / their count), pooled: the whole question and answer
                 as running text. The first context token has nothing to condition on and is not counted.
  ppl_gold_mean  mean over examples of each example's own gold-continuation perplexity (dominated by
                 short, surprising answers; reported because some papers average this way).
Rolling perplexity (lm-eval's wikitext): with LL the document log-likelihood (every token scored once),
  word_perplexity = exp(-sum LL / sum words), byte_perplexity = exp(-sum LL / sum bytes),
  bits_per_byte = -sum LL / sum bytes / ln 2; words and bytes are counted on the original page.
  token_perplexity = exp(-sum LL / sum tokens) is tokenizer-dependent, so only comparable between models
  that share a tokenizer (every kiwi model shares Qwen2.5's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from kiwi.eval.choice_scoring import ChoiceScores
from kiwi.eval.tasks import ChoiceDoc, TextDoc
from kiwi.model.loss import perplexity


def sample_stderr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float("nan")
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(len(values)))


def choice_predictions(doc: ChoiceDoc, scores: ChoiceScores) -> tuple[int, int]:
    lls = np.asarray(scores.logprobs, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in doc.choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def choice_metrics(docs: Sequence[ChoiceDoc], scores: Sequence[ChoiceScores]) -> dict[str, float]:
    if len(docs) != len(scores) or not docs:
        raise ValueError(f"need one score per document, got {len(docs)} docs and {len(scores)} scores")
    acc, acc_norm, per_example_ppl = [], [], []
    gold_lp = gold_tok = text_lp = text_tok = 0.0
    with_text = all(s.prefix_tokens is not None for s in scores)
    for doc, s in zip(docs, scores, strict=True):
        pred, pred_norm = choice_predictions(doc, s)
        acc.append(float(pred == doc.gold))
        acc_norm.append(float(pred_norm == doc.gold))
        g_lp, g_n = s.logprobs[doc.gold], s.n_tokens[doc.gold]
        gold_lp += g_lp
        gold_tok += g_n
        if with_text:
            text_lp += g_lp + s.prefix_logprob[doc.gold]
            text_tok += g_n + s.prefix_tokens[doc.gold]
        per_example_ppl.append(perplexity(-g_lp / g_n))
    metrics = {
        "acc": float(np.mean(acc)),
        "acc_stderr": sample_stderr(acc),
        "acc_norm": float(np.mean(acc_norm)),
        "acc_norm_stderr": sample_stderr(acc_norm),
        "ppl_gold": perplexity(-gold_lp / gold_tok),
        "ppl_text": perplexity(-text_lp / text_tok) if with_text else None,
        "ppl_gold_mean": float(np.mean(per_example_ppl)),
        "n": len(docs),
    }
    return {k: v for k, v in metrics.items() if v is not None}


def choice_records(docs: Sequence[ChoiceDoc], scores: Sequence[ChoiceScores]) -> list[dict]:
    """Per-example rows for ``log_samples``."""
    records = []
    for doc, s in zip(docs, scores, strict=True):
        pred, pred_norm = choice_predictions(doc, s)
        records.append(
            {
                "row": doc.index,
                "context": doc.context,
                "choices": list(doc.choices),
                "loglikelihoods": s.logprobs,
                "n_tokens": s.n_tokens,
                "pred": pred,
                "pred_norm": pred_norm,
                "gold": doc.gold,
                "acc": float(pred == doc.gold),
                "acc_norm": float(pred_norm == doc.gold),
            }
        )
    return records


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def rolling_metrics(docs: Sequence[TextDoc], loglikelihoods: Sequence[float], n_tokens: Sequence[int]):
    if not docs:
        raise ValueError("no documents to score")
    ll = float(sum(loglikelihoods))
    words = sum(count_words(d.original) for d in docs)
    n_bytes = sum(count_bytes(d.original) for d in docs)
    return {
        "word_perplexity": perplexity(-ll / words),
        "byte_perplexity": perplexity(-ll / n_bytes),
        "bits_per_byte": -ll / n_bytes / math.log(2),
        "token_perplexity": perplexity(-ll / sum(n_tokens)),
        "n": len(docs),
    }


def rolling_records(docs: Sequence[TextDoc], loglikelihoods: Sequence[float], n_tokens: Sequence[int]):
    return [
        {
            "row": d.index,
            "loglikelihood": ll,
            "tokens": n,
            "words": count_words(d.original),
            "bytes": count_bytes(d.original),
        }
        for d, ll, n in zip(docs, loglikelihoods, n_tokens, strict=True)
    ]
