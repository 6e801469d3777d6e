"""Benchmark rows -> the exact strings lm-evaluation-harness scores.

Scores are only comparable with published lm-eval numbers if the context and choice strings are the same
character for character, so each task reproduces its lm-eval ``process_docs`` / ``doc_to_text`` /
``doc_to_choice`` / ``doc_to_target`` here (zero-shot, target delimiter " "). Rows come from the hub
dataset lm-eval uses or, offline, from local files in the same schema. A bad row is reported with its task,
file and 1-based line (or row).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiwi.data.wikitext import wikitext_page_lines
from kiwi.errors import DataError

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class ChoiceDoc:
    """One multiple-choice question as lm-eval renders it."""

    index: int
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class TextDoc:
    """One document of a rolling-perplexity task. ``original`` is what words/bytes are counted on
    (lm-eval counts them on the page *before* detokenisation); ``text`` is what the model scores."""

    index: int
    text: str
    original: str


class TaskDataError(DataError):
    """A benchmark file or row that cannot be turned into a document."""


@dataclass(frozen=True)
class Row:
    """A benchmark row and where it came from (``file:line``, ``file: row N`` or the hub split, 1-based)."""

    where: str
    data: Any


# --------------------------------------------------------------------------------------------- hellaswag
def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: brackets are WikiHow artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


# Builders turn one row into a document; their errors say what is wrong with the row, and load_docs
# prefixes the task and the row's file and line.
def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row or row[name] is None:
        raise TaskDataError(f"missing field {name!r} (has {sorted(row)})")
    return row[name]


def _choice_fields(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    choices = _field(row, "choices")
    if not isinstance(choices, Mapping) or "text" not in choices or "label" not in choices:
        raise TaskDataError("field 'choices' must have 'text' and 'label' lists")
    texts, labels = list(choices["text"]), list(choices["label"])
    if len(texts) != len(labels) or not texts:
        raise TaskDataError(
            f"choices.text ({len(texts)}) and choices.label ({len(labels)}) must be non-empty and of equal length"
        )
    return [str(t) for t in texts], [str(lb) for lb in labels]


def _gold_from_key(labels: list[str], key: str) -> int:
    if key not in labels:
        raise TaskDataError(f"answerKey {key!r} is not one of the labels {labels}")
    return labels.index(key)


def hellaswag_doc(index: int, row: Mapping[str, Any]) -> ChoiceDoc:
    ctx = _field(row, "ctx_a") + " " + _field(row, "ctx_b").capitalize()
    query = hellaswag_preprocess(_field(row, "activity_label") + ": " + ctx)
    endings = _field(row, "endings")
    if not isinstance(endings, Sequence) or isinstance(endings, str) or not endings:
        raise TaskDataError("field 'endings' must be a non-empty list")
    choices = tuple(hellaswag_preprocess(str(e)) for e in endings)
    label = _field(row, "label")
    try:
        gold = int(label)
    except (TypeError, ValueError):
        raise TaskDataError(f"label {label!r} is not an integer") from None
    if not 0 <= gold < len(choices):
        raise TaskDataError(f"label {gold} is outside the {len(choices)} endings")
    return ChoiceDoc(index, query, choices, gold)


def arc_doc(index: int, row: Mapping[str, Any]) -> ChoiceDoc:
    question = _field(row, "question")
    texts, labels = _choice_fields(row)
    gold = _gold_from_key(labels, str(_field(row, "answerKey")))
    return ChoiceDoc(index, f"Question: {question}\nAnswer:", tuple(texts), gold)


def openbookqa_doc(index: int, row: Mapping[str, Any]) -> ChoiceDoc:
    stem = _field(row, "question_stem")
    texts, labels = _choice_fields(row)
    gold = _gold_from_key(labels, str(_field(row, "answerKey")).lstrip())
    return ChoiceDoc(index, str(stem), tuple(texts), gold)


# --------------------------------------------------------------------------------------------- wikitext
def wikitext_detokenize(page: str) -> str:
    """lm-eval's ``wikitext_detokenizer`` (undoes WikiText's ' @-@ ', ' , ' ... tokenisation)."""
    s = page
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


def wikitext_doc(index: int, row: Mapping[str, Any]) -> TextDoc:
    page = _field(row, "page")
    if not isinstance(page, str):
        raise TaskDataError("field 'page' must be a string")
    return TextDoc(index, wikitext_detokenize(page), page)


DOC_BUILDERS: dict[str, Callable[[int, Mapping[str, Any]], ChoiceDoc | TextDoc]] = {
    "hellaswag": hellaswag_doc,
    "arc": arc_doc,
    "openbookqa": openbookqa_doc,
    "wikitext": wikitext_doc,
}


# --------------------------------------------------------------------------------------------- loading
def read_local_rows(task: str, data_files: str | Sequence[str]) -> list[Row]:
    """Rows from local json / jsonl / parquet files (HF schema), or raw WikiText ``.txt`` / ``.raw`` (one row
    per page, as EleutherAI/wikitext_document_level builds them)."""
    files = [data_files] if isinstance(data_files, str | Path) else list(data_files)
    if not files:
        raise TaskDataError(f"task {task!r}: data_files is empty")
    rows: list[Row] = []
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise TaskDataError(f"task {task!r}: data file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(Row(f"{path}:{n}", json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise TaskDataError(f"task {task!r}: {path}:{n}: invalid JSON ({err.msg})") from None
        elif suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise TaskDataError(f"task {task!r}: {path}:{err.lineno}: invalid JSON ({err.msg})") from None
            if isinstance(data, Mapping) and "data" in data:
                data = data["data"]
            if not isinstance(data, list):
                raise TaskDataError(f"task {task!r}: {path}: expected a JSON list of rows")
            rows.extend(Row(f"{path}: row {i}", r) for i, r in enumerate(data, 1))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq  # lazy: only for parquet task files

            rows.extend(Row(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1))
        elif suffix in (".txt", ".raw"):
            lines = path.read_text(encoding="utf-8").split("\n")
            rows.extend(Row(f"{path}:{first + 1}", {"page": "\n".join(page)})
                        for first, page in wikitext_page_lines(lines))
        else:
            raise TaskDataError(
                f"task {task!r}: data file {str(path)!r}: unsupported format {suffix!r} "
                "(use .jsonl, .json, .parquet, or raw WikiText .txt)"
            )
    return rows


def read_hub_rows(task: str, path: str, name: str | None, split: str, limit: int | None) -> list[Row]:
    import datasets  # lazy: `datasets` is slow to import and only needed for hub task data

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as err:  # noqa: BLE001 - re-raised with the task named
        raise TaskDataError(
            f"task {task!r}: cannot load hub dataset {path!r} (name={name!r}, split={split!r}): {err}. "
            "Offline? set data_files to a local copy in the same schema"
        ) from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    where = f"{path}" + (f" ({name})" if name else "") + f" [{split}]"
    return [Row(f"{where} row {i}", dict(r)) for i, r in enumerate(ds, 1)]


def load_docs(task_cfg: Mapping[str, Any], limit: int | None = None) -> list[ChoiceDoc] | list[TextDoc]:
    """Documents of one task config (see conf/eval/task/*.yaml); ``limit`` keeps the first N rows, as
    lm-eval's ``--limit`` does."""
    name = task_cfg.get("name") or "?"
    fmt = task_cfg.get("format")
    if fmt not in DOC_BUILDERS:
        raise TaskDataError(f"task {name!r}: unknown format {fmt!r}; valid: {sorted(DOC_BUILDERS)}")
    if limit is None:
        limit = task_cfg.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise TaskDataError(f"task {name!r}: limit must be a positive integer or null, got {limit!r}")
    if task_cfg.get("data_files"):
        rows = read_local_rows(name, task_cfg["data_files"])
        rows = rows[:limit] if limit is not None else rows
    elif task_cfg.get("dataset_path"):
        rows = read_hub_rows(
            name, task_cfg["dataset_path"], task_cfg.get("dataset_name"), task_cfg["split"], limit
        )
    else:
        raise TaskDataError(f"task {name!r}: set dataset_path (hub) or data_files (local)")
    if not rows:
        raise TaskDataError(f"task {name!r}: no rows")
    build = DOC_BUILDERS[fmt]
    docs = []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row.data, Mapping):
                raise TaskDataError(f"expected an object, got {type(row.data).__name__}")
            docs.append(build(i, row.data))
        except TaskDataError as err:
            raise TaskDataError(f"task {name!r}: {row.where}: {err}") from None
    return docs
