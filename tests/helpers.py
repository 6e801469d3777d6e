"""Helpers for tests: compose shipped configs like the entry points do; find development data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def compose(config_name: str, overrides: list[str], output_dir: Path | None = None):
    """Compose a shipped config exactly as the entry point would (argv normalisation included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from kiwi.cli import CONF_DIR, normalize_overrides

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose(config_name, overrides=normalize_overrides(overrides), return_hydra_config=True)
    from omegaconf import OmegaConf

    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def requires_shared(*parts: str) -> Path:
    """Path under ../shared, or skip: CI and development have it, a user's fresh machine does not."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared holds development data, not shipped with kiwi)")
    return path
