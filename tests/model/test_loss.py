"""kiwi's loss (chunked on CPU, Liger on CUDA) must equal the stock HF causal-LM loss."""

from __future__ import annotations

import math

import pytest
import torch

from kiwi.model import loss as loss_mod
from kiwi.model.attention import packed_position_ids
from kiwi.model.loss import chunked_nll_sum, lm_nll, nll_sum, perplexity, resolve_loss_impl, token_logprobs
from tests.helpers import tiny_qwen2

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DOCS = [10, 3, 14, 5]


def _batch(device="cpu", rows=2):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 256, (rows, sum(DOCS)), generator=g)
    labels = ids.clone()
    labels[:, 0] = -100
    labels[:, DOCS[0]] = -100  # first token of the second document
    labels[1, -4:] = -100  # padding at the end of a row
    pos = packed_position_ids(DOCS).expand(rows, -1)
    return ids.to(device), labels.to(device), pos.to(device)


def _hf_loss_and_grads(model, ids, labels, pos):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False).loss
    loss.backward()
    return loss.detach().float(), {k: p.grad.float().clone() for k, p in model.named_parameters()}


def _kiwi_loss_and_grads(model, ids, labels, pos, impl, chunk=7):
    model.zero_grad(set_to_none=True)
    nll, n = lm_nll(model, ids, labels, pos, chunk=chunk, impl=impl)
    (nll / n).backward()
    return (nll / n).detach().float(), {k: p.grad.float().clone() for k, p in model.named_parameters()}


def _assert_grads_close(ours, ref, atol, rtol, min_cos=None):
    assert ours.keys() == ref.keys()
    for name, g in ours.items():
        if min_cos is None:
            torch.testing.assert_close(g, ref[name], atol=atol, rtol=rtol, msg=name)
        else:
            cos = torch.nn.functional.cosine_similarity(g.flatten(), ref[name].flatten(), dim=0)
            assert cos > min_cos, (name, cos.item())


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_and_grads_equal_hf_fp32(tie):
    model = tiny_qwen2(tie_word_embeddings=tie).train()
    batch = _batch()
    ref_loss, ref_grads = _hf_loss_and_grads(model, *batch)
    loss, grads = _kiwi_loss_and_grads(model, *batch, impl="chunked")
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    _assert_grads_close(grads, ref_grads, atol=1e-6, rtol=1e-4)


def test_chunked_loss_bf16_model_matches_hf():
    """bf16 weights: ours computes logits in fp32, HF in bf16, so they agree to bf16 precision."""
    model = tiny_qwen2(dtype=torch.bfloat16).train()
    batch = _batch()
    ref_loss, ref_grads = _hf_loss_and_grads(model, *batch)
    loss, grads = _kiwi_loss_and_grads(model, *batch, impl="chunked")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=2e-2, rtol=1e-2)
    assert all(g.dtype == torch.float32 for g in grads.values())
    _assert_grads_close(grads, ref_grads, atol=0, rtol=0, min_cos=0.99)


def test_nll_sum_without_grad_equals_with_grad_and_token_logprobs():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::5] = -100
    with_grad = chunked_nll_sum(hidden, weight, targets, chunk=8)
    with torch.no_grad():
        without = chunked_nll_sum(hidden, weight, targets, chunk=8)
        plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert not without.requires_grad
    torch.testing.assert_close(without, with_grad.detach())
    torch.testing.assert_close(without, plain)
    torch.testing.assert_close(-token_logprobs(hidden, weight, targets, chunk=8).sum(), plain)


def test_chunked_loss_under_autocast_keeps_fp32_logits():
    torch.manual_seed(0)
    hidden = torch.randn(20, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (20,))
    ref = chunked_nll_sum(hidden, weight, targets, chunk=8)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = chunked_nll_sum(hidden, weight, targets, chunk=8)
    grads = torch.autograd.grad(ours, (hidden, weight))
    torch.testing.assert_close(ours, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_all_ignored_targets_give_zero_loss_and_zero_grad():
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    loss = chunked_nll_sum(hidden, weight, torch.full((6,), -100), chunk=4)
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


def test_loss_impl_resolution(monkeypatch, caplog):
    assert resolve_loss_impl("auto", "cpu") == "chunked"
    assert resolve_loss_impl("chunked", "cuda") == "chunked"
    with pytest.raises(ValueError, match="'fused'"):
        resolve_loss_impl("fused", "cpu")
    with pytest.raises(ValueError, match="needs a CUDA device and liger-kernel"):
        resolve_loss_impl("liger", "cpu")
    # A CUDA run without liger-kernel falls back to the chunked loss, with one notice.
    monkeypatch.setattr("kiwi.model.liger.liger_available", lambda: False)
    monkeypatch.setattr(loss_mod, "_fallback_noticed", False)
    with caplog.at_level("WARNING", logger="kiwi.model.loss"):
        assert resolve_loss_impl("auto", "cuda") == "chunked"
        assert resolve_loss_impl("auto", "cuda") == "chunked"
    assert sum("liger-kernel is not installed" in r.message for r in caplog.records) == 1
    assert resolve_loss_impl("auto", "cuda", grad=False) == "chunked"


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_loss_and_grads_equal_hf_on_cuda(dtype):
    pytest.importorskip("liger_kernel", reason="liger-kernel not installed (requirements-gpu.txt)")
    model = tiny_qwen2(dtype=dtype).cuda().train()
    batch = _batch("cuda")
    ref_loss, ref_grads = _hf_loss_and_grads(model, *batch)
    assert resolve_loss_impl("auto", "cuda") == "liger"
    loss, grads = _kiwi_loss_and_grads(model, *batch, impl="auto")
    chunk_loss, chunk_grads = _kiwi_loss_and_grads(model, *batch, impl="chunked")
    if dtype == torch.float32:
        torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-4)
        _assert_grads_close(grads, ref_grads, atol=1e-4, rtol=1e-3)
    else:
        torch.testing.assert_close(loss, ref_loss, atol=3e-2, rtol=2e-2)
        torch.testing.assert_close(loss, chunk_loss, atol=3e-2, rtol=2e-2)
        _assert_grads_close(grads, ref_grads, atol=0, rtol=0, min_cos=0.99)
        _assert_grads_close(grads, chunk_grads, atol=0, rtol=0, min_cos=0.99)


@pytest.mark.gpu
@cuda
def test_liger_nll_sum_matches_chunked_on_cuda():
    pytest.importorskip("liger_kernel", reason="liger-kernel not installed (requirements-gpu.txt)")
    torch.manual_seed(0)
    hidden = torch.randn(300, 64, device="cuda", requires_grad=True)
    weight = torch.randn(1000, 64, device="cuda", requires_grad=True)
    targets = torch.randint(0, 1000, (300,), device="cuda")
    targets[::7] = -100
    ours = nll_sum(hidden, weight, targets, impl="liger")
    gh, gw = torch.autograd.grad(ours, (hidden, weight))
    ref = chunked_nll_sum(hidden, weight, targets, chunk=64)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    torch.testing.assert_close(ours, ref, atol=1e-2, rtol=1e-4)
    torch.testing.assert_close(gh, rh, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-3)


def test_perplexity_is_exp_of_the_mean_nll_for_floats_and_tensors():
    """One definition used by training logs, run reports and eval metrics: inf instead of an OverflowError."""
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(800.0) == float("inf")
    logged = perplexity(torch.tensor(math.log(3.0), dtype=torch.float64))
    assert torch.is_tensor(logged) and logged.dtype == torch.float64 and float(logged) == pytest.approx(3.0)
