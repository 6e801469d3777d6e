"""Checks of the model options and files that need no weights and no torch: the layer selection against the
base's depth, and a training checkpoint that opens.

train.py and evaluate.py run them before any model, data or logger starts, so a bad depth or a corrupt
``.ckpt`` is one line within a second or two instead of a traceback after the model build.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiwi.errors import ConfigError
from kiwi.upscale.layer_selection import plan_from_config

# torch.save's format before its zip archives (torch < 1.6, or _use_new_zipfile_serialization=False).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def layer_plan(layer_selection: Mapping | None, n_source: int, scores=None, model_config: Any = None):
    """The plan of ``model.layer_selection`` for a base of ``n_source`` layers; a bad option is a
    ``ConfigError`` naming it (``model.layer_selection (strategy='interleave'): option 'n_target': ...``)."""
    ls = dict(layer_selection or {"strategy": "none"})
    try:
        return plan_from_config(ls, n_source, scores=scores, model_config=model_config)
    except ConfigError:
        raise
    except ValueError as err:
        msg = " ".join(str(err).split())
        raise ConfigError(f"model.{msg}" if msg.startswith("layer_selection") else
                          f"model.layer_selection: {msg}") from err


def base_layer_count(model_cfg: Mapping) -> int | None:
    """The base model's depth from its config alone: ``model.tiny``, a local HF directory's config.json, or
    a hub id's config.json in the local HF cache; None when only the hub could tell."""
    tiny = model_cfg.get("tiny")
    if tiny:
        return int(tiny.get("num_hidden_layers", 0)) or None  # Qwen2Config's default is not a tiny base
    base = model_cfg.get("base")
    if not base:
        return None
    config_file = Path(str(base)).expanduser() / "config.json"
    if not config_file.is_file():
        from huggingface_hub import try_to_load_from_cache  # light: no torch

        cached = try_to_load_from_cache(str(base), "config.json", revision=model_cfg.get("revision"))
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    try:
        n = json.loads(config_file.read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError):
        return None  # build_model reports an unreadable config with its own message
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def check_layer_selection(model_cfg: Mapping) -> None:
    """``model.layer_selection`` against the base's depth (e.g. ``n_target`` below it), before any weights.

    Skipped where the depth needs the hub, or ``param_budget`` needs the base's full config: build_model
    checks those from the config it loads, still before the weights."""
    n_source = base_layer_count(model_cfg)
    ls = dict(model_cfg.get("layer_selection") or {"strategy": "none"})
    if n_source is None or ls.get("param_budget") is not None:
        return
    scores = [0.0] * n_source if ls.get("strategy") == "importance" else None  # measured later
    layer_plan(ls, n_source, scores=scores)


def check_checkpoint(path: str | Path, option: str) -> None:
    """A training checkpoint that exists and opens: a torch zip archive whose directory and pickle read back
    (a truncated or overwritten file fails here, in milliseconds), or a DeepSpeed checkpoint directory."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ConfigError(f"{option}: {path} does not exist")
    if p.is_dir():
        if (p / "latest").exists() or any(p.glob("*/mp_rank_*_model_states.pt")):
            return
        raise ConfigError(f"{option}: {path} is a directory, not a .ckpt file or a DeepSpeed checkpoint directory")
    try:
        with p.open("rb") as fh:
            if fh.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC:
                return
        with zipfile.ZipFile(p) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                raise zipfile.BadZipFile("no data.pkl inside")
            archive.read(pickles[0])  # checks its CRC
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
        raise ConfigError(f"{option}: {path} is not a readable checkpoint ({err}): the file is truncated or "
                          "corrupt; use another checkpoint (e.g. an earlier checkpoints/step*.ckpt)") from err
