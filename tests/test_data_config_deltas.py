"""conf/data/*.yaml hold only deltas on conf/data/_base_.yaml, and still compose to exactly the data node
they composed to before the base config existed (tests/assets/data_nodes_before_base.json, captured on main
with every data option under train and eval, and every experiment that picks or edits data)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from kiwi.cli import CONF_DIR
from tests.helpers import ROOT, compose

EXPECTED = json.loads((ROOT / "tests/assets/data_nodes_before_base.json").read_text(encoding="utf-8"))
# Options added to _base_.yaml after the capture, with their defaults (every data node gets them).
ADDED_SINCE = {"document_mask": True, "long_docs": None, "partitions": 64, "reorder_on_resume": False}
DATA_OPTIONS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml") if not p.stem.startswith("_"))


def _overrides(case: str) -> tuple[str, list[str]]:
    primary, _, rest = case.partition(":")
    return primary, rest.split(",")


def test_every_data_option_is_captured():
    """A new data config must be added to the captured cases, or this comparison silently covers less."""
    assert {c for c in EXPECTED if c.startswith("train:data=")} == {f"train:data={o}" for o in DATA_OPTIONS}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_data_node_is_unchanged(case, tmp_path):
    primary, overrides = _overrides(case)
    cfg = compose(primary, overrides, output_dir=tmp_path)
    own = {"partitions": 32} if "data=wikitext_shared" in case else {}  # its 54 training pages
    assert OmegaConf.to_container(cfg.data, resolve=False) == {**EXPECTED[case], **ADDED_SINCE, **own}


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_data_option_restates_no_base_value(option):
    base = OmegaConf.load(CONF_DIR / "data/_base_.yaml")
    own = OmegaConf.load(CONF_DIR / f"data/{option}.yaml")
    assert list(own.defaults) == ["_base_", "_self_"]
    restated = [k for k in own if k not in ("defaults", "source") and k in base and own[k] == base[k]]
    assert not restated, f"conf/data/{option}.yaml restates {restated} from _base_.yaml"
