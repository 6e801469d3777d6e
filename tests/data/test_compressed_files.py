"""Compressed JSON-lines shards (the ``wikimedia/wikipedia`` schema as ``*.jsonl.gz``) through the same readers."""

from __future__ import annotations

import gzip
import json

import pytest

from kiwi.data import DataError, FileSource, PackedDataset
from kiwi.data.sources import Selection, SourceStats
from tests.helpers import compose, requires_shared


def _texts(source) -> list[str]:
    return [t for _, t in source.records(Selection(), SourceStats())]


def _wiki_record(i: int, text: str) -> dict:
    return {"id": str(i), "url": f"https://en.wikipedia.org/wiki?curid={i}", "title": f"Title {i}", "text": text}


def _write_gz(path, lines: list[bytes]):
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_gz_reads_like_jsonl(tmp_path, tokenizer):
    docs = ["alpha beta", "gamma\ndelta", "kiwi fruit"]
    lines = [json.dumps(_wiki_record(i, t)).encode() for i, t in enumerate(docs)]
    _write_gz(tmp_path / "train-00.jsonl.gz", lines[:2])
    _write_gz(tmp_path / "train-01.jsonl.gz", lines[2:])
    (tmp_path / "plain.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert _texts(FileSource(str(tmp_path / "*.jsonl.gz"))) == docs
    plain = list(PackedDataset(FileSource(str(tmp_path / "plain.jsonl")), tokenizer, seq_len=16))
    packed = list(PackedDataset(FileSource(str(tmp_path / "train-*.jsonl.gz")), tokenizer, seq_len=16))
    assert [r["input_ids"].tolist() for r in packed] == [r["input_ids"].tolist() for r in plain]


def test_bad_record_in_jsonl_gz_names_file_and_line(tmp_path):
    good = json.dumps(_wiki_record(0, "alpha")).encode()
    path = _write_gz(tmp_path / "shard.jsonl.gz", [good, b"", good, json.dumps({"title": "no text"}).encode()])
    with pytest.raises(DataError, match=r"shard.jsonl.gz:4: record has no field 'text'"):
        _texts(FileSource(str(path)))


def test_truncated_gzip_is_named(tmp_path):
    good = json.dumps(_wiki_record(0, "alpha " * 2000)).encode()
    whole = gzip.compress(b"\n".join([good] * 50) + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz:\d+: cannot decompress .*corrupt or truncated"):
        _texts(FileSource(str(path)))
    not_gz = tmp_path / "fake.txt.gz"
    not_gz.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError, match=r"fake.txt.gz: cannot decompress"):
        _texts(FileSource(str(not_gz)))


def test_txt_gz_and_json_array_gz(tmp_path):
    _write_gz(tmp_path / "a.txt.gz", [b"first", b"", b"second"])
    assert _texts(FileSource(str(tmp_path / "a.txt.gz"))) == ["first", "second"]
    with gzip.open(tmp_path / "a.json.gz", "wt") as fh:
        json.dump([{"text": "x"}, {"text": "y"}], fh)
    assert _texts(FileSource(str(tmp_path / "a.json.gz"))) == ["x", "y"]


def test_files_glob_from_the_command_line(tmp_path):
    """``data=local data.source.files=[dir/*.jsonl.gz]`` as the README writes it: sorted matches, in order."""
    for k in (1, 0):
        _write_gz(tmp_path / f"train-0{k}.jsonl.gz", [json.dumps(_wiki_record(k, f"doc {k}")).encode()])
    cfg = compose("train", ["experiment=quickstart", "data=local", f"data.source.files=[{tmp_path}/*.jsonl.gz]"])
    source = FileSource(cfg.data.source.files)
    assert [p.name for p in source.files] == ["train-00.jsonl.gz", "train-01.jsonl.gz"]
    assert _texts(source) == ["doc 0", "doc 1"]
    cfg = compose("train", ["experiment=quickstart", "data=local", f"data.source.files={tmp_path}/train-01.*"])
    assert _texts(FileSource(cfg.data.source.files)) == ["doc 1"]


def test_shared_wikipedia_shards():
    shards = requires_shared("data", "wikipedia-en-2015")
    source = FileSource(str(shards / "*.jsonl.gz"))
    assert [p.name for p in source.files] == [f"train-0{k}.jsonl.gz" for k in range(4)]
    first = [t for _, t in zip(range(3), source.records(Selection(stop=3), SourceStats()), strict=False)]
    assert len(first) == 3 and first[0][1].startswith("Anarchism is a political philosophy")
