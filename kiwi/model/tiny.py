"""The offline tiny base: a random-init Qwen2 with a tokenizer trained on local text, built once and cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from kiwi.atomic import publish_dir, temp_sibling
from kiwi.data.corpus import build_corpus_file
from kiwi.data.tokenizer import build_offline_tokenizer


def build_tiny_base(tiny: Mapping, cache_dir: str | Path) -> Path:
    """A random-init Qwen2 with an offline tokenizer, saved once as an HF directory and reused."""
    tiny = dict(tiny)
    packages = tuple(tiny.pop("corpus_packages", ("stdlib",)))
    seed = int(tiny.pop("seed", 0))
    vocab_size = int(tiny.pop("vocab_size", 8192))
    key = hashlib.sha256(json.dumps([sorted(tiny.items()), packages, seed, vocab_size]).encode()).hexdigest()[:12]
    out = Path(cache_dir).expanduser() / f"tiny-base-{key}"
    if (out / "config.json").exists():
        return out
    corpus = build_corpus_file(Path(cache_dir).expanduser(), packages)
    tok_dir = build_offline_tokenizer(corpus, vocab_size, Path(cache_dir).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    try:
        config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, **tiny)
    except TypeError as err:
        raise ValueError(f"model.tiny: {err}") from err
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    tmp = temp_sibling(out)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return publish_dir(tmp, out)
