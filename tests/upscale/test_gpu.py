"""Surgery on a CUDA-resident bf16 model: tensors stay on the device and the function is preserved."""

from __future__ import annotations

import pytest
import torch

from kiwi.upscale import make_plan, upscale

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upscale_on_cuda_preserves_function(make_tiny_model, dtype):
    model = make_tiny_model(6).to("cuda", dtype)
    plan = make_plan("interleave", 6, 10, identity_init=True)
    big = upscale(model, plan)
    assert {p.device.type for p in big.parameters()} == {"cuda"}
    assert {p.dtype for p in big.parameters()} == {dtype}
    assert big.model.rotary_emb.inv_freq.device.type == "cuda"
    ids = torch.randint(0, 300, (2, 16), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(big(ids).logits, model(ids).logits)
    out = big.generate(ids[:1], max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids[:1]),
                       pad_token_id=0)
    assert out.shape == (1, 24)
