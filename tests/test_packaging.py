"""kiwi is an installable package: pyproject.toml pins the same versions as requirements.txt (the README's
install command), and no file edits sys.path to find it."""

from __future__ import annotations

import re
import tomllib

from tests.helpers import ROOT


def _requirement_pins() -> list[str]:
    pins = []
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pins.append(line)
    return pins


def test_pyproject_pins_match_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.]*", pin) for pin in declared), declared
    assert sorted(declared) == sorted(_requirement_pins())


def test_requirements_install_kiwi_itself():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "-e ." in lines


def test_no_file_patches_sys_path():
    patch = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=")
    offenders = [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if not any(part.startswith(".") or part in {"outputs", "logs"} for part in path.relative_to(ROOT).parts)
        and path != ROOT / "tests/test_packaging.py"
        and patch.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"edit sys.path (install kiwi with `pip install -e .` instead): {offenders}"
