"""MasterWeightAdamW: plain AdamW on fp32 weights; fp32 master copies for bf16 weights."""

from __future__ import annotations

import pytest
import torch

from kiwi.model.master_weights import MasterWeightAdamW


def _run(opt_cls, dtype, steps=5, **kw):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 32).to(dtype))
    b = torch.nn.Parameter(torch.zeros(32).to(dtype))
    opt = opt_cls([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1, **kw)
    x = torch.randn(16, 64)
    for _ in range(steps):
        opt.zero_grad()
        ((x.to(dtype) @ w + b).float() ** 2).mean().backward()
        opt.step()
    return w, b, opt


def test_fp32_params_match_torch_adamw():
    ours_w, ours_b, opt = _run(MasterWeightAdamW, torch.float32)
    ref_w, ref_b, _ = _run(torch.optim.AdamW, torch.float32)
    torch.testing.assert_close(ours_w, ref_w)
    torch.testing.assert_close(ours_b, ref_b)
    assert "master" not in opt.state[ours_w]  # fp32 weights are their own master


def test_bf16_params_follow_fp32_masters():
    ours_w, _, opt = _run(MasterWeightAdamW, torch.bfloat16, steps=20)
    master = opt.state[ours_w]["master"]
    assert ours_w.dtype == torch.bfloat16 and master.dtype == torch.float32
    assert torch.equal(ours_w.data, master.to(torch.bfloat16))
    ref_w, _, _ = _run(torch.optim.AdamW, torch.float32, steps=20)
    # bf16 forward/backward noise only: the update itself is fp32.
    torch.testing.assert_close(master, ref_w.data, atol=2e-2, rtol=2e-2)


def test_tiny_updates_are_not_lost_in_bf16():
    w = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = MasterWeightAdamW([w], lr=1e-4, weight_decay=0.0)
    for _ in range(50):
        w.grad = torch.ones_like(w)
        opt.step()
    # 50 updates of 1e-4 each: plain bf16 (spacing 2^-7 at 1.0) would stay at exactly 1.0
    assert opt.state[w]["master"][0].item() == pytest.approx(1 - 50e-4, rel=1e-3)


def test_state_dict_roundtrip_keeps_fp32_state():
    w, b, opt = _run(MasterWeightAdamW, torch.bfloat16)
    saved = opt.state_dict()
    fresh = MasterWeightAdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=1e-2)
    fresh.load_state_dict(saved)
    for key in ("master", "exp_avg", "exp_avg_sq"):
        assert fresh.state[w][key].dtype == torch.float32
        assert torch.equal(fresh.state[w][key], opt.state[w][key])
    assert fresh.state[w]["step"].item() == 5


def test_invalid_hyperparameters_rejected():
    with pytest.raises(ValueError, match="betas"):
        MasterWeightAdamW([torch.nn.Parameter(torch.ones(1))], betas=(0.9, 1.5))
