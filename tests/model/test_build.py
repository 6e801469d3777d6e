"""build_model checks every layer_selection option before it reads any weights, importance included."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

from kiwi.model.build import build_model
from tests.helpers import TINY_QWEN2 as TINY


@pytest.mark.parametrize(("option", "value"), [("metric", "bogus"), ("direction", "up"), ("bogus_option", 1)])
def test_importance_options_fail_before_the_weights_are_read(tmp_path, option, value):
    """The base directory holds only config.json: an option error must come first, not a missing-weights error
    (before, importance options were checked only after loading the model and measuring every layer)."""
    Qwen2Config(**TINY).save_pretrained(tmp_path / "base")
    model_cfg = {"base": str(tmp_path / "base"),
                 "layer_selection": {"strategy": "importance", "n_target": 6, option: value}}
    with pytest.raises(ValueError, match=f"option '{option}'"):
        build_model(model_cfg, tmp_path / "cache")
