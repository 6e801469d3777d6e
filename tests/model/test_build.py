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


def _tiny_base(tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from tests.helpers import TINY_TOKENIZER_DIR

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**TINY)).save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR).save_pretrained(tmp_path / "base")
    return {"base": str(tmp_path / "base"), "layer_selection": {"strategy": "stack", "n_target": 6}}


def test_rope_theta_override_reaches_the_built_model_and_its_rotary_tables(tmp_path):
    """model.rope_theta=X: the built (upscaled) model's config has X and its rotary frequencies are
    computed from X; null keeps the base's own value."""
    import torch

    cfg = _tiny_base(tmp_path)
    kept = build_model({**cfg, "rope_theta": None}, tmp_path / "cache").model
    assert kept.config.rope_parameters["rope_theta"] == TINY["rope_theta"] == 10000.0
    built = build_model({**cfg, "rope_theta": 1_000_000}, tmp_path / "cache").model
    assert built.config.rope_parameters["rope_theta"] == 1_000_000.0 and built.config.num_hidden_layers == 6
    dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    expect = 1.0 / 1_000_000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    torch.testing.assert_close(built.model.rotary_emb.inv_freq, expect)
    assert not torch.allclose(kept.model.rotary_emb.inv_freq, expect)
    # the weights are the base's either way (only the position encoding changed)
    torch.testing.assert_close(built.model.embed_tokens.weight, kept.model.embed_tokens.weight)


@pytest.mark.parametrize("value", [0, -5.0, "big", True])
def test_bad_rope_theta_is_one_clear_error(tmp_path, value):
    with pytest.raises(ValueError, match="model.rope_theta must be a positive number"):
        build_model({**_tiny_base(tmp_path), "rope_theta": value}, tmp_path / "cache")
