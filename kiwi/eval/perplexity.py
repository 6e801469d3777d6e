"""Corpus perplexities: lm-eval's rolling-window document log-likelihood, and the training run's own
held-out perplexity (same ``lm_nll`` as validation, so the two numbers are the same definition)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from kiwi.eval.encoding import encode, rolling_windows
from kiwi.eval.tasks import TextDoc
from kiwi.model.loss import auto_chunk, lm_nll, token_logprobs


@torch.no_grad()
def score_documents(
    model,
    tokenizer,
    docs: Sequence[TextDoc],
    *,
    prefix_token: int,
    max_length: int,
    token_budget: int = 8192,
    chunk: int | None = None,
    desc: str | None = None,
) -> tuple[list[float], list[int]]:
    """(log-likelihood, token count) per document, each token scored once by its window.

    Windows are plain causal sequences, so they are right-padded into batches: padding only ever follows
    the real tokens and cannot influence them, and no attention mask is needed.
    """
    device = next(model.parameters()).device
    weight = model.lm_head.weight
    chunk = auto_chunk(weight, chunk)
    windows: list[tuple[int, list[int], list[int]]] = []  # (doc, model input, targets)
    n_tokens = []
    for d, doc in enumerate(docs):
        tokens = encode(tokenizer, doc.text)
        n_tokens.append(len(tokens))
        for ctx, cont in rolling_windows(tokens, prefix_token, max_length):
            windows.append((d, (ctx + cont)[:-1], cont))
    windows.sort(key=lambda w: -len(w[1]))
    loglik = [0.0] * len(docs)
    bar = tqdm(total=sum(n_tokens), desc=desc, unit="tok", disable=desc is None, leave=False)
    i = 0
    while i < len(windows):
        width = len(windows[i][1])
        batch = windows[i : i + max(1, token_budget // max(width, 1))]
        i += len(batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, (_, inp, cont) in enumerate(batch):
            ids[b, : len(inp)] = torch.tensor(inp)
            start = len(inp) - len(cont)
            rows += [b] * len(cont)
            cols += range(start, len(inp))
            targets += cont
        hidden = model.model(input_ids=ids.to(device), use_cache=False).last_hidden_state
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        lp = token_logprobs(picked, weight, torch.tensor(targets, device=device), chunk).double().cpu()
        offset = 0
        for d, _, cont in batch:
            loglik[d] += float(lp[offset : offset + len(cont)].sum())
            offset += len(cont)
        bar.update(len(targets))
    bar.close()
    return loglik, n_tokens


@torch.no_grad()
def heldout_nll(
    model, batches: Iterable[Mapping[str, torch.Tensor]], chunk: int | None = None, desc: str | None = None
) -> tuple[float, int]:
    """(sum of token NLLs, number of scored tokens) over packed batches from the data pipeline; the
    perplexity is ``exp(nll / tokens)``, exactly the training run's validation perplexity."""
    device = next(model.parameters()).device
    chunk = auto_chunk(model.lm_head.weight, chunk)
    nll_sum, n_tok = 0.0, 0
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        for key in ("input_ids", "labels"):
            if key not in batch:
                raise ValueError(f"held-out batch has no {key!r} (keys: {sorted(batch)})")
        pos = batch.get("position_ids")
        nll, n = lm_nll(
            model,
            batch["input_ids"].to(device),
            batch["labels"].to(device),
            None if pos is None else pos.to(device),
            chunk,
        )
        nll_sum += float(nll)
        n_tok += int(n)
    if n_tok == 0:
        raise ValueError("held-out data has no scored tokens")
    return nll_sum, n_tok
