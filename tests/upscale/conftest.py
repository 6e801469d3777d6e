"""Tiny real Qwen2 models shared by the upscale tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# Make `import kiwi` work when pytest runs from a checkout without an installed package.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def tiny_config(n_layers: int = 6, tie: bool = True, **overrides) -> Qwen2Config:
    kwargs = dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=n_layers, vocab_size=300, tie_word_embeddings=tie, max_position_embeddings=256,
        initializer_range=0.1,
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def tiny_model(n_layers: int = 6, tie: bool = True, seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(n_layers, tie, **overrides)).eval()
    # Non-zero norms/biases so every tensor matters for the equality checks below.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def model6() -> Qwen2ForCausalLM:
    return tiny_model(6)


@pytest.fixture(scope="module")
def model24() -> Qwen2ForCausalLM:
    return tiny_model(24, hidden_size=32, intermediate_size=64)


@pytest.fixture
def make_tiny_model():
    """Factory fixture (test modules cannot import this conftest: tests/upscale is not a package)."""
    return tiny_model
