"""Publish a directory built under a temporary name, so no reader ever sees half of it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def temp_sibling(out: Path) -> Path:
    """A fresh build location next to ``out``, one per process (ranks may build the same thing at once)."""
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_dir(tmp: Path, out: Path, *, replace: bool = False) -> Path:
    """Rename ``tmp`` to ``out``. ``replace`` swaps out an older ``out``: it is moved aside, the new one is
    renamed in, and only then is the old one deleted, so at every instant ``out`` (or its ``.old`` copy) is
    complete. Without ``replace``, if another process published ``out`` first, its copy is kept."""
    old = out.with_name(f"{out.name}.old{os.getpid()}")
    if replace and out.exists():
        remove(old)
        out.replace(old)
    try:
        tmp.replace(out)
    except OSError:
        if replace and old.exists() and not out.exists():
            old.replace(out)  # put the previous one back
        if replace or not out.is_dir() or not any(out.iterdir()):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if replace:
        remove(old)
    return out


def remove(path: Path) -> None:
    """Delete a file or a directory tree, if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the user's umask: some writers (safetensors, mkdtemp) create
    files 0600 and directories 0700."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_dir_atomically(write: Callable[[Path], object], out: Path) -> Path:
    """Build a directory with ``write(tmp)`` under a temporary sibling name, then publish it over ``out``."""
    tmp = temp_sibling(out)
    write(tmp)
    return publish_dir(tmp, out, replace=True)
