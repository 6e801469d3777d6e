"""Shared fixtures: Hydra composition of the shipped configs, the committed tiny tokenizer, and a per-session
build cache.

Built artefacts (offline corpus, tokenizer, tiny base) go to one temporary cache per test session, shared by
the pytest-xdist workers (kiwi publishes each artefact atomically, so two workers building the same one at
once is safe), so tests never read or write the user's ~/.cache/kiwi and never touch the network.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import compose, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("WANDB_MODE", None)

# Under pytest-xdist each worker (and the train.py processes it starts) gets its share of the cores: the tiny
# models are latency-bound, and oversubscribed OpenMP threads spin-wait (many times slower, not faster).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Tests that use these session fixtures run on one xdist worker (--dist loadgroup), so each is built once.
_ONE_WORKER_FIXTURES = {"tiny_base_dir": "study", "tiny_sweep": "study"}


@pytest.fixture(scope="session")
def kiwi_cache(tmp_path_factory) -> Path:
    if os.environ.get("KIWI_TEST_CACHE"):
        cache = Path(os.environ["KIWI_TEST_CACHE"])
    elif "PYTEST_XDIST_WORKER" in os.environ:  # the session's base temp, shared by its workers
        cache = tmp_path_factory.getbasetemp().parent / "kiwi-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("kiwi-cache")
    os.environ["KIWI_CACHE"] = str(cache)
    if "PYTEST_XDIST_WORKER" in os.environ:
        _build_quickstart_base_once(cache)
    return cache


def _build_quickstart_base_once(cache: Path) -> None:
    """Build the quickstart's tiny base (offline corpus, tokenizer, model), which most end-to-end tests use,
    while holding a lock: xdist workers would otherwise each build it at the same time (same result, twice
    the CPU). Without xdist the first test that needs it builds it, as before."""
    from kiwi.model.build import resolve_base

    with (cache / ".quickstart-base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        resolve_base(compose("train", ["experiment=quickstart"]).model, cache)


@pytest.fixture(scope="session")
def tokenizer():
    """The committed tiny tokenizer (tests/assets/tiny_tokenizer): a real Qwen2Tokenizer, trained by no test."""
    return tiny_tokenizer()


@pytest.fixture
def compose_cfg(tmp_path, kiwi_cache):
    def _compose(config_name: str = "train", overrides: list[str] | None = None):
        return compose(config_name, list(overrides or []), output_dir=tmp_path / "out")

    return _compose


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    if _WORKERS > 1:  # slow end-to-end tests first, so short ones fill the gaps instead of a long one ending last
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        groups = {_ONE_WORKER_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in _ONE_WORKER_FIXTURES}
        for group in groups:
            item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
