"""Tiny real Qwen2 models for the upscale tests: tests.helpers.tiny_qwen2 at the sizes these tests use."""

from __future__ import annotations

import pytest
from transformers import Qwen2ForCausalLM

from tests.helpers import tiny_qwen2

# Larger init and perturbed norms/biases, so every tensor matters for the equality checks.
UPSCALE_SIZES = dict(intermediate_size=128, vocab_size=300, max_position_embeddings=256, initializer_range=0.1)


def tiny_model(n_layers: int = 6, tie: bool = True, seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    return tiny_qwen2(seed=seed, perturb_norms=True, num_hidden_layers=n_layers, tie_word_embeddings=tie,
                      **{**UPSCALE_SIZES, **overrides})


@pytest.fixture(scope="module")
def model6() -> Qwen2ForCausalLM:
    return tiny_model(6)


@pytest.fixture(scope="module")
def model24() -> Qwen2ForCausalLM:
    return tiny_model(24, hidden_size=32, intermediate_size=64)


@pytest.fixture
def make_tiny_model():
    """tiny_model as a fixture (test modules do not import conftest files)."""
    return tiny_model
