"""Token log-likelihoods without materialising the full logits.

At 32k tokens x 151,936 vocab the fp32 logits alone are 18.6 GiB, so the loss is computed in chunks of
positions, and its gradient is produced during the forward pass (as fused linear cross-entropy kernels
do) so autograd never keeps a chunk's logits alive. Training loss, validation perplexity and
``evaluate.py`` all go through this file, so they share one definition of a token's log-likelihood.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
DEFAULT_CHUNK = 4096


def backbone_hidden(model, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
    """Final-norm hidden states. ``attention_mask=None`` and ``use_cache=False`` are what make
    transformers treat restarting ``position_ids`` as separate (packed) documents."""
    out = model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False)
    return out.last_hidden_state


def shift_labels(labels: Tensor) -> Tensor:
    """HF convention: ``labels[t]`` is predicted from position ``t - 1``; return per-position targets."""
    pad = torch.full_like(labels[..., :1], IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token NLLs of ``hidden @ weight.T``; gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        needs_h, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w32 = weight.float()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if needs_h else None
        grad_w = torch.zeros_like(w32) if needs_w else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            valid = t != IGNORE_INDEX
            if not bool(valid.any()):
                continue
            h32 = h.float()
            logits = h32 @ w32.T
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = t.clamp_min(0)
            picked = logits.gather(1, safe_t[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            if needs_h or needs_w:
                # d(sum NLL)/d logits = softmax - onehot, on valid rows only.
                g = logits.sub_(lse[:, None]).exp_()
                g.scatter_add_(1, safe_t[:, None], -torch.ones_like(picked)[:, None])
                g.mul_(valid[:, None])
                if needs_h:
                    grad_h[start : start + chunk] = (g @ w32).to(hidden.dtype)
                if needs_w:
                    grad_w.addmm_(g.T, h32)
        ctx.save_for_backward(
            grad_h if needs_h else torch.empty(0), grad_w if needs_w else torch.empty(0)
        )
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None


def chunked_nll_sum(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Sum over valid positions of ``-log p(target)``; ``hidden`` is [N, H], ``targets`` is [N]."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)


@torch.no_grad()
def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """fp32 log-probability of each target ([N]); ignored positions give 0. The lm_head runs only on
    the rows given, so callers pass just the positions they score."""
    out = torch.zeros(targets.shape[0], dtype=torch.float32, device=hidden.device)
    w32 = weight.float()
    for start in range(0, hidden.shape[0], chunk):
        t = targets[start : start + chunk]
        logits = hidden[start : start + chunk].float() @ w32.T
        lp = logits.gather(1, t.clamp_min(0)[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        out[start : start + chunk] = lp * (t != IGNORE_INDEX)
    return out


def lm_nll(model, input_ids: Tensor, labels: Tensor, position_ids: Tensor | None = None,
           chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """(sum of token NLLs, number of scored tokens) of a packed batch, HF label convention."""
    hidden = backbone_hidden(model, input_ids, position_ids)
    targets = shift_labels(labels).reshape(-1)
    nll = chunked_nll_sum(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, targets, chunk)
    return nll, (targets != IGNORE_INDEX).sum()
