"""Bad input: clear errors naming the file and line/record, or skipped-and-counted with on_error=skip."""

from __future__ import annotations

import json

import pytest

from kiwi.data import DataError, FileSource, PackedDataset, TextListSource
from tests.data.data_helpers import doc_tokens


def _rows(source, tokenizer):
    return list(PackedDataset(source, tokenizer, seq_len=32))


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"text": "alpha beta"}).encode()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (json.dumps({"body": "x"}).encode(), "no field 'text'"),
        (json.dumps({"text": 5}).encode(), "is a int, expected a string"),
        (b'{"text": "unterminated', "invalid JSON"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_jsonl_record_names_file_and_line(tmp_path, tokenizer, line, message):
    path = _write(tmp_path / "bad.jsonl", [GOOD, b"", GOOD, line, GOOD])
    with pytest.raises(DataError, match=message) as err:
        _rows(FileSource(str(path)), tokenizer)
    assert f"{path}:4:" in str(err.value)  # the blank line 2 still counts as a line

    source = FileSource(str(path), on_error="skip")
    ds = PackedDataset(source, tokenizer, seq_len=32)
    rows = list(ds)
    assert ds.stats.counts["bad_records"] == 1
    real = int(sum((r["labels"] != -100).sum() + (r["position_ids"] == 0).sum() for r in rows))
    assert real >= 3 * (len(doc_tokens(tokenizer, "alpha beta")))


def test_empty_and_whitespace_documents_are_skipped_and_counted(tmp_path, tokenizer):
    ds = PackedDataset(TextListSource(["alpha", "", "   \n\t", "beta"]), tokenizer, seq_len=64)
    (row,) = list(ds)
    assert ds.stats.counts["empty_documents"] == 2
    expected = doc_tokens(tokenizer, "alpha") + doc_tokens(tokenizer, "beta")
    assert tuple(row["input_ids"][: len(expected)].tolist()) == expected


def test_missing_file_and_empty_glob_are_named(tmp_path):
    with pytest.raises(DataError, match="file not found: .*missing.jsonl"):
        FileSource(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="matches no files"):
        FileSource(str(tmp_path / "*.jsonl"))


def test_unknown_suffix_asks_for_a_format(tmp_path):
    path = tmp_path / "data.bin"
    path.write_text("x")
    with pytest.raises(DataError, match="data.bin.*data.source.format"):
        FileSource(str(path))


def test_txt_undecodable_line_is_named(tmp_path, tokenizer):
    path = _write(tmp_path / "docs.txt", [b"first doc", b"second \xff doc", b"third doc"])
    with pytest.raises(DataError, match=r"docs.txt:2: line is not valid UTF-8"):
        _rows(FileSource(str(path)), tokenizer)


def test_parquet_non_string_row_is_named(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "beta"]}), path)
    with pytest.raises(DataError, match=r"docs.parquet: row 2: column 'text' is a NoneType"):
        _rows(FileSource(str(path)), tokenizer)
    pq.write_table(pa.table({"body": ["alpha"]}), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match=r"nocol.parquet: no column 'text'"):
        _rows(FileSource(str(tmp_path / "nocol.parquet")), tokenizer)


def test_json_array_record_is_named(tmp_path, tokenizer):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": "alpha"}, {"text": ["not", "a", "string"]}]))
    with pytest.raises(DataError, match=r"docs.json: record 2: field 'text' is a list"):
        _rows(FileSource(str(path)), tokenizer)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="on_error"):
        TextListSource(["a"], on_error="ignore")
    with pytest.raises(ValueError, match="sample_by"):
        FileSource(__file__, format="txt", sample_by="sentence")


@pytest.mark.parametrize("workers", [0, 2])
def test_training_bad_row_is_one_line_naming_file_and_line(tmp_path, tokenizer, workers):
    """What a training run reports: the file and 1-based line, as one line, also from a dataloader worker
    (torch re-raises a worker's error with the worker's traceback as its message)."""
    from kiwi.data.datamodule import PackedDataModule

    lines = [json.dumps({"text": f"document {i} alpha beta"}).encode() for i in range(12)]
    lines[8] = json.dumps({"title": "no text here"}).encode()
    path = _write(tmp_path / "train.jsonl", lines)
    dm = PackedDataModule(tokenizer, {"kind": "files", "files": [str(path)]}, seq_len=16, num_workers=workers,
                          val_documents=2)
    dm.setup("fit")
    with pytest.raises(DataError) as err:
        list(dm.train_dataloader())
    assert str(err.value) == f"{path}:9: record has no field 'text' (fields: ['title'])"


# Unencodable text: the same bad records through both encoders of Qwen2.5's vocabulary (the HF tokenizers
# backend and data.encoder=tiktoken). Each must see the same error, or skip and count the same record.
UNENCODABLE = {
    # valid JSON, but "\ud83d" is a lone surrogate (half an emoji): no UTF-8 encoding exists
    "jsonl_lone_surrogate": ("bad.jsonl", [GOOD, b'{"text": "half an emoji \\ud83d here"}', GOOD],
                             r"lone surrogate U\+D83D"),
    "json_array_lone_surrogate": ("bad.json", [b'[{"text": "alpha beta"},', b'{"text": "x \\udfff"}]'],
                                  r"lone surrogate U\+DFFF"),
    "txt_invalid_utf8": ("bad.txt", [b"alpha beta", b"caf\xe9 au lait", b"alpha beta"], "not valid UTF-8"),
    "txt_encoded_surrogate": ("bad.txt", [b"alpha beta", b"x \xed\xa0\xbd y", b"alpha beta"], "not valid UTF-8"),
}
WHERE = {"jsonl_lone_surrogate": ":2:", "json_array_lone_surrogate": ": record 2:", "txt_invalid_utf8": ":2:",
         "txt_encoded_surrogate": ":2:"}


@pytest.fixture(scope="module")
def both_encoders(kiwi_cache):
    from transformers import AutoTokenizer

    from kiwi.data.qwen_tokenizer import TiktokenEncoder, qwen25_tokenizer_dir

    hf = AutoTokenizer.from_pretrained(qwen25_tokenizer_dir(kiwi_cache))
    return {"hf": hf, "tiktoken": TiktokenEncoder(hf)}


@pytest.mark.parametrize("case", sorted(UNENCODABLE))
def test_unencodable_text_is_named_by_both_encoders(tmp_path, both_encoders, case):
    name, lines, message = UNENCODABLE[case]
    path = _write(tmp_path / name, lines)
    for encoder, tok in both_encoders.items():
        with pytest.raises(DataError, match=message) as err:
            _rows(FileSource(str(path)), tok)
        assert str(err.value).startswith(f"{path}{WHERE[case]}"), (encoder, str(err.value))


@pytest.mark.parametrize("case", sorted(UNENCODABLE))
def test_unencodable_text_is_skipped_and_counted_alike_by_both_encoders(tmp_path, both_encoders, case):
    name, lines, _ = UNENCODABLE[case]
    path = _write(tmp_path / name, lines)
    good = "alpha beta"
    rows = {}
    for encoder, tok in both_encoders.items():
        ds = PackedDataset(FileSource(str(path), on_error="skip"), tok, seq_len=32)
        rows[encoder] = [r["input_ids"].tolist() for r in ds]
        assert ds.stats.counts == {"bad_records": 1}, encoder
        # only the good records, nothing of the bad one (the HF ids: both encoders must give them)
        expected = doc_tokens(both_encoders["hf"], good) * (len(lines) - 1)
        assert rows[encoder][0][: len(expected)] == list(expected), encoder
    assert rows["hf"] == rows["tiktoken"]


def test_in_memory_lone_surrogate_is_named(both_encoders):
    for tok in both_encoders.values():
        with pytest.raises(DataError, match=r"texts\[1\].*lone surrogate U\+D83D at character 3"):
            _rows(TextListSource(["alpha", "ab\ud83d"]), tok)
        ds = PackedDataset(TextListSource(["alpha", "ab\ud83d"], on_error="skip"), tok, seq_len=16)
        assert len(list(ds)) == 1 and ds.stats.counts == {"bad_records": 1}
