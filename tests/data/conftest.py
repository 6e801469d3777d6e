"""A small tokenizer with Qwen2's exact pipeline, trained once per session on generated text."""

from __future__ import annotations

import pytest

from kiwi.data.tokenizer import save_as_qwen2, train_bpe
from tests.data.data_helpers import make_docs


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tok")
    save_as_qwen2(train_bpe(make_docs(300, seed=1) * 3, vocab_size=400), out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id is not None
    return tok
