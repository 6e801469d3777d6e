"""Config helpers shared by the entry points: argv normalisation, resolvers, early validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

ROOT_DIR = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT_DIR / "conf"

# Nested config groups that users address with dots (`model.layer_selection=solar`). Hydra only accepts
# the group path (`model/layer_selection=solar`) for a group choice; with dots it would silently replace
# the whole strategy node by a string, so the entry points rewrite this one form before Hydra parses.
NESTED_GROUPS = ("model/layer_selection",)


def normalize_overrides(argv: Sequence[str]) -> list[str]:
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        for group in NESTED_GROUPS:
            if sep and key == group.replace("/", ".") and not value.startswith(("{", "[")):
                arg = f"{group}={value}"
        out.append(arg)
    return out


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("kiwi_root"):
        OmegaConf.register_new_resolver("kiwi_root", lambda: str(ROOT_DIR))


_register_resolvers()

