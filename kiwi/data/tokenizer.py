"""A byte-level BPE tokenizer built offline with exactly Qwen2's pre-tokenization.

transformers 5.x loads the tokenizer of any ``qwen2`` model as ``Qwen2Tokenizer``, which rebuilds the
pipeline with Qwen2's own normaliser and split regex. A BPE trained with other rules would then silently
map text to different ids depending on how it is loaded, so training uses the same pipeline and the
result is saved through ``Qwen2Tokenizer`` itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from kiwi.atomic import publish_dir, temp_sibling

EOS_TOKEN = "<|endoftext|>"
# Qwen2's split rule, as in transformers' Qwen2Tokenizer: it must match for ids to agree.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def qwen2_pipeline_tokenizer() -> Tokenizer:
    """An untrained BPE with Qwen2's normaliser, pre-tokenizer and decoder."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = qwen2_pipeline_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_as_qwen2(tok: Tokenizer, out_dir: str | Path, model_max_length: int = 32768) -> Path:
    """Save through ``Qwen2Tokenizer`` so every loading path rebuilds the same pipeline."""
    from transformers import Qwen2Tokenizer

    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    qtok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    out_dir = Path(out_dir)
    qtok.save_pretrained(out_dir)
    return out_dir


def _iter_texts(corpus_file: Path, max_chars: int) -> Iterator[str]:
    seen = 0
    with corpus_file.open(encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"]
            yield text
            seen += len(text)
            if seen >= max_chars:
                return


def build_offline_tokenizer(
    corpus_file: str | Path, vocab_size: int, cache_dir: str | Path, max_chars: int = 4_000_000
) -> Path:
    """Train (once) and cache a tokenizer on a JSON-lines corpus; returns its directory."""
    corpus_file = Path(corpus_file)
    key = hashlib.sha256(
        f"{corpus_file.name}|{vocab_size}|{max_chars}|{tokenizers.__version__}".encode()
    ).hexdigest()[:12]
    out_dir = Path(cache_dir).expanduser() / f"tokenizer-bpe{vocab_size}-{key}"
    if (out_dir / "tokenizer.json").exists():
        return out_dir
    tmp = temp_sibling(out_dir)
    save_as_qwen2(train_bpe(_iter_texts(corpus_file, max_chars), vocab_size), tmp)
    return publish_dir(tmp, out_dir)
