"""Token log-likelihoods without materialising the full logits.

At 32k tokens x 151,936 vocab the fp32 logits alone are 18.6 GiB, so the loss is computed in chunks of
positions, and its gradient is produced during the forward pass (as fused linear cross-entropy kernels
do) so autograd never keeps a chunk's logits alive. Training loss, validation perplexity and
``evaluate.py`` all go through this file, so they share one definition of a token's log-likelihood.

On CUDA, with gradients, ``lm_nll`` uses Liger's fused linear cross-entropy (``kiwi.model.liger``):
the same quantity in Triton kernels (bf16 logits, fp32 softmax and fp32 gradient accumulation), and
falls back to the chunked path with one logged notice when liger-kernel is not installed.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.utils.checkpoint
from torch import Tensor

from kiwi.data.packing import IGNORE_INDEX  # defined where labels are made; kiwi.data may not import kiwi.model
from kiwi.model.liger import liger_available, liger_nll_sum

DEFAULT_CHUNK = 4096
# fp32 logits elements per lm_head chunk (128 MiB) when scoring without gradients: at Qwen's 151,936-token
# vocabulary a 4096-position chunk would allocate 2.5 GB per step, and page faults then cost more than the matmul.
LOGITS_PER_CHUNK = 1 << 25
LOSS_IMPLS = ("auto", "chunked", "liger")

log = logging.getLogger(__name__)
_fallback_noticed = False


def backbone_hidden(model, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
    """Final-norm hidden states. ``attention_mask=None`` and ``use_cache=False`` are what make
    transformers treat restarting ``position_ids`` as separate (packed) documents."""
    out = model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False)
    return out.last_hidden_state


def auto_chunk(weight: Tensor, chunk: int | None) -> int:
    """The lm_head chunk (positions per matmul) for scoring: ``chunk`` if given, else ``LOGITS_PER_CHUNK``
    logits elements at this vocabulary size."""
    return int(chunk) if chunk else max(16, LOGITS_PER_CHUNK // weight.shape[0])


def perplexity(mean_nll):
    """exp(mean token NLL): a float (inf past float64's range) or, for a tensor, a tensor (for logging)."""
    if torch.is_tensor(mean_nll):
        return torch.exp(mean_nll)
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")


def shift_labels(labels: Tensor) -> Tensor:
    """HF convention: ``labels[t]`` is predicted from position ``t - 1``; return per-position targets."""
    pad = torch.full_like(labels[..., :1], IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token NLLs of ``hidden @ weight.T``; gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        # fp32 logits even under autocast (which would also break the in-place fp32 accumulations).
        with torch.autocast(hidden.device.type, enabled=False):
            return _ChunkedLinearCrossEntropy._forward(ctx, hidden, weight, targets, chunk)

    @staticmethod
    def _forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
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
    if not torch.is_grad_enabled():
        # Inside autograd.Function.forward grad mode is always off, so only here can validation skip
        # computing (and holding a [V, H] fp32 buffer for) gradients nobody will read.
        return -token_logprobs(hidden, weight, targets, chunk).sum()
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)


def resolve_loss_impl(name: str, device_type: str, grad: bool = True) -> str:
    """Concrete loss implementation: ``auto`` is ``liger`` on CUDA with gradients when liger-kernel is
    installed, else ``chunked``. Explicit ``liger`` without CUDA or liger-kernel is an error."""
    global _fallback_noticed
    if name not in LOSS_IMPLS:
        raise ValueError(f"loss implementation {name!r} is not supported; choose one of {list(LOSS_IMPLS)}")
    if name == "liger":
        if device_type != "cuda" or not liger_available():
            raise ValueError("loss_impl='liger' needs a CUDA device and liger-kernel (requirements-gpu.txt)")
        return "liger"
    if name == "auto" and device_type == "cuda" and grad:
        if liger_available():
            return "liger"
        if not _fallback_noticed:
            log.warning("liger-kernel is not installed: using the chunked pure-torch cross-entropy on CUDA "
                        "(slower; pip install -r requirements-gpu.txt)")
            _fallback_noticed = True
    return "chunked"


def nll_sum(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = DEFAULT_CHUNK,
            impl: str = "auto") -> Tensor:
    """``chunked_nll_sum`` or Liger's fused kernel, per ``resolve_loss_impl``."""
    if resolve_loss_impl(impl, hidden.device.type, torch.is_grad_enabled()) == "liger":
        return liger_nll_sum(hidden, weight, targets)
    return chunked_nll_sum(hidden, weight, targets, chunk)


@torch.no_grad()
def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """fp32 log-probability of each target ([N]); ignored positions give 0. The lm_head runs only on
    the rows given, so callers pass just the positions they score."""
    out = torch.zeros(targets.shape[0], dtype=torch.float32, device=hidden.device)
    w32 = weight.float()
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            t = targets[start : start + chunk]
            logits = hidden[start : start + chunk].float() @ w32.T
            lp = logits.gather(1, t.clamp_min(0)[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
            out[start : start + chunk] = lp * (t != IGNORE_INDEX)
    return out


def lm_nll(model, input_ids: Tensor, labels: Tensor, position_ids: Tensor | None = None,
           chunk: int = DEFAULT_CHUNK, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """(sum of token NLLs, number of scored tokens) of a packed batch, HF label convention.
    ``impl``: ``auto`` (Liger on CUDA when training), ``chunked`` or ``liger``."""
    hidden = backbone_hidden(model, input_ids, position_ids)
    targets = shift_labels(labels).reshape(-1)
    nll = nll_sum(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, targets, chunk, impl)
    return nll, (targets != IGNORE_INDEX).sum()


def _kl_chunk(h_s: Tensor, w_s: Tensor, h_t: Tensor, w_t: Tensor, valid: Tensor, temperature: float) -> Tensor:
    with torch.autocast(h_s.device.type, enabled=False):
        log_ps = torch.log_softmax((h_s.float() @ w_s.float().T) / temperature, dim=-1)
        log_pt = torch.log_softmax((h_t.float() @ w_t.float().T) / temperature, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)
        return (kl * valid).sum() * temperature**2


def distill_kl_sum(hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
                   targets: Tensor, temperature: float = 1.0, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Sum over the scored positions (``targets != IGNORE_INDEX``) of KL(teacher || student) between the
    next-token distributions at ``temperature``, times temperature² so its gradient keeps the scale of the
    cross-entropy's (Hinton et al., 2015). Each chunk's logits are recomputed in the backward
    (activation checkpointing), so only the hidden states stay alive, as in ``chunked_nll_sum``."""
    if not float(temperature) > 0:
        raise ValueError(f"distillation temperature: expected a positive number, got {temperature}")
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    teacher_hidden, teacher_weight = teacher_hidden.detach(), teacher_weight.detach()
    for start in range(0, hidden.shape[0], chunk):
        valid = targets[start : start + chunk] != IGNORE_INDEX
        if not bool(valid.any()):
            continue
        args = (hidden[start : start + chunk], weight, teacher_hidden[start : start + chunk], teacher_weight,
                valid, float(temperature))
        if torch.is_grad_enabled():
            total = total + torch.utils.checkpoint.checkpoint(_kl_chunk, *args, use_reentrant=False)
        else:
            total = total + _kl_chunk(*args)
    return total


def lm_nll_and_kl(model, teacher, input_ids: Tensor, labels: Tensor, position_ids: Tensor | None = None,
                  temperature: float = 1.0, chunk: int = DEFAULT_CHUNK, impl: str = "auto"
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``lm_nll`` plus the distillation term: (sum of token NLLs, scored tokens, sum of KL(teacher ||
    student) over the same positions). One student forward serves both; the teacher runs without grad."""
    hidden = backbone_hidden(model, input_ids, position_ids)
    with torch.no_grad():
        teacher_hidden = backbone_hidden(teacher, input_ids, position_ids)
    targets = shift_labels(labels).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    nll = nll_sum(flat, model.lm_head.weight, targets, chunk, impl)
    kl = distill_kl_sum(flat, model.lm_head.weight, teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
                        teacher.lm_head.weight, targets, temperature, chunk)
    return nll, (targets != IGNORE_INDEX).sum(), kl
