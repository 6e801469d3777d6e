"""Task rows -> the strings lm-eval scores (expected strings written by hand from lm-eval's rules)."""

from __future__ import annotations

import json
import re

import pytest

from kiwi.eval.tasks import (
    TaskDataError,
    arc_doc,
    hellaswag_doc,
    hellaswag_preprocess,
    load_docs,
    openbookqa_doc,
    wikitext_detokenize,
)
from tests.helpers import requires_shared

from .conftest import FIXTURES, fixture_rows


def test_hellaswag_strings_match_lm_eval():
    docs = [hellaswag_doc(i, r) for i, r in enumerate(fixture_rows("hellaswag"))]
    # " [title]" -> ". ", bracketed text removed, double spaces collapsed once, ctx_b capitalised.
    assert docs[0].context == (
        "Home and Garden: How to repot a fern. Choose a slightly larger pot. "
        "Pick a pot one size up from the current one. Then"
    )
    assert docs[0].choices == (
        "water the fern thoroughly before moving it. Wet soil holds together.",
        "paint the pot bright red.",
        "throw the fern away.",
        " Sing to the fern every morning.",  # strip happens before the bracket removal
    )
    assert docs[0].gold == 0
    assert docs[1].context == "Rowing: A man sits in a small boat on a calm lake. He grabs the oars and"
    assert docs[1].gold == 2
    assert docs[2].context == "Making a sandwich: A woman spreads butter on two slices of bread."
    assert docs[2].choices[1] == "She puts cheese between the slices."


def test_hellaswag_preprocess_edge_cases():
    assert hellaswag_preprocess("  a [step] b  ") == "a b"
    assert hellaswag_preprocess("x [title] y") == "x. y"


def test_arc_and_openbookqa_strings_match_lm_eval():
    arc = [arc_doc(i, r) for i, r in enumerate(fixture_rows("arc_challenge"))]
    assert arc[0].context == "Question: Which tool is best for measuring the mass of a small rock?\nAnswer:"
    assert arc[0].choices == ("a ruler", "a balance", "a thermometer", "a magnet")
    assert arc[0].gold == 1
    assert arc[1].gold == 2  # numeric labels "1".."5": answerKey "3" is index 2
    assert len(arc[1].choices) == 5
    assert arc[2].gold == 0 and len(arc[2].choices) == 3
    obqa = [openbookqa_doc(i, r) for i, r in enumerate(fixture_rows("openbookqa"))]
    assert obqa[0].context == "A magnet will stick to"
    assert obqa[0].choices[1] == "an iron nail" and obqa[0].gold == 1
    assert obqa[1].gold == 0  # answerKey " A" is lstripped, as lm-eval does


def test_wikitext_detokenizer_matches_lm_eval():
    pages = [r["page"] for r in fixture_rows("wikitext")]
    assert wikitext_detokenize(pages[0]) == (
        " = Kiwi Bird =\n\nThe kiwi is a bird, native to New Zealand. It weighs 1.3 kg (2.9 lb).\n\n"
        "== Diet ==\n\nKiwis eat worms; they hunt at night. The bird's egg is large.\n"
    )
    assert wikitext_detokenize(pages[1]) == (
        ' = River Town =\n\nThe river-side town has 1,200 people and a "small" bridge.\n'
    )


def _raw_wikitext_pages(tmp_path, raw: str) -> list[str]:
    """Pages of a raw WikiText file given to the wikitext task as its data file."""
    path = tmp_path / "wiki.valid.raw"
    path.write_bytes(raw.encode("utf-8"))
    return [d.original for d in load_docs({"name": "wikitext", "format": "wikitext", "data_files": str(path)})]


def test_raw_wikitext_pages_join_lines_with_newline(tmp_path):
    """EleutherAI/wikitext_document_level: split on "\\n", a page per top-level heading, lines joined with
    "\\n": a page ends with its last line, not with an extra newline; a blank lead-in is no page."""
    raw = " \n = A = \n \n text a . \n \n = = Sub = = \n \n more a . \n = B = \n \n text b . \n"
    assert _raw_wikitext_pages(tmp_path, raw) == [
        " = A = \n \n text a . \n \n = = Sub = = \n \n more a . ",
        " = B = \n \n text b . \n",  # the last page ends with the file's final (empty) line
    ]


def test_shared_wikitext_valid_pages_are_the_document_level_pages():
    """The 60 pages of wikitext-2-raw valid: each is the lines from its top-level heading up to the next one,
    joined with "\\n", and the pages joined with "\\n" give back the file after its blank lead-in."""
    import re

    path = requires_shared("data", "wikitext-2-raw", "valid.txt")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if re.fullmatch(r" = [^=].* = ", line)]
    expected = ["\n".join(lines[a:b]) for a, b in zip(heads, [*heads[1:], len(lines)], strict=True)]
    pages = [d.original for d in load_docs({"name": "wikitext", "format": "wikitext", "data_files": str(path)})]
    assert len(pages) == len(expected) == 60
    for k, (page, want) in enumerate(zip(pages, expected, strict=True)):
        assert page == want, f"page {k} ({want.split(chr(10))[0]!r}) differs"
    assert not "".join(lines[: heads[0]]).strip()
    assert "\n".join([*lines[: heads[0]], *pages]) == text


def _task(name, fmt, path, **kw):
    return {"name": name, "type": "multiple_choice", "format": fmt, "data_files": str(path), **kw}


def test_load_docs_from_local_files_and_limit():
    docs = load_docs(_task("hellaswag", "hellaswag", FIXTURES / "hellaswag.jsonl", limit=2))
    assert [d.index for d in docs] == [0, 1]
    docs = load_docs({"name": "wikitext", "format": "wikitext", "data_files": str(FIXTURES / "wikitext.jsonl")})
    assert docs[1].original.startswith(" = River Town = ")


@pytest.mark.parametrize(
    "fmt,row,message",
    [
        ("hellaswag", {"activity_label": "a", "ctx_a": "b", "endings": ["x"], "label": "0"}, "'ctx_b'"),
        ("hellaswag", {"activity_label": "a", "ctx_a": "b", "ctx_b": "", "endings": ["x", "y"], "label": "5"},
         "outside"),
        ("arc", {"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "E"},
         "answerKey 'E'"),
        ("openbookqa", {"question_stem": "q", "choices": {"text": ["x"]}, "answerKey": "A"}, "'label'"),
    ],
)
def test_bad_rows_name_task_file_and_line(tmp_path, fmt, row, message):
    """The bad row is the file's 2nd row, on line 3 (after a blank line): errors give the 1-based line."""
    good = fixture_rows({"hellaswag": "hellaswag", "arc": "arc_challenge", "openbookqa": "openbookqa"}[fmt])[0]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(TaskDataError, match=rf"^task 'mytask': {re.escape(str(path))}:3: .*{message}"):
        load_docs(_task("mytask", fmt, path))
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([good, good, row]))
    with pytest.raises(TaskDataError, match=rf"^task 'mytask': {re.escape(str(path))}: row 3: .*{message}"):
        load_docs(_task("mytask", fmt, path))


def test_non_object_row_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(fixture_rows("arc_challenge")[0]) + "\n[1, 2]\n")
    with pytest.raises(TaskDataError, match=rf"task 'arc': {re.escape(str(path))}:2: expected an object, got list"):
        load_docs(_task("arc", "arc", path))


def test_missing_file_and_bad_config_are_named(tmp_path):
    with pytest.raises(TaskDataError, match="task 'arc_challenge': data file .*nope.jsonl.* does not exist"):
        load_docs(_task("arc_challenge", "arc", tmp_path / "nope.jsonl"))
    with pytest.raises(TaskDataError, match="task 'x': unknown format"):
        load_docs({"name": "x", "format": "mmlu", "data_files": "a.jsonl"})
    (tmp_path / "bad.jsonl").write_text('{"question": "q"\n')
    with pytest.raises(TaskDataError, match=r"bad.jsonl:1: invalid JSON"):
        load_docs(_task("arc_challenge", "arc", tmp_path / "bad.jsonl"))
    with pytest.raises(TaskDataError, match="task 'hellaswag': cannot load hub dataset"):
        load_docs({"name": "hellaswag", "format": "hellaswag", "dataset_path": "/nonexistent/kiwi-ds",
                   "split": "validation"})
