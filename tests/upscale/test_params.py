"""Exact parameter-count formula vs real models; the 702.8M target."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from kiwi.upscale import count_parameters, n_target_for_budget
from tests.helpers import QWEN25_05B


def _real(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("layers", [1, 3])
def test_formula_matches_real_qwen2(tie, layers):
    cfg = Qwen2Config(hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=2,
                      num_hidden_layers=layers, vocab_size=123, tie_word_embeddings=tie)
    model = Qwen2ForCausalLM(cfg)
    assert count_parameters(cfg) == _real(model) == count_parameters(model)
    assert count_parameters(model, n_layers=layers) == _real(model)


@pytest.mark.parametrize("bias", [True, False])
def test_formula_matches_real_llama(bias):
    cfg = LlamaConfig(hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=4,
                      head_dim=16, num_hidden_layers=2, vocab_size=50, attention_bias=bias, mlp_bias=bias)
    assert count_parameters(cfg) == _real(LlamaForCausalLM(cfg))


def test_qwen25_05b_sizes():
    cfg = Qwen2Config(**QWEN25_05B)
    assert count_parameters(cfg) == 494_032_768
    assert count_parameters(cfg, n_layers=38) == 702_806_144  # 702.8M, tied embeddings counted once
    assert n_target_for_budget(cfg, 7.03e8) == 38
    assert n_target_for_budget(cfg, count_parameters(cfg, n_layers=38)) == 38
    assert n_target_for_budget(cfg, count_parameters(cfg, n_layers=38) - 1) == 37


def test_budget_errors():
    cfg = Qwen2Config(**QWEN25_05B)
    with pytest.raises(ValueError, match="param_budget"):
        n_target_for_budget(cfg, -1)
    with pytest.raises(ValueError, match="param_budget"):
        n_target_for_budget(cfg, 1e6)
    with pytest.raises(NotImplementedError, match="model_type"):
        count_parameters(GPT2Config(n_layer=2))
