"""Which attention kernel runs packed 32k-token rows, and what mask it gets.

A packed row holds ~15 documents; ``position_ids`` restart at 0 at each document start and
``attention_mask`` is None. transformers 5.24 then derives the document-causal mask itself
(``masking_utils.find_packed_sequence_indices``): sdpa and eager get a dense [B, 1, T, T] mask
(2 GiB of bools per 32k row, and sdpa falls back to its slow math/efficient kernels), flex_attention
gets a ``BlockMask`` that also skips the fully-masked blocks between documents. So CUDA training
uses flex_attention; CPU uses sdpa because flex_attention has no CPU backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask

ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flex_attention", "eager")


def resolve_attn_implementation(name: str, device_type: str) -> str:
    """Concrete HF ``attn_implementation`` for ``name`` on ``device_type`` ("cuda", "cpu", ...)."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"model.attn_implementation={name!r} is not supported; choose one of {list(ATTN_IMPLEMENTATIONS)}"
        )
    if name == "auto":
        return "flex_attention" if device_type == "cuda" else "sdpa"
    if name == "flex_attention" and device_type != "cuda":
        raise ValueError(
            "model.attn_implementation='flex_attention' needs a CUDA device (PyTorch has no flex_attention "
            f"backward on {device_type!r}); use 'auto' or 'sdpa'"
        )
    return name


def document_ids(position_ids: Tensor) -> Tensor:
    """Per-token document index ([B, T], starting at 0 in each row): a document starts wherever the
    position does not continue the previous one, the same rule transformers uses for packed rows."""
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be [batch, seq_len], got shape {tuple(position_ids.shape)}")
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    return starts.long().cumsum(dim=1) - 1


def document_lengths(position_ids: Tensor) -> list[list[int]]:
    """Lengths of the packed documents in each row (for attention FLOPs and logging)."""
    ids = document_ids(position_ids).cpu()
    return [torch.bincount(row).tolist() for row in ids]


def packed_position_ids(doc_lengths: list[int], device=None) -> Tensor:
    """[1, sum(doc_lengths)] position ids restarting at 0 for each document."""
    if not doc_lengths or any(n <= 0 for n in doc_lengths):
        raise ValueError(f"document lengths must be positive, got {doc_lengths}")
    return torch.cat([torch.arange(n, device=device) for n in doc_lengths]).unsqueeze(0)


def build_packed_mask(model, position_ids: Tensor, dtype: torch.dtype | None = None):
    """The mask HF builds for ``model`` on a packed batch (a dense tensor, a ``BlockMask`` or None);
    used to check that the fast path never materialises a dense [T, T] mask."""
    config = model.config
    batch, seq = position_ids.shape
    dtype = dtype or next(model.parameters()).dtype
    embeds = torch.empty(batch, seq, 1, dtype=dtype, device=position_ids.device)
    return create_causal_mask(
        config=config, inputs_embeds=embeds, attention_mask=None, cache=None, position_ids=position_ids
    )


def is_dense_mask(mask) -> bool:
    """True for a materialised [B, 1, T, T] tensor mask (what sdpa/eager get for packed rows)."""
    return isinstance(mask, Tensor)
