"""The README is the front door and the depth lives in docs/: every relative link in them resolves, so a
reader never follows a link into nothing (the README was cut into docs/ pages)."""

from __future__ import annotations

import re

import pytest

from kiwi.cli import ROOT_DIR

PAGES = [ROOT_DIR / "README.md", *sorted((ROOT_DIR / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT_DIR)) for p in PAGES])
def test_every_relative_link_resolves(page):
    targets = [t for t in LINK.findall(page.read_text(encoding="utf-8")) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT_DIR)} links to missing files: {missing}"


def test_readme_is_a_short_front_door():
    assert len((ROOT_DIR / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_every_test_the_reliability_table_names_exists():
    """A guarantee is only as good as its test: each `tests/...py` (and `::name`) in the table must exist."""
    text = (ROOT_DIR / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = []
    for cell in re.findall(r"\|[^|\n]*`tests/[^|\n]*\|\s*$", text, flags=re.M):
        current = None
        for ref in re.findall(r"`([^`]+)`", cell):
            path, _, name = ref.partition("::")
            if path.startswith("tests/"):
                current = ROOT_DIR / path.split(" ")[0]
            gone = current is None or not current.exists()
            if gone or (name and f"def {name.split('[')[0]}(" not in current.read_text(encoding="utf-8")):
                missing.append(ref)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
