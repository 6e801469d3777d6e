"""The committed tiny tokenizer is exactly what tests/assets/build_tiny_tokenizer.py builds, and loads as
the Qwen2 tokenizer kiwi uses."""

from __future__ import annotations

from tests.assets.build_tiny_tokenizer import ENGLISH, VOCAB_SIZE, build
from tests.helpers import TINY_TOKENIZER_DIR


def test_committed_asset_matches_a_rebuild(tmp_path):
    rebuilt = build(tmp_path / "tok")
    committed = sorted(p.name for p in TINY_TOKENIZER_DIR.iterdir())
    assert committed == sorted(p.name for p in rebuilt.iterdir())
    for name in committed:
        assert (rebuilt / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), (
            f"tests/assets/tiny_tokenizer/{name} is stale: run python -m tests.assets.build_tiny_tokenizer")


def test_asset_is_a_qwen2_tokenizer(tokenizer):
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert 256 < len(tokenizer) <= VOCAB_SIZE  # the byte alphabet plus merges (the text saturates below the cap)
    assert tokenizer.eos_token == "<|endoftext|>"
    text = ENGLISH[3]
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
