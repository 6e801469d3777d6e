"""``train.py``'s task: build the upscaled model and the data, train for a token budget, report, export."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig, OmegaConf

from kiwi.cli import instantiate_group, task_wrapper
from kiwi.errors import ConfigError
from kiwi.loggers import quiet_library_bars
from kiwi.model.build import TRAINING_KEY, BuiltModel, as_dict, build_model
from kiwi.model.io import export_hf
from kiwi.train.budget import (
    FLOPS_TOLERANCE,
    Budget,
    at_depth,
    flops_matched_tokens,
    make_budget,
    teacher_matched_tokens,
    tokens_per_param_budget,
    training_flops,
)
from kiwi.train.callbacks import CheckpointOnSignal, EmptyEpochGuard, RunInterrupted
from kiwi.train.checkpoint import publish_checkpoint_dirs
from kiwi.train.levers import distill_settings, run_flops
from kiwi.train.module import KiwiLM, perplexity
from kiwi.train.parallel import accelerator_device, trainer_world_size
from kiwi.train.preflight import check_train_config
from kiwi.train.reuse import reused_export, training_record

log = logging.getLogger(__name__)


@task_wrapper
def run(cfg: DictConfig) -> dict:
    """Train and export; a SIGTERM/SIGINT at any point raises ``RunInterrupted`` (after saving the last
    completed step as ``last.ckpt`` when there is one)."""
    stopper = CheckpointOnSignal()  # from the very start: a signal during the model build stops the run too
    stopper.install()
    try:
        return train(cfg, stopper)
    finally:
        stopper.restore()


def train(cfg: DictConfig, stopper: CheckpointOnSignal) -> dict:
    """The steps of a training run, in order."""
    validate_early(cfg)
    quiet_library_bars()
    if (reused := reused_export(cfg)) is not None:
        return reused
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = accelerator_device(cfg.trainer)
    built = build_model(cfg.model, cfg.paths.cache_dir, device=device)
    datamodule = instantiate(cfg.data, tokenizer=built.tokenizer)
    budget = training_budget(cfg, built)
    # cfg.module is partial: run-time objects such as the built model cannot pass through OmegaConf
    module: KiwiLM = instantiate(cfg.module)(
        model_cfg=as_dict(cfg.model), optimizer=as_dict(cfg.optimizer),
        scheduler=as_dict(cfg.get("scheduler")) or None, warmup_steps=budget.warmup_steps,
        total_steps=budget.steps, device=device, built=built)
    loggers = instantiate_group(cfg.get("logger"))
    history = ValidationHistory()
    trainer = make_trainer(cfg, budget, loggers, [history, stopper])
    stopper.distributed = trainer.world_size > 1
    publish_checkpoint_dirs(trainer.strategy)
    log_start(cfg, built, module, budget, loggers)
    planned, _ = planned_flops(cfg, trainer, module, built, budget, budget.steps)
    warn_flops_gap(flops_gap(planned, flops_target(cfg, built)))

    history.before = _val_ppl(trainer, module, datamodule) if cfg.validate_before and not cfg.get("ckpt_path") else None
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except RunInterrupted:
        raise stopper.error() from None  # names the checkpoint written while the exception unwound
    fit_wall_s = time.perf_counter() - start
    interrupted = stopper.interrupted
    after = None if interrupted or trainer.fast_dev_run else _val_ppl(trainer, module, datamodule)
    # history.before: after a resume, the step-0 value of the run it continues, if measured
    result = {"val/ppl_before": history.before, "val/ppl": after, "steps": trainer.global_step,
              "tokens": trainer.global_step * budget.tokens_per_step, "interrupted": interrupted}
    if trainer.is_global_zero:
        report_and_export(cfg, trainer, module, built, budget, history, result, fit_wall_s)
    if interrupted:
        raise stopper.error()
    return result


def planned_tokens(cfg: DictConfig, built: BuiltModel) -> float:
    """The token budget as configured (``budget.total_tokens``, or ``budget.tokens_per_param`` of the model
    trained), before any FLOPs matching."""
    if cfg.budget.get("tokens_per_param"):  # a training regime: tokens per parameter of the model trained
        return tokens_per_param_budget(cfg.budget.tokens_per_param, built.model)
    return cfg.budget.total_tokens


def _make_budget(cfg: DictConfig, total_tokens: float) -> Budget:
    return make_budget(total_tokens, cfg.data.batch_size, cfg.data.seq_len, trainer_world_size(cfg.trainer),
                       cfg.trainer.get("accumulate_grad_batches", 1), cfg.budget.warmup_fraction,
                       cfg.trainer.get("max_steps"))


def training_budget(cfg: DictConfig, built: BuiltModel) -> Budget:
    """Optimizer steps of the token budget (or of ``budget.match_flops_layers``' FLOPs; less the teacher's
    FLOPs when distilling with ``flops_matched``) at this global batch."""
    total_tokens = planned_tokens(cfg, built)
    if cfg.budget.get("match_flops_layers"):  # equal-compute control: as many FLOPs as a deeper model's
        total_tokens = flops_matched_tokens(total_tokens, built.model.config, cfg.budget.match_flops_layers,
                                            cfg.data.seq_len)
    distill = distill_settings(cfg.module.get("distill"))
    if distill and distill["flops_matched"]:  # the teacher's forward passes come out of the same FLOPs
        total_tokens = teacher_matched_tokens(total_tokens, built.model.config, built.base_config, cfg.data.seq_len)
    return _make_budget(cfg, total_tokens)


def flops_target(cfg: DictConfig, built: BuiltModel) -> float | None:
    """The training FLOPs a FLOPs-matched run is meant to spend: those of its equal-compute control (the
    same budget through ``budget.match_flops_layers`` layers, or trained without the teacher), whole steps
    included. None when the run is not FLOPs-matched, or ``trainer.max_steps`` fixes its length."""
    distill = distill_settings(cfg.module.get("distill"))
    layers = cfg.budget.get("match_flops_layers")
    if not (layers or (distill and distill["flops_matched"])) or (cfg.trainer.get("max_steps") or 0) > 0:
        return None
    control = at_depth(built.model.config, int(layers)) if layers else built.model.config
    return training_flops(control, _make_budget(cfg, planned_tokens(cfg, built)).total_tokens, cfg.data.seq_len)


def flops_gap(flops: float, target: float | None) -> dict:
    """Report fields of a FLOPs-matched run: its target and how far it is off (percent); ``flops_mismatch``
    when that is more than FLOPS_TOLERANCE (whole-step rounding at a small budget)."""
    if target is None:
        return {}
    pct = 100 * (flops / target - 1)
    return {"flops_target": target, "flops_vs_target_pct": round(pct, 3),
            "flops_mismatch": abs(pct) > 100 * FLOPS_TOLERANCE}


def warn_flops_gap(gap: dict) -> None:
    if gap.get("flops_mismatch"):
        log.warning("FLOPs-matched run: %+.1f%% training FLOPs against its equal-compute control's %.4g (over "
                    "the %.0f%% tolerance): not equal compute; a larger budget or a smaller batch rounds closer",
                    gap["flops_vs_target_pct"], gap["flops_target"], 100 * FLOPS_TOLERANCE)


def make_trainer(cfg: DictConfig, budget: Budget, loggers: list, extra_callbacks: list) -> L.Trainer:
    """The configured Trainer, stopping at the budget's last step, with kiwi's own callbacks added."""
    # train.py installs its own CheckpointOnSignal in any case (one handler, from the start of the run).
    callbacks = [cb for cb in instantiate_group(cfg.get("callbacks")) if not isinstance(cb, CheckpointOnSignal)]
    if not loggers:  # Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    callbacks += [*extra_callbacks, EmptyEpochGuard(f"data source {data_source_name(cfg)}")]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, max_steps=budget.steps)
    world = trainer_world_size(cfg.trainer)
    if trainer.world_size != world:
        raise ConfigError(f"trainer: runs {trainer.world_size} processes, but devices x num_nodes in its config "
                          f"give {world}, which the token budget was computed for; set trainer.devices explicitly")
    return trainer


def log_start(cfg: DictConfig, built: BuiltModel, module: KiwiLM, budget: Budget, loggers: list) -> None:
    n_params = module.num_parameters()
    log.info("model: %s -> %d layers, %.1fM params (%.1fM trainable)", built.base_path,
             module.model.config.num_hidden_layers, n_params / 1e6, module.num_trainable_parameters() / 1e6)
    log.info(budget.describe(cfg.budget.get("tokens_per_s_estimate")))
    for lg in loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "n_params": n_params,
                            "budget": budget.__dict__})


def long_docs_report(datamodule) -> dict:
    """``data.long_docs``'s plan and, where this process read the training data (``num_workers=0``), the
    copies added and documents dropped as read this run (the shuffle buffer reads ahead of training); with
    workers each stream logs its own counts."""
    plan = datamodule.train_dataset.long_docs
    if plan is None:
        return {}
    read = (dict(datamodule.train_dataset.upsampled) if datamodule.num_workers == 0
            else "logged per data stream (data.num_workers > 0)")
    return {"long_docs": {**plan.as_dict(), "read_this_run": read}}


def report_and_export(cfg: DictConfig, trainer: L.Trainer, module: KiwiLM, built: BuiltModel, budget: Budget,
                      history: ValidationHistory, result: dict, fit_wall_s: float) -> None:
    """Rank 0 after fit: perplexity_report.json/.md, the Hugging Face export (adds ``hf_dir`` to ``result``)
    and the summary printed at the end."""
    out_dir = Path(cfg.paths.output_dir)
    n_params = module.num_parameters()
    flops, teacher_flops = planned_flops(cfg, trainer, module, built, budget, result["steps"])
    write_perplexity_report(out_dir, result["val/ppl_before"], result["val/ppl"], {
        "steps": result["steps"], "tokens": result["tokens"], "tokens_per_step": budget.tokens_per_step,
        "plan": built.plan.strategy, "n_params": n_params, "n_trainable": module.num_trainable_parameters(),
        "train_flops": flops, "teacher_flops": teacher_flops, **flops_gap(flops, flops_target(cfg, built)),
        "fit_wall_s": round(fit_wall_s, 2), **long_docs_report(trainer.datamodule),
        "val_curve": [{"step": st, "tokens": st * budget.tokens_per_step, "ppl": ppl} for st, ppl in history.points]})
    if cfg.export_hf and not result["interrupted"] and isinstance(trainer.strategy, FSDPStrategy):
        log.warning("FSDP: the model is sharded; export from the full checkpoint instead: "
                    "python -m kiwi.train.export %s/checkpoints/last.ckpt <out_dir>", out_dir)
    elif cfg.export_hf and not result["interrupted"]:
        hf_dir = Path(cfg.get("export_dir") or out_dir / "hf_model")
        setattr(module.model.config, TRAINING_KEY, training_record(cfg, result["steps"], budget.steps))
        result["hf_dir"] = str(export_hf(module.model, built.tokenizer, built.plan, hf_dir, base_model=built.base_path))
    print_outputs(out_dir, result)


def planned_flops(cfg: DictConfig, trainer: L.Trainer, module: KiwiLM, built: BuiltModel, budget: Budget,
                  steps: int) -> tuple[float, float]:
    """(training FLOPs of ``steps`` steps of this run with its levers, of which the teacher's)."""
    return run_flops(trainer.callbacks, module.model.config, built.plan,
                     module.teacher.config if module.teacher is not None else None,
                     steps, budget.steps, budget.tokens_per_step, cfg.data.seq_len)


class ValidationHistory(L.Callback):
    """(optimizer step, held-out ppl) of every validation, exact (float64), for perplexity_report.json:
    loggers record mid-fit validations one step early and in float32. Kept in checkpoints with the step-0
    value (``before``), so a resumed run reports the whole curve and its starting point."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []
        self.before: float | None = None

    def state_dict(self) -> dict:
        return {"points": [list(p) for p in self.points], "before": self.before}

    def load_state_dict(self, state_dict: dict) -> None:
        self.points = [(int(st), float(ppl)) for st, ppl in state_dict.get("points", [])]
        self.before = state_dict.get("before")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or pl_module.last_val is None:
            return
        step, loss = pl_module.last_val
        if not self.points or self.points[-1][0] != step:
            self.points.append((step, perplexity(loss)))


def validate_early(cfg: DictConfig) -> None:
    """Fail on config mistakes before any weights or data are touched: train.py's light checks (also run by
    train.py before this module is imported) and the distillation options."""
    check_train_config(cfg)
    distill_settings(cfg.module.get("distill"))


def write_perplexity_report(out_dir: Path, before: float | None, after: float | None, extra: dict) -> Path:
    report = {"val_ppl_before": before, "val_ppl_after": after, **extra}
    path = out_dir / "perplexity_report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| held-out perplexity | value |", "|---|---|",
             f"| before training (step 0) | {before:.3f} |" if before is not None else "| before | n/a |",
             f"| after training | {after:.3f} |" if after is not None else "| after | n/a |"]
    if extra.get("flops_mismatch"):
        lines.append(f"| training FLOPs vs equal-compute control | {extra['flops_vs_target_pct']:+.1f}% "
                     f"(not equal compute) |")
    (out_dir / "perplexity_report.md").write_text("\n".join(lines) + "\n")
    return path


def _val_ppl(trainer: L.Trainer, module: KiwiLM, datamodule) -> float | None:
    """Held-out ppl at the current step (float64, from the module), validating only if not done yet."""
    def current() -> bool:
        return module.last_val is not None and module.last_val[0] == trainer.global_step

    if not current():
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return perplexity(module.last_val[1]) if current() else None  # None: an empty held-out set


def data_source_name(cfg: DictConfig) -> str:
    """The training data as the user named it (files, dataset or corpus), for error messages."""
    src = cfg.data.get("source") or {}
    for key in ("files", "path", "name", "dataset"):
        if src.get(key):
            value = src.get(key)
            return f"{key}={list(value) if not isinstance(value, str) else value}"
    return str(src.get("kind") or src.get("_target_") or "data")


def print_outputs(out_dir: Path, result: dict) -> None:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    print(f"\nkiwi: outputs in {out_dir}")
    before, after = result["val/ppl_before"], result["val/ppl"]
    if before is not None and after is not None:
        print(f"  held-out perplexity: before {fmt(before)} -> after {fmt(after)}")
    elif after is not None:  # e.g. a resumed run: step 0 was measured by the first run
        print(f"  held-out perplexity: {fmt(after)} (step {result['steps']})")
    elif before is not None:
        print(f"  held-out perplexity before training: {fmt(before)}")
    ckpts = sorted((out_dir / "checkpoints").glob("*.ckpt")) if (out_dir / "checkpoints").exists() else []
    for p in ckpts:
        print(f"  checkpoint: {p}")
    if "hf_dir" in result:
        print(f"  Hugging Face model: {result['hf_dir']}")
    print(f"  report: {out_dir / 'perplexity_report.json'}")
