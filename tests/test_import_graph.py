"""The import graph flows one way: kiwi.upscale <- kiwi.data <- kiwi.model <- kiwi.train / kiwi.eval <- kiwi.study,
with the top-level modules (kiwi.errors, kiwi.atomic, kiwi.cli, ...) at the bottom. Every import is read from
the source (ast), function-local ones included, so a hidden arrow fails here too."""

from __future__ import annotations

import ast
from pathlib import Path

KIWI = Path(__file__).resolve().parent.parent / "kiwi"

# Lower rank = lower layer; a module may import only modules of its own or a lower rank.
RANKS = {"upscale": 1, "data": 2, "model": 3, "train": 4, "eval": 4, "study": 5}
BOTTOM = 0  # kiwi/*.py: neutral helpers every layer may use


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str, root: Path) -> tuple[str, int]:
    """(layer name, rank) of a ``kiwi.*`` module name."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANKS:
        return parts[1], RANKS[parts[1]]
    if len(parts) > 1 and (root / parts[1]).is_dir():
        raise AssertionError(f"kiwi.{parts[1]} is a package missing from RANKS in {__file__}")
    return "kiwi", BOTTOM


def kiwi_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported kiwi module) for every import in ``path``, at any depth; relative ones resolved."""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "kiwi"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.split(".")[0] == "kiwi":
                found.append((node.lineno, name))
    return found


def upward_imports(root: Path = KIWI) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        importer = _module_name(path, root)
        src_layer, src_rank = _layer(importer, root)
        for line, target in kiwi_imports(path, root):
            dst_layer, dst_rank = _layer(target, root)
            if dst_rank > src_rank or (src_layer == "eval" and dst_layer == "train") or (
                    src_layer == "train" and dst_layer == "eval"):
                bad.append(f"{path.relative_to(root.parent)}:{line}: {importer} imports {target}")
    return bad


def test_no_import_runs_back_up():
    assert upward_imports() == []


def test_the_checker_sees_upward_hidden_and_sideways_imports(tmp_path):
    """The test above can fail: a function-local upward import, a relative one and eval -> train are caught."""
    root = tmp_path / "kiwi"
    for pkg in ("model", "train", "eval", "upscale", "data", "study"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "model" / "build.py").write_text("def f():\n    from kiwi.train.checkpoint import load\n")
    (root / "data" / "packing.py").write_text("from ..model import loss\n")
    (root / "eval" / "run.py").write_text("import kiwi.train.run\n")
    (root / "errors.py").write_text("from kiwi.upscale import plan\n")
    (root / "train" / "run.py").write_text("from kiwi.model.build import build_model\nfrom kiwi import errors\n")
    assert upward_imports(root) == [
        "kiwi/data/packing.py:1: kiwi.data.packing imports kiwi.model",
        "kiwi/errors.py:1: kiwi.errors imports kiwi.upscale",
        "kiwi/eval/run.py:1: kiwi.eval.run imports kiwi.train.run",
        "kiwi/model/build.py:2: kiwi.model.build imports kiwi.train.checkpoint",
    ]
