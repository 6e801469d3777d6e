"""Tiny real Qwen2 models (random init, fp32 by default) for the tests in tests/model."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)


def tiny_qwen2(attn: str = "sdpa", dtype=torch.float32, seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(**{**TINY, **overrides})
    model = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
    return model.eval()
