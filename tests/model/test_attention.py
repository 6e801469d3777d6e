"""Packed documents must not see each other: each packed document's logits equal running it alone."""

from __future__ import annotations

import pytest
import torch

from kiwi.model.attention import (
    build_packed_mask,
    document_ids,
    document_lengths,
    is_dense_mask,
    packed_position_ids,
    resolve_attn_implementation,
)
from tests.helpers import tiny_qwen2

DOCS = [7, 1, 12, 5, 9]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _packed_vs_alone(model, doc_lengths, device="cpu"):
    torch.manual_seed(1)
    total = sum(doc_lengths)
    ids = torch.randint(0, model.config.vocab_size, (1, total), device=device)
    pos = packed_position_ids(doc_lengths, device=device)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False).logits[0]
        alone, start = [], 0
        for n in doc_lengths:
            alone.append(model(input_ids=ids[:, start : start + n], use_cache=False).logits[0])
            start += n
    return packed.float(), torch.cat(alone).float()


def test_resolve_auto_picks_flex_on_cuda_and_sdpa_on_cpu():
    assert resolve_attn_implementation("auto", "cuda") == "flex_attention"
    assert resolve_attn_implementation("auto", "cpu") == "sdpa"
    assert resolve_attn_implementation("eager", "cpu") == "eager"
    assert resolve_attn_implementation("sdpa", "cuda") == "sdpa"


def test_resolve_rejects_unknown_and_flex_on_cpu():
    with pytest.raises(ValueError, match="flash_attention_9"):
        resolve_attn_implementation("flash_attention_9", "cuda")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_attn_implementation("flex_attention", "cpu")


def test_document_ids_and_lengths():
    pos = torch.cat([packed_position_ids([3, 1, 2]), packed_position_ids([1, 5])])
    assert document_ids(pos).tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 1, 1, 1, 1]]
    assert document_lengths(pos) == [[3, 1, 2], [1, 5]]
    with pytest.raises(ValueError, match="positive"):
        packed_position_ids([3, 0])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_match_each_document_alone(attn):
    packed, alone = _packed_vs_alone(tiny_qwen2(attn), DOCS)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_packed_without_position_ids_leaks_across_documents():
    """Control: the equality above comes from the document mask, not from a too-loose tolerance."""
    model = tiny_qwen2("sdpa")
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (1, sum(DOCS)))
    with torch.no_grad():
        full_causal = model(input_ids=ids, use_cache=False).logits[0]
    _, alone = _packed_vs_alone(model, DOCS)
    assert (full_causal[DOCS[0]:] - alone[DOCS[0]:]).abs().max() > 1e-3


def test_sdpa_gets_a_dense_document_mask_on_cpu():
    model = tiny_qwen2("sdpa")
    mask = build_packed_mask(model, packed_position_ids(DOCS))
    assert is_dense_mask(mask) and mask.shape[-2:] == (sum(DOCS), sum(DOCS))
    ids = document_ids(packed_position_ids(DOCS))[0]
    expected = (ids[:, None] == ids[None, :]) & torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    assert torch.equal(mask[0, 0], expected)


@pytest.mark.slow
def test_flex_mask_is_a_block_mask_on_cpu():
    """Compiles create_block_mask on CPU (~20 s): the flex path never builds a dense [T, T] mask."""
    from torch.nn.attention.flex_attention import BlockMask

    mask = build_packed_mask(tiny_qwen2("flex_attention"), packed_position_ids(DOCS))
    assert isinstance(mask, BlockMask) and not is_dense_mask(mask)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_flex_packed_documents_match_alone_on_cuda(dtype, tol):
    from torch.nn.attention.flex_attention import BlockMask

    model = tiny_qwen2("flex_attention", dtype=dtype).cuda()
    docs = [130, 1, 257, 64, 300]
    mask = build_packed_mask(model, packed_position_ids(docs, device="cuda"))
    assert isinstance(mask, BlockMask)
    packed, alone = _packed_vs_alone(model, docs, device="cuda")
    torch.testing.assert_close(packed, alone, atol=tol, rtol=tol)
    if dtype == torch.float32:
        # Reference: each document alone through sdpa. Only in fp32: a bf16-weight model differs from an
        # fp32 one by weight rounding alone (up to ~1 logit on an H100), which says nothing about masking.
        ref_model = tiny_qwen2("sdpa", dtype=torch.float32).cuda()
        _, ref = _packed_vs_alone(ref_model, docs, device="cuda")
        torch.testing.assert_close(packed, ref, atol=tol * 4, rtol=tol * 4)


@pytest.mark.gpu
@cuda
def test_auto_never_gives_sdpa_a_dense_packed_mask_on_cuda():
    from torch.nn.attention.flex_attention import BlockMask

    attn = resolve_attn_implementation("auto", "cuda")
    mask = build_packed_mask(tiny_qwen2(attn).cuda(), packed_position_ids(DOCS, device="cuda"))
    assert attn == "flex_attention" and isinstance(mask, BlockMask)
