"""evaluate.py's checks of the options that need no weights, run before torch or any model loads: the model's
layer selection against the base's depth, and every ``checkpoints`` entry (well-formed; a ``.ckpt`` file
that exists and opens, with train.py's resume check)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kiwi.errors import ConfigError
from kiwi.model.preflight import check_checkpoint, check_layer_selection


def checkpoint_entry(i: int, entry: Any) -> tuple[str | None, str]:
    """(explicit name or None, path) of one ``checkpoints`` entry: a path or ``{name: ..., path: ...}``."""
    if not isinstance(entry, Mapping):
        return None, str(entry)
    entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
    unknown = set(entry) - {"name", "path"}
    if not entry.get("path") or unknown:
        raise ConfigError(f"checkpoints[{i}]: expected a path or {{name: ..., path: ...}}, got {entry}")
    return (str(entry["name"]) if entry.get("name") else None), str(entry["path"])


def check_eval_config(cfg: DictConfig) -> None:
    """Raise the ``ConfigError`` of the first bad option; hub ids and HF directories are checked on load."""
    model = cfg.get("model")
    if model:
        check_layer_selection(OmegaConf.to_container(model, resolve=True))
    for i, entry in enumerate(cfg.get("checkpoints") or []):
        _, path = checkpoint_entry(i, entry)
        p = Path(path).expanduser()
        if p.is_file() or p.suffix == ".ckpt":
            check_checkpoint(path, f"checkpoints[{i}]")
