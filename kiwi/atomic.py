"""Publish a directory built under a temporary name, so no reader ever sees half of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temp_sibling(out: Path) -> Path:
    """A fresh build location next to ``out``, one per process (ranks may build the same thing at once)."""
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_dir(tmp: Path, out: Path, *, replace: bool = False) -> Path:
    """Rename ``tmp`` to ``out``. ``replace`` swaps out an older ``out``; otherwise, if another process
    published ``out`` first, its copy is kept and ours is dropped."""
    if replace and out.exists():
        shutil.rmtree(out)
    try:
        tmp.replace(out)
    except OSError:
        if replace or not out.is_dir() or not any(out.iterdir()):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out
