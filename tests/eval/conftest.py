"""Tiny real models and tokenizers for the eval tests (random weights; built in seconds, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"

_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. A man sits in a small boat on a calm lake.",
    "Question: Which tool is best for measuring the mass of a small rock?\nAnswer: a balance",
    "Plants make food through photosynthesis. Water evaporates in the sun. A magnet sticks to iron.",
    "The kiwi is a bird, native to New Zealand. It weighs 1.3 kg (2.9 lb). Kiwis eat worms.",
    "She puts cheese between the slices of bread and pulls the oars through the water.",
]


def fixture_rows(name: str) -> list[dict]:
    with (FIXTURES / f"{name}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def eval_tokenizer(tmp_path_factory):
    """A byte-level BPE saved through Qwen2Tokenizer, exactly how kiwi's offline tokenizer is built."""
    from transformers import AutoTokenizer

    from kiwi.data.tokenizer import save_as_qwen2, train_bpe

    out = tmp_path_factory.mktemp("eval-tokenizer")
    save_as_qwen2(train_bpe(_TRAIN_TEXT * 8, 600), out)
    return AutoTokenizer.from_pretrained(out)


def make_tiny_qwen2(vocab_size: int, *, hidden: int = 32, layers: int = 2, max_positions: int = 512,
                    seed: int = 0, attn: str = "sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


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
    """conf/eval.yaml composed as evaluate.py does (argv normalisation included), outputs in output_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from kiwi.cli import CONF_DIR, normalize_overrides

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("eval", overrides=normalize_overrides(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg
