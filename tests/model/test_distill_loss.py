"""The distillation term (kiwi.model.loss.distill_kl_sum / lm_nll_and_kl) against a direct computation on
full logits: values, gradients, ignored positions and the temperature's T² scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kiwi.data.packing import IGNORE_INDEX
from kiwi.model.loss import distill_kl_sum, lm_nll, lm_nll_and_kl, shift_labels
from tests.helpers import tiny_qwen2


def _direct_kl(h, w, ht, wt, targets, temperature):
    valid = targets != IGNORE_INDEX
    log_ps = F.log_softmax(h[valid] @ w.T / temperature, dim=-1)
    log_pt = F.log_softmax(ht[valid] @ wt.T / temperature, dim=-1)
    # KL(teacher || student), summed over positions
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="sum") * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [3, 4096])
def test_kl_sum_and_its_gradients_equal_the_direct_computation(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    n, hdim, vocab = 11, 8, 17
    h = torch.randn(n, hdim, generator=g, requires_grad=True)
    w = torch.randn(vocab, hdim, generator=g, requires_grad=True)
    ht, wt = torch.randn(n, hdim, generator=g), torch.randn(vocab, 6 + 2, generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[[2, 7]] = IGNORE_INDEX
    got = distill_kl_sum(h, w, ht, wt, targets, temperature, chunk)
    want = _direct_kl(h, w, ht, wt, targets, temperature)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    g_got = torch.autograd.grad(got, (h, w))
    g_want = torch.autograd.grad(want, (h, w))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert g_got[0][[2, 7]].abs().max() == 0  # ignored positions: no KL, no gradient


def test_kl_is_zero_for_a_student_equal_to_its_teacher_and_positive_otherwise():
    teacher = tiny_qwen2(seed=0).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    nll, n, kl = lm_nll_and_kl(teacher, teacher, ids, ids.clone())
    ref_nll, ref_n = lm_nll(teacher, ids, ids.clone())
    assert kl.item() == pytest.approx(0.0, abs=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-6) and n == ref_n == 2 * 11
    student = tiny_qwen2(seed=1)
    _, _, kl = lm_nll_and_kl(student, teacher, ids, ids.clone())
    assert kl.item() > 0.01
    kl.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
    assert student.lm_head.weight.grad is not None and student.lm_head.weight.grad.abs().sum() > 0
    assert shift_labels(ids).shape == ids.shape


def test_bad_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        distill_kl_sum(torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(3, 2),
                       torch.zeros(1, dtype=torch.long), temperature=0.0)


def _base_dir(tmp_path):
    from tests.helpers import tiny_tokenizer

    base = tmp_path / "base"
    tiny_qwen2(num_hidden_layers=2).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return str(base)


def test_the_teacher_is_frozen_and_takes_the_students_attention_setting(tmp_path):
    from kiwi.train.module import KiwiLM

    teacher = KiwiLM._load_teacher(_base_dir(tmp_path), {"attn_implementation": "eager"}, "cpu")
    assert teacher.config._attn_implementation == "eager" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_teacher_gets_the_cuda_attention_kernel_of_its_device(tmp_path):
    """On CUDA the student runs flex_attention (document masks without a dense T x T mask); so must the
    teacher, whose kernel is resolved for the module's device, not for CPU."""
    from kiwi.train.module import KiwiLM

    teacher = KiwiLM._load_teacher(_base_dir(tmp_path), {"attn_implementation": "auto"}, "cuda")
    assert teacher.config._attn_implementation == "flex_attention"
