"""FLOPs formula checked against hand-computed numbers and against the real module shapes."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from kiwi.train.flops import (
    attention_flops,
    flops_per_token,
    matmul_flops_per_token,
    matmul_params,
    mfu,
    peak_flops,
)
from tests.helpers import QWEN25_05B

KIWI = {**QWEN25_05B, "num_hidden_layers": 38}


def test_kiwi_shape_matmul_flops():
    config = Qwen2Config(**KIWI)
    # per layer: q 896*896 + k,v 2*896*128 + o 896*896 + mlp 3*896*4864 = 14,909,440; head 151,936*896
    assert matmul_params(config) == 38 * 14_909_440 + 136_134_656 == 702_693_376
    assert matmul_flops_per_token(config) == 6 * 702_693_376
    assert 4.2e9 < matmul_flops_per_token(config) < 4.22e9


def test_matmul_params_equal_linear_weights_of_the_real_model():
    config = Qwen2Config(**KIWI)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(config) == linear  # lm_head counted once even though it is tied
    total = sum(p.numel() for p in model.parameters())
    assert round(total / 1e6, 1) == 702.8


def test_attention_flops_hand_computed():
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)
    # docs of 3 and 1 tokens: 3*4/2 + 1 = 7 (query, key) pairs; 12 * L=2 * n_q=4 * d=16 * 7
    assert attention_flops([3, 1], config) == 10_752
    assert attention_flops([], config) == 0
    with pytest.raises(ValueError, match=">= 0"):
        attention_flops([3, -1], config)
    # per token: matmuls 6*(2*(64*64 + 2*64*32 + 64*64 + 3*64*128) + 100*64) plus 10,752 / 4 tokens
    assert flops_per_token(config, [3, 1]) == 6 * (2 * 36_864 + 6_400) + 2_688


def test_packing_changes_attention_cost():
    config = Qwen2Config(**KIWI)
    one_doc = flops_per_token(config, [32_768])
    packed = flops_per_token(config, [2_184] * 15 + [8])
    assert one_doc > packed > matmul_flops_per_token(config)
    # a full 32k causal row: 12*38*14*64*(32768*32769/2)/32768 = 6.72 GFLOP/token of attention
    assert one_doc - matmul_flops_per_token(config) == pytest.approx(12 * 38 * 14 * 64 * 32_769 / 2)


def test_peak_table_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None and peak_flops(None) is None
    assert mfu(60_000, 5e9, 989e12) == pytest.approx(0.30333, rel=1e-4)
    assert mfu(60_000, 5e9, None) is None
    with pytest.raises(ValueError, match="positive"):
        mfu(1, 1, 0)
