"""An English corpus that exists on every machine that installed kiwi's requirements.

The quickstart and the small-scale study must run with no network and without committing third-party
text, so the corpus is assembled at run time from the documentation strings of the Python standard
library and of installed packages. Sources are read with ``ast`` (nothing is imported or executed)
in sorted path order, so the same interpreter and pins give the same corpus, document for document.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import re
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

# Packages pinned in requirements.txt whose docstrings are mostly prose. Their text is fixed by the pins.
DEFAULT_PACKAGES: tuple[str, ...] = ("stdlib", "torch", "transformers", "datasets", "lightning", "numpy")

_SKIP_DIRS = {"test", "tests", "testing", "idlelib", "lib2to3", "site-packages", "__pycache__", "_vendor"}
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)")
_MIN_CHARS = 200


def package_roots(packages: Sequence[str]) -> list[Path]:
    """Where each named package lives, without importing it."""
    import importlib.util

    roots: list[Path] = []
    for name in packages:
        if name == "stdlib":
            roots.append(Path(sysconfig.get_paths()["stdlib"]))
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"data.corpus.packages: package {name!r} is not installed")
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    return roots


def _clean(doc: str) -> str:
    lines = [ln for ln in inspect.cleandoc(doc).splitlines() if not _DOCTEST.match(ln)]
    return "\n".join(lines).strip()


def module_document(path: Path) -> str | None:
    """All docstrings of one source file, in a fixed (breadth-first) order, as one document."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc and len(doc) >= 40:
                cleaned = _clean(doc)
                if cleaned:
                    parts.append(cleaned)
    text = "\n\n".join(parts)
    return text if len(text) >= _MIN_CHARS else None


def iter_source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in _SKIP_DIRS or part.startswith("_test") for part in rel[:-1]):
            continue
        yield path


def iter_documents(packages: Sequence[str] = DEFAULT_PACKAGES) -> Iterator[dict]:
    """Yield ``{"id", "text"}`` records, one per source file with enough prose."""
    for name, root in zip(packages, package_roots(packages), strict=True):
        for path in iter_source_files(root):
            text = module_document(path)
            if text is not None:
                yield {"id": f"{name}:{path.relative_to(root).as_posix()}", "text": text}


def corpus_fingerprint(packages: Sequence[str]) -> str:
    """Changes when the interpreter or any package version changes, so caches are rebuilt."""
    import importlib.metadata
    import sys

    parts = [sys.version]
    for name in packages:
        if name != "stdlib":
            try:
                parts.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                parts.append(f"{name}==?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def build_corpus_file(out_dir: str | Path, packages: Sequence[str] = DEFAULT_PACKAGES) -> Path:
    """Write the corpus once as JSON lines (``id``, ``text``) and reuse it afterwards."""
    out_dir = Path(out_dir).expanduser()
    path = out_dir / f"docstrings-{corpus_fingerprint(packages)}-{'-'.join(packages)}.jsonl"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # one per process: ranks may build at once
    with tmp.open("w", encoding="utf-8") as fh:
        for record in iter_documents(packages):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
