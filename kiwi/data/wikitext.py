"""WikiText articles from a raw file, grouped exactly as EleutherAI/wikitext_document_level builds its pages.

That dataset (what lm-eval's ``wikitext`` task scores) splits the file on ``"\\n"``, starts a page at each
top-level heading `` = Title = `` (section headings `` = = Sub = = `` stay inside the page), drops a page
that is only whitespace, and joins a page's lines with ``"\\n"``. Training (``sample_by: wikitext``) and
evaluation (a raw ``.txt`` as the wikitext task's data) both group lines with this one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Line = TypeVar("Line", str, bytes)


def is_wikitext_title(line: str) -> bool:
    """The dataset script's test for a top-level heading (section markers collapsed first, then stripped)."""
    core = line.replace("= = =", "===").replace("= =", "==").strip()
    return core.startswith("= ") and core.endswith(" =")


def wikitext_page_lines(
    lines: Iterable[Line], as_text: Callable[[Line], str] = str
) -> Iterator[tuple[int, list[Line]]]:
    """``(index of its first line, its lines)`` for every page that is not only whitespace. ``as_text``
    turns a line into the string the heading and blank tests see (for raw bytes: strip the newline, decode)."""
    page: list[Line] = []
    start = 0
    for i, line in enumerate(lines):
        text = as_text(line)
        if is_wikitext_title(text):
            if any(as_text(x).strip() for x in page):
                yield start, page
            page, start = [], i
        page.append(line)
    if any(as_text(x).strip() for x in page):
        yield start, page
