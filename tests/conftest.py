"""Shared fixtures: Hydra composition of the shipped configs, and a per-session build cache.

Built artefacts (offline corpus, tokenizer, tiny base) go to one temporary cache per test session, so
tests never read or write the user's ~/.cache/kiwi and never touch the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import compose

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("WANDB_MODE", None)


@pytest.fixture(scope="session")
def kiwi_cache(tmp_path_factory) -> Path:
    cache = Path(os.environ.get("KIWI_TEST_CACHE") or tmp_path_factory.mktemp("kiwi-cache"))
    os.environ["KIWI_CACHE"] = str(cache)
    return cache


@pytest.fixture
def compose_cfg(tmp_path, kiwi_cache):
    def _compose(config_name: str = "train", overrides: list[str] | None = None):
        return compose(config_name, list(overrides or []), output_dir=tmp_path / "out")

    return _compose


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
