"""Every ```python block of README.md runs as written (as litgpt's test_readme does for its README)."""

from __future__ import annotations

import re

import pytest

from kiwi.cli import ROOT_DIR

README = ROOT_DIR / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, monkeypatch):
    monkeypatch.chdir(ROOT_DIR)  # the README says: run it from the repository root
    exec(compile(code, str(README), "exec"), {"__name__": "__main__"})  # noqa: S102 - the README's own code
