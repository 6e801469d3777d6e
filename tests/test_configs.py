"""Every shipped config composes, resolves and instantiates (in the spirit of litgpt's config-hub test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from omegaconf import OmegaConf

from kiwi.cli import CONF_DIR, ROOT_DIR
from tests.helpers import QWEN25_05B, compose

PRIMARY = {"train.yaml", "eval.yaml"}
APPENDED_GROUPS = {"study"}  # not in a defaults list: selected with `+study=<variant>`
NEEDS = {"study": ["experiment=tiny_dus"]}  # groups whose files build on an experiment


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML under conf/ that is not a primary config or a Hydra setting."""
    out = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONF_DIR)
        if rel.name in PRIMARY and len(rel.parts) == 1:
            continue
        group = rel.parent.as_posix()
        if group.startswith("hydra"):
            continue
        out.append((group, rel.stem))
    return out


def primary_for(group: str) -> str:
    return "eval" if group.startswith("eval") else "train"


def _tiny_base_config(n_layers: int = 24):
    from transformers import Qwen2Config

    return Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": n_layers})


@pytest.mark.parametrize(("group", "option"), group_options(), ids=lambda v: str(v))
def test_every_config_composes_and_resolves(group, option, tmp_path, kiwi_cache):
    if primary_for(group) == "eval" and not (CONF_DIR / "eval.yaml").exists():
        pytest.skip("conf/eval.yaml not present")
    override = f"{group}@tasks.{option}={option}" if group == "eval/task" else f"{group}={option}"
    if group in APPENDED_GROUPS:
        override = "+" + override
    cfg = compose(primary_for(group), [*NEEDS.get(group, []), override], output_dir=tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container, f"{group}={option} composed to an empty config"


STRATEGY_FILES = sorted(p.stem for p in (CONF_DIR / "model/layer_selection").glob("*.yaml"))


@pytest.mark.parametrize("option", STRATEGY_FILES)
def test_every_layer_selection_gives_a_valid_24_to_38_plan(option, tmp_path, kiwi_cache):
    from kiwi.model.build import needs_scores, plan_for

    cfg = compose("train", [f"model.layer_selection={option}"], output_dir=tmp_path)
    assert cfg.model.layer_selection.strategy == option
    base = _tiny_base_config(24)
    scores = [float(i % 5) for i in range(24)] if needs_scores(cfg.model) else None
    plan = plan_for(cfg.model, base, scores=scores)
    expected = 24 if option == "none" else (cfg.model.layer_selection.n_target or 38)
    if option == "explicit":
        expected = len(plan.sources)
    assert plan.n_target == expected
    assert all(0 <= s < 24 for s in plan.sources)


def test_default_config_is_the_real_job(tmp_path, kiwi_cache):
    cfg = compose("train", [], output_dir=tmp_path)
    assert cfg.model.base == "Qwen/Qwen2.5-0.5B"
    assert cfg.model.layer_selection.n_target == 38
    assert cfg.data.seq_len == 32768
    assert "wikipedia" in str(OmegaConf.to_container(cfg.data, resolve=True)).lower()
    assert cfg.trainer.strategy._target_.endswith("DeepSpeedStrategy")
    assert cfg.trainer.strategy.stage == 2
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.budget.total_tokens == 5.0e9


def test_experiment_overrides_groups(tmp_path, kiwi_cache):
    cfg = compose("train", ["experiment=quickstart"], output_dir=tmp_path)
    assert cfg.model.tiny is not None and cfg.model.base is None
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.seq_len == 512
    # a command-line override still beats the experiment file
    cfg = compose("train", ["experiment=quickstart", "data.seq_len=256"], output_dir=tmp_path)
    assert cfg.data.seq_len == 256


def test_dotted_layer_selection_override_selects_the_group(tmp_path, kiwi_cache):
    cfg = compose("train", ["model.layer_selection=solar"], output_dir=tmp_path)
    assert cfg.model.layer_selection.strategy == "solar"
    cfg = compose("train", ["model.layer_selection.n_target=40"], output_dir=tmp_path)
    assert cfg.model.layer_selection.strategy == "interleave" and cfg.model.layer_selection.n_target == 40


@pytest.mark.parametrize("option", ["cpu", "gpu", "deepspeed_a100", "fsdp"])
def test_trainer_configs_instantiate(option, tmp_path, kiwi_cache):
    cfg = compose("train", [f"trainer={option}"], output_dir=tmp_path)
    if option == "cpu":
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
        assert trainer.max_steps == -1
        return
    strategy = cfg.trainer.get("strategy")  # a name ("auto") or a strategy config to instantiate
    strategy = instantiate(strategy) if OmegaConf.is_config(strategy) else strategy
    if option == "deepspeed_a100":
        assert isinstance(strategy, DeepSpeedStrategy)
        assert strategy.config["zero_optimization"]["stage"] == 2
    if option == "fsdp":
        assert isinstance(strategy, FSDPStrategy)
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="(?i)gpu|cuda|accelerator|deepspeed"):
            instantiate(cfg.trainer, logger=False, callbacks=[])


@pytest.mark.parametrize("option", ["wandb", "csv", "none"])
def test_logger_configs_instantiate_offline(option, tmp_path, kiwi_cache):
    from kiwi.cli import instantiate_group

    cfg = compose("train", [f"logger={option}"], output_dir=tmp_path)
    loggers = instantiate_group(cfg.get("logger"))
    names = sorted(type(lg).__name__ for lg in loggers)
    assert names == {"wandb": ["CSVLogger", "WandbLogger"], "csv": ["CSVLogger"], "none": []}[option]


def test_callbacks_optimizer_scheduler_instantiate(tmp_path, kiwi_cache):
    from kiwi.cli import instantiate_group

    cfg = compose("train", [], output_dir=tmp_path)
    names = {type(cb).__name__ for cb in instantiate_group(cfg.callbacks)}
    assert {"ModelCheckpoint", "ThroughputMonitor", "CheckpointOnSignal", "LogLayerPlan"} <= names
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    opt = instantiate(cfg.optimizer)(params)
    sched = instantiate(cfg.scheduler)(opt, warmup_steps=2, total_steps=10)
    assert isinstance(opt, torch.optim.AdamW) and sched.get_last_lr()[0] < cfg.optimizer.lr


def test_module_config_instantiates_kiwilm_around_the_built_model(tmp_path, kiwi_cache):
    """``module`` is KiwiLM's config: its options from the file, the run-time arguments from train.py; the
    model built once is used as is (not rebuilt), and a checkpoint rebuilds the module from the same hparams."""
    from kiwi.model.build import as_dict, build_model
    from kiwi.train.module import KiwiLM

    cfg = compose("train", ["experiment=quickstart", "module.loss_chunk=64", "module.nonfinite_loss=skip"],
                  output_dir=tmp_path)
    built = build_model(cfg.model, cfg.paths.cache_dir, device="cpu")
    module = instantiate(cfg.module)(model_cfg=as_dict(cfg.model), optimizer=as_dict(cfg.optimizer),
                                     scheduler=as_dict(cfg.scheduler), warmup_steps=1, total_steps=5, built=built)
    assert isinstance(module, KiwiLM) and module.model is built.model
    hp = module.hparams
    assert (hp.loss_chunk, hp.nonfinite_loss, hp.loss_impl) == (64, "skip", cfg.module.loss_impl)
    assert (hp.cache_dir, hp.total_steps, hp.plan) == (cfg.paths.cache_dir, 5, built.plan.to_dict())


def test_run_names_come_from_one_function(tmp_path, kiwi_cache):
    """W&B's default run name is ``<task>-<setting>`` with the study's setting names (kiwi.cli.setting_name)."""
    from kiwi.cli import setting_name

    cases = {("model.layer_selection=solar", "model.layer_selection.identity_init=true"): "train-solar_id",
             ("model.layer_selection=llama_pro",): "train-llama_pro",
             ("model.layer_selection=interleave",): "train-interleave",
             ("model.layer_selection=none",): "train-control_tokens",
             ("model.layer_selection=none", "+budget.match_flops_layers=38"): "train-control_flops"}
    for overrides, name in cases.items():
        cfg = compose("train", ["logger=wandb", *overrides], output_dir=tmp_path)
        assert cfg.logger.wandb.name == name
    cfg = compose("train", ["logger=wandb", "logger.wandb.name=mine"], output_dir=tmp_path)
    assert cfg.logger.wandb.name == "mine"
    assert setting_name({"strategy": "stack", "identity_init": False, "trainable": "new"}) == "stack_new"
    assert setting_name(None) == "control_tokens"


def test_submitit_launcher_config_composes(tmp_path, kiwi_cache):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_.lower()


def _run_train(args: list[str], cwd: Path = ROOT_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_cfg_job_prints_the_real_default_without_network():
    proc = _run_train(["--cfg", "job"])
    assert proc.returncode == 0, proc.stderr
    assert "Qwen/Qwen2.5-0.5B" in proc.stdout
    assert "seq_len: 32768" in proc.stdout
    assert "DeepSpeedStrategy" in proc.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("model.layer_selection=nonexistent", "Could not find 'model/layer_selection/nonexistent'"),
    ("trainer.max_stepz=3", "max_stepz"),
])
def test_bad_override_fails_fast_with_hydras_message(override, message):
    proc = _run_train([override, "experiment=quickstart"])
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Loading" not in proc.stderr  # nothing was loaded
