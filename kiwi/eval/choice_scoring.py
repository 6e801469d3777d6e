"""Fast multiple-choice log-likelihoods: one forward pass per question, shared context.

lm-eval runs one sequence per (context, choice) and a full-vocabulary log-softmax at every position. Here
each question becomes one row ``[context | choice 1 | choice 2 | ...]`` with a tree-shaped attention mask
(every choice sees the context and itself, never the other choices) and position ids that restart after
the context for every choice, so the context is encoded once and each choice is computed exactly as if it
followed the context alone. Rows are sorted by length and batched under a token budget, and the lm_head
runs only at the scored positions (``kiwi.model.loss.token_logprobs``, fp32).

HF's packed-sequence detection only builds block-diagonal masks, so the tree mask is passed as an
explicit 4-D additive mask (sdpa / eager attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from kiwi.model.loss import auto_chunk, token_logprobs

TREE_MASK_ATTENTION = ("sdpa", "eager")


@dataclass
class ChoiceScores:
    """Per-choice sums of log-probabilities for one question.

    ``prefix_logprob[i]`` / ``prefix_tokens[i]`` score the context tokens that choice ``i`` was conditioned
    on (every context token but the first, which has nothing to condition on); they feed ``ppl_text`` and
    are None when the context was not scored (``score_context=False``).
    """

    logprobs: list[float]
    n_tokens: list[int]
    prefix_logprob: list[float] | None
    prefix_tokens: list[int] | None


@dataclass
class _Tree:
    question: int
    prefix: list[int]
    branches: list[tuple[int, list[int]]]  # (choice index, continuation tokens)
    primary: bool = True
    row_len: int = field(init=False)

    def __post_init__(self) -> None:
        self.row_len = len(self.prefix) + sum(len(c) - 1 for _, c in self.branches)


def build_trees(
    question: int, context: list[int], continuations: Sequence[list[int]], max_length: int
) -> list[_Tree]:
    """lm-eval feeds ``(context + continuation)[-(max_length + 1):][:-1]``; choices that fit share the
    context, the rare over-long ones get their own left-truncated context, exactly as lm-eval does."""
    if not context:
        raise ValueError(f"question {question}: the context encodes to no tokens")
    shared: list[tuple[int, list[int]]] = []
    trees: list[_Tree] = []
    for i, cont in enumerate(continuations):
        if not cont:
            raise ValueError(f"question {question}: choice {i} encodes to no tokens")
        if len(cont) > max_length:
            raise ValueError(
                f"question {question}: choice {i} has {len(cont)} tokens, more than max_length={max_length}"
            )
        if len(context) + len(cont) <= max_length + 1:
            shared.append((i, list(cont)))
        else:
            window = (context + list(cont))[-(max_length + 1) :]
            trees.append(_Tree(question, window[: -len(cont)], [(i, list(cont))], primary=False))
    if shared:
        trees.insert(0, _Tree(question, list(context), shared))
    else:
        trees[0].primary = True
    return trees


def _tree_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, T, T] mask: causal in row order, and a query in branch ``s`` sees the prefix
    (segment 0) and its own branch only. Padding (segment -1) sees itself, to keep softmax finite."""
    t = segments.shape[1]
    idx = torch.arange(t, device=segments.device)
    causal = idx[None, :] <= idx[:, None]
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = causal[None] & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _batches(trees: list[_Tree], token_budget: int) -> list[list[_Tree]]:
    trees = sorted(trees, key=lambda tr: -tr.row_len)
    batches: list[list[_Tree]] = []
    for tree in trees:
        # Sorted longest first, so the first tree of a batch sets its padded width.
        if batches and (len(batches[-1]) + 1) * batches[-1][0].row_len <= token_budget:
            batches[-1].append(tree)
        else:
            batches.append([tree])
    return batches


def check_attention(model) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in TREE_MASK_ATTENTION:
        raise ValueError(
            f"multiple-choice scoring passes a 4-D tree mask, which needs attn_implementation in "
            f"{TREE_MASK_ATTENTION}; the model uses {impl!r} (load it with attn_implementation=sdpa)"
        )


@torch.no_grad()
def score_choices(
    model,
    requests: Sequence[tuple[list[int], Sequence[list[int]]]],
    *,
    max_length: int,
    token_budget: int = 8192,
    chunk: int | None = None,
    score_context: bool = True,
    desc: str | None = None,
) -> list[ChoiceScores]:
    """``requests[q] = (context tokens, [continuation tokens per choice])`` (from ``encode_pair``).

    ``score_context`` also scores the context tokens (for ``ppl_text``): the lm_head then runs at every
    context position too, which costs ~1.5x on a large vocabulary."""
    check_attention(model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    weight = model.lm_head.weight
    chunk = auto_chunk(weight, chunk)
    out = [
        ChoiceScores(
            [0.0] * len(conts),
            [len(c) for c in conts],
            [0.0] * len(conts) if score_context else None,
            [0] * len(conts) if score_context else None,
        )
        for _, conts in requests
    ]
    trees = [t for q, (ctx, conts) in enumerate(requests) for t in build_trees(q, ctx, conts, max_length)]
    bar = tqdm(total=len(requests), desc=desc, unit="ex", disable=desc is None, leave=False)
    for batch in _batches(trees, token_budget):
        width = batch[0].row_len
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        pos = torch.zeros(len(batch), width, dtype=torch.long)
        seg = torch.full((len(batch), width), -1, dtype=torch.long)
        rows, cols, targets, slots = [], [], [], []  # slot: (tree index in batch, choice or -1 = prefix)
        for b, tree in enumerate(batch):
            p = len(tree.prefix)
            ids[b, :p] = torch.tensor(tree.prefix)
            pos[b, :p] = torch.arange(p)
            seg[b, :p] = 0
            for k in range(p - 1 if score_context else 0):  # prefix tokens 1.. from the one before
                rows.append(b)
                cols.append(k)
                targets.append(tree.prefix[k + 1])
                slots.append((b, -1))
            start = p
            for s, (choice, cont) in enumerate(tree.branches, 1):
                n = len(cont) - 1  # the last token of a choice is only ever a target
                ids[b, start : start + n] = torch.tensor(cont[:-1], dtype=torch.long)
                pos[b, start : start + n] = torch.arange(p, p + n)
                seg[b, start : start + n] = s
                for j, target in enumerate(cont):
                    rows.append(b)
                    cols.append(p - 1 if j == 0 else start + j - 1)
                    targets.append(target)
                    slots.append((b, choice))
                start += n
        mask = _tree_mask(seg.to(device), dtype)
        hidden = model.model(
            input_ids=ids.to(device), position_ids=pos.to(device), attention_mask=mask, use_cache=False
        ).last_hidden_state
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        lp = token_logprobs(picked, weight, torch.tensor(targets, device=device), chunk).double().cpu()
        _accumulate(batch, slots, lp.tolist(), out)
        bar.update(sum(t.primary for t in batch))
    bar.close()
    return out


def _accumulate(batch: list[_Tree], slots, logprobs: list[float], out: list[ChoiceScores]) -> None:
    prefix_sum = [0.0] * len(batch)
    choice_sum: dict[tuple[int, int], float] = {}
    for (b, choice), value in zip(slots, logprobs, strict=True):
        if choice < 0:
            prefix_sum[b] += value
        else:
            choice_sum[(b, choice)] = choice_sum.get((b, choice), 0.0) + value
    for b, tree in enumerate(batch):
        scores = out[tree.question]
        for choice, _ in tree.branches:
            scores.logprobs[choice] = choice_sum[(b, choice)]
            if scores.prefix_tokens is not None:
                scores.prefix_logprob[choice] = prefix_sum[b]
                scores.prefix_tokens[choice] = len(tree.prefix) - 1
