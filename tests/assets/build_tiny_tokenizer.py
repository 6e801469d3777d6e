"""Build tests/assets/tiny_tokenizer, the one tokenizer the tests share (committed, so no test session
trains one). Run from the repository root after changing the text or the size below:

    python -m tests.assets.build_tiny_tokenizer

It is a byte-level BPE with Qwen2's exact pipeline, saved through Qwen2Tokenizer, i.e. built the way kiwi
builds its offline tokenizer (kiwi.data.tokenizer), on the generated documents of the data tests and a few
English sentences for the eval tests. tests/test_tiny_tokenizer.py checks the committed files match a rebuild.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from kiwi.data.tokenizer import save_as_qwen2, train_bpe
from tests.data.data_helpers import make_docs

OUT = Path(__file__).resolve().parent / "tiny_tokenizer"
VOCAB_SIZE = 600
ENGLISH = [
    "The quick brown fox jumps over the lazy dog. A man sits in a small boat on a calm lake.",
    "Question: Which tool is best for measuring the mass of a small rock?\nAnswer: a balance",
    "Plants make food through photosynthesis. Water evaporates in the sun. A magnet sticks to iron.",
    "The kiwi is a bird, native to New Zealand. It weighs 1.3 kg (2.9 lb). Kiwis eat worms.",
    "She puts cheese between the slices of bread and pulls the oars through the water.",
]


def training_text() -> list[str]:
    return make_docs(300, seed=1) * 3 + ENGLISH * 8


def build(out: Path = OUT) -> Path:
    if out.exists():
        shutil.rmtree(out)
    return save_as_qwen2(train_bpe(training_text(), VOCAB_SIZE), out)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
