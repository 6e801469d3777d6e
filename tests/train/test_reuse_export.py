"""``reuse_export``: an export is reused only if it was trained from the same definition, and a model
up-scaled from an export does not carry the base's record as its own."""

from __future__ import annotations

import json
import re

import pytest

from kiwi.errors import ConfigError
from kiwi.model.build import TRAINING_KEY, build_model
from kiwi.train.reuse import reused_export, training_definition
from tests.helpers import compose, tiny_qwen2, tiny_tokenizer

BASE = ["experiment=study_cpu_base"]


def _export(tmp_path, overrides: list[str]):
    """A directory whose config.json records the training definition of ``overrides``, as train.py writes it."""
    export = tmp_path / "export"
    export.mkdir()
    definition = training_definition(compose("train", [*BASE, *overrides]))
    record = {**definition, "steps": 40, "budget_steps": 40}  # a run that reached its budget, as train.py writes
    (export / "config.json").write_text(json.dumps({"model_type": "qwen2", TRAINING_KEY: record}))
    return export


@pytest.mark.parametrize("change", [
    "trainer.max_steps=3", "trainer.accumulate_grad_batches=4", "trainer.gradient_clip_val=0.5",
    "+trainer.max_time=00:00:00:05", "+trainer.limit_train_batches=2", "+trainer.fast_dev_run=true",
    "module.distill={alpha:0.9}", "+callbacks.two_phase._target_=kiwi.train.levers.TwoPhase",
    "model.tiny.hidden_size=16", "optimizer.lr=0.5", "seed=7", "data.seq_len=128", "data.num_workers=3"])
def test_an_export_trained_otherwise_is_refused(tmp_path, change):
    export = _export(tmp_path, [])
    cfg = compose("train", [*BASE, f"export_dir={export}", change])
    with pytest.raises(ConfigError, match=rf"export_dir {export} was trained with a different configuration \("):
        reused_export(cfg)


@pytest.mark.parametrize("change", [None, "model.compile=true", "budget.tokens_per_s_estimate=8000",
                                    "model.activation_checkpointing=full",
                                    "trainer.val_check_interval=3", "trainer.log_every_n_steps=1"])
def test_speed_logging_and_validation_settings_still_reuse(tmp_path, change):
    export = _export(tmp_path, [])
    cfg = compose("train", [*BASE, f"export_dir={export}", *([change] if change else [])])
    assert reused_export(cfg) == {"val/ppl": None, "hf_dir": str(export), "reused": True}


def test_a_model_upscaled_from_an_export_does_not_claim_its_record(tmp_path):
    base = tmp_path / "base"
    model = tiny_qwen2(num_hidden_layers=2)
    setattr(model.config, TRAINING_KEY, {"budget": {"tokens_per_param": 64}})
    model.save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    built = build_model({"base": str(base), "layer_selection": {"strategy": "interleave", "n_target": 3}},
                        tmp_path / "cache")
    assert built.model.config.num_hidden_layers == 3
    assert not hasattr(built.model.config, TRAINING_KEY)


def _files_run(tmp_path, files: str) -> list[str]:
    return [*BASE, "data=local", f"data.source.files=[{files}]"]


def test_the_same_files_spelled_another_way_reuse_and_changed_files_are_refused(tmp_path):
    """The record holds the files (name and size), not this checkout's path or the glob that found them."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one article\n")
    export = tmp_path / "export"
    export.mkdir()
    definition = training_definition(compose("train", _files_run(tmp_path, f"{data}/*.txt")))
    (export / "config.json").write_text(json.dumps({"model_type": "qwen2", TRAINING_KEY: definition}))
    other_spelling = compose("train", [*_files_run(tmp_path, f"{data}/../data/a.txt"), f"export_dir={export}"])
    assert reused_export(other_spelling)["reused"]
    (data / "b.txt").write_text("a new article\n")  # the glob now finds one more file
    with pytest.raises(ConfigError, match="data.source.files"):
        reused_export(compose("train", [*_files_run(tmp_path, f"{data}/*.txt"), f"export_dir={export}"]))


def test_an_export_of_a_run_stopped_early_is_refused(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    record = {**training_definition(compose("train", BASE)), "steps": 7, "budget_steps": 40}
    (export / "config.json").write_text(json.dumps({"model_type": "qwen2", TRAINING_KEY: record}))
    with pytest.raises(ConfigError, match="stopped at step 7 of 40"):
        reused_export(compose("train", [*BASE, f"export_dir={export}"]))
    record["steps"] = 40
    (export / "config.json").write_text(json.dumps({"model_type": "qwen2", TRAINING_KEY: record}))
    assert reused_export(compose("train", [*BASE, f"export_dir={export}"]))["reused"]


@pytest.mark.parametrize("content, message", [
    ("{", "config.json is not valid JSON"), ("[]", "config.json is not a model config with a training record"),
    ('{"kiwi_training": "x"}', "config.json is not a model config with a training record")])
def test_a_corrupt_export_config_is_a_clear_error(tmp_path, content, message):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=rf"export_dir {export}: {re.escape(message)}.*delete the directory"):
        reused_export(compose("train", [*BASE, f"export_dir={export}"]))
