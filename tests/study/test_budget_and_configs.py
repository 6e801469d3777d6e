"""Equal-FLOPs budgets, the study configs as composed by train.py, and the early prerequisite check."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

from kiwi.cli import CONF_DIR
from kiwi.errors import ConfigError
from kiwi.study.jobs import variant_label
from kiwi.train.budget import flops_matched_tokens, tokens_per_param_budget, training_flops
from kiwi.train.flops import flops_per_token
from tests.helpers import compose

VARIANTS = {  # conf/study/<name>.yaml -> (strategy, identity_init, trainable)
    "interleave": ("interleave", False, "all"), "interleave_id": ("interleave", True, "all"),
    "solar": ("solar", False, "all"), "solar_id": ("solar", True, "all"),
    "stack": ("stack", False, "all"), "stack_id": ("stack", True, "all"),
    "llama_pro": ("llama_pro", True, "new"), "llama_pro_all": ("llama_pro", True, "all"),
    "llama_pro_noid": ("llama_pro", False, "all"),
    "importance": ("importance", False, "all"), "importance_id": ("importance", True, "all"),
    "control_tokens": ("none", False, "all"), "control_flops": ("none", False, "all"),
    "interleave_id_2phase": ("interleave", True, "all"), "interleave_id_lrcopy": ("interleave", True, "all"),
    "interleave_id_distill": ("interleave", True, "all"), "interleave_id_grow2": ("interleave", True, "all"),
    "interleave_id_norewarm": ("interleave", True, "all"),
    "interleave_id_lrcopy_distill": ("interleave", True, "all"),
}


def _config(layers: int) -> Qwen2Config:
    return Qwen2Config(vocab_size=8192, hidden_size=128, intermediate_size=384, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2)


def test_flops_matched_tokens_scale_by_flops_per_token():
    base = _config(5)
    deep = _config(8)
    ratio = flops_per_token(deep, [256]) / flops_per_token(base, [256])
    assert flops_matched_tokens(49152, base, 8, 256) == round(49152 * ratio)
    assert 1.2 < ratio < 1.6  # deeper, but the shared lm_head keeps it below 8/5
    assert flops_matched_tokens(1000, base, 5, 256) == 1000
    assert base.num_hidden_layers == 5  # the caller's config is not modified


@pytest.mark.parametrize("bad", [0, -3, None])
def test_flops_matched_tokens_rejects_bad_layer_counts(bad):
    with pytest.raises(ValueError, match="budget.match_flops_layers"):
        flops_matched_tokens(1000, _config(5), bad, 256)


def test_training_flops_is_tokens_times_flops_per_token():
    cfg = _config(8)
    assert training_flops(cfg, 4096, 256) == pytest.approx(4096 * flops_per_token(cfg, [256]))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_study_variant_composes_with_tiny_dus(variant, kiwi_cache):
    cfg = compose("train", ["experiment=tiny_dus", f"+study={variant}"])
    strategy, identity, trainable = VARIANTS[variant]
    ls = cfg.model.layer_selection
    assert (ls.strategy, bool(ls.identity_init), ls.trainable) == (strategy, identity, trainable)
    assert ls.n_target == (None if strategy == "none" else 8)
    assert cfg.model.base == cfg.study.base_dir and cfg.model.tiny is None
    assert "variant" not in cfg.study and cfg.logger.wandb.group == "tiny_dus"
    assert cfg.budget.get("match_flops_layers") == (8 if variant == "control_flops" else None)
    # its rows in the study's tables carry the name the user typed, derived in one place
    assert variant_label(cfg) == variant


def test_every_study_file_is_covered():
    assert sorted(VARIANTS) == sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))


def test_tiny_dus_accepts_layer_selection_style_overrides(kiwi_cache):
    cfg = compose("train", ["experiment=tiny_dus", "model.layer_selection=solar"])
    assert cfg.model.layer_selection.strategy == "solar" and cfg.model.layer_selection.n_target == 8
    assert compose("train", ["experiment=tiny_dus"]).model.layer_selection.strategy == "interleave"


def test_base_and_dus_share_the_held_out_set(kiwi_cache):
    base = compose("train", ["experiment=tiny_base"])
    dus = compose("train", ["experiment=tiny_dus", "+study=interleave"])
    for key in ("source", "seq_len", "batch_size", "val_documents", "text_field"):
        assert base.data[key] == dus.data[key], key
    assert base.trainer.limit_val_batches == dus.trainer.limit_val_batches
    assert base.export_dir == dus.model.base
    assert base.model.layer_selection.strategy == "none" and base.model.tiny.num_hidden_layers == 5


def test_tiny_base_on_shared_wikitext_composes(kiwi_cache):
    cfg = compose("train", ["experiment=tiny_base", "data=wikitext_shared"])
    assert cfg.data.source.files[0].endswith("wikitext-2-raw/valid.txt")
    assert cfg.data.seq_len == 256 and cfg.data.val_documents == 12


def test_tiny_dus_before_tiny_base_fails_with_a_clear_error(tmp_path, kiwi_cache):
    from kiwi.train.run import run

    cfg = compose("train", ["experiment=tiny_dus", "+study=interleave", f"study.base_dir={tmp_path / 'nope'}"],
                  output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"prerequisites\[0\].*nope/config.json.*experiment=tiny_base"):
        run(cfg)


def test_tokens_per_param_budget_counts_every_parameter_once():
    from tests.helpers import tiny_qwen2

    model = tiny_qwen2(num_hidden_layers=2)  # tied embeddings: one tensor
    n = sum(p.numel() for p in model.parameters())
    assert tokens_per_param_budget(2, model) == 2 * n and tokens_per_param_budget(0.5, model) == round(n / 2)
    for bad in (0, -1, None):
        with pytest.raises(ValueError, match="budget.tokens_per_param"):
            tokens_per_param_budget(bad, model)


@pytest.mark.parametrize("profile", ["study_cpu", "study_gpu", "study_cpu_v3", "study_gpu_v3"])
def test_study_steps_share_sizes_data_and_held_out_set(profile, kiwi_cache):
    base = compose("train", [f"experiment={profile}_base", "study.base_tokens_per_param=32"])
    dus = compose("train", [f"experiment={profile}", "study.base_tokens_per_param=32", "+study=interleave_id",
                            "seed=7"])
    for key in ("source", "seq_len", "batch_size", "val_documents", "val_tokens", "text_field", "partitions"):
        assert base.data[key] == dus.data[key], key
    assert base.data.partitions == (64 if profile.endswith("_v3") else None)  # v3: the elastic order
    assert base.export_dir == dus.model.base == dus.study.base_dir and dus.model.base.endswith("/tpp32")
    assert base.budget.tokens_per_param == 32 and base.budget.total_tokens is None
    assert dus.budget.tokens_per_param is None and dus.data.seed == 7  # the seed sets the data order
    assert base.model.layer_selection.strategy == "none"
    assert dus.model.layer_selection.n_target == dus.study.n_target > base.model.tiny.num_hidden_layers
