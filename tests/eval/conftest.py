"""Tiny real models and tokenizers for the eval tests (random weights; built in seconds, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.assets.build_tiny_tokenizer import ENGLISH
from tests.helpers import compose, tiny_qwen2

FIXTURES = Path(__file__).resolve().parent / "fixtures"

_TRAIN_TEXT = ENGLISH  # English sample text the tiny tokenizer was trained on


def fixture_rows(name: str) -> list[dict]:
    with (FIXTURES / f"{name}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def eval_tokenizer(tokenizer):
    """The shared committed tiny tokenizer (tests/conftest.py), under the name the eval tests use."""
    return tokenizer


def make_tiny_qwen2(vocab_size: int, *, hidden: int = 32, layers: int = 2, max_positions: int = 512,
                    seed: int = 0, attn: str = "sdpa"):
    """tests.helpers.tiny_qwen2 at the eval tests' size (2 layers, hidden 32), token 0 as bos/eos/pad."""
    return tiny_qwen2(attn, seed=seed, vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, max_position_embeddings=max_positions, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)


@pytest.fixture(scope="session")
def tiny_lm(eval_tokenizer):
    return make_tiny_qwen2(len(eval_tokenizer))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models here are latency-bound: one intra-op thread is as fast on an idle machine and
    ~15x faster when other processes share the two cores (OpenMP threads then spin-wait)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_eval(overrides: list[str], output_dir: Path):
    """conf/eval.yaml composed as evaluate.py does (tests.helpers.compose), outputs in output_dir."""
    return compose("eval", overrides, output_dir=output_dir)
