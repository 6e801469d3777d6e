"""``train.py``'s body: build the upscaled model and the data, train for a token budget, report, export."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kiwi.model.build import as_dict, build_model
from kiwi.train.budget import flops_matched_tokens, make_budget, tokens_per_param_budget, training_flops
from kiwi.train.callbacks import CheckpointOnSignal, EmptyEpochGuard, RunInterrupted
from kiwi.train.checkpoint import publish_checkpoint_dirs
from kiwi.train.export import export_hf
from kiwi.train.module import KiwiLM, perplexity

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list:
    """Each entry of a group such as ``callbacks`` or ``logger`` that has a ``_target_``."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if isinstance(v, DictConfig) and "_target_" in v]


def run_name(cfg: DictConfig) -> str:
    ls = cfg.model.get("layer_selection") or {}
    name = f"{cfg.task_name}-{ls.get('strategy', 'none')}"
    if ls.get("identity_init"):
        name += "-id"
    return name


def accelerator_device(trainer_cfg: DictConfig) -> str:
    """Where the model will run, so build_model picks the attention kernel for it (flex_attention on CUDA)."""
    import torch

    acc = str(trainer_cfg.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


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
    """Fail on config mistakes before any weights or data are touched (ConfigError / DeviceError)."""
    from kiwi.config import validate_trainer
    from kiwi.errors import ConfigError

    for key in ("model", "data", "trainer", "optimizer"):
        if cfg.get(key) is None:
            raise ConfigError(f"config: missing group '{key}'")
    if cfg.module.nonfinite_loss not in ("stop", "skip"):
        raise ConfigError(f"module.nonfinite_loss: expected 'stop' or 'skip', got {cfg.module.nonfinite_loss!r}")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).exists():
        raise ConfigError(f"ckpt_path: {cfg.ckpt_path} does not exist")
    for i, req in enumerate(cfg.get("prerequisites") or []):
        if not Path(req.path).exists():
            raise ConfigError(f"prerequisites[{i}]: {req.path} does not exist; {req.get('how', '')}")
    validate_trainer(cfg.trainer)


def write_report(out_dir: Path, before: float | None, after: float | None, extra: dict) -> Path:
    report = {"val_ppl_before": before, "val_ppl_after": after, **extra}
    path = out_dir / "perplexity_report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| held-out perplexity | value |", "|---|---|",
             f"| before training (step 0) | {before:.3f} |" if before is not None else "| before | n/a |",
             f"| after training | {after:.3f} |" if after is not None else "| after | n/a |"]
    (out_dir / "perplexity_report.md").write_text("\n".join(lines) + "\n")
    return path


def _val_ppl(trainer: L.Trainer, module: KiwiLM, datamodule) -> float | None:
    """Held-out ppl at the current step (float64, from the module), validating only if not done yet."""
    def current() -> bool:
        return module.last_val is not None and module.last_val[0] == trainer.global_step

    if not current():
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return perplexity(module.last_val[1]) if current() else None  # None: an empty held-out set


def run(cfg: DictConfig) -> dict:
    """Train and export; a SIGTERM/SIGINT at any point raises ``RunInterrupted`` (after saving the last
    completed step as ``last.ckpt`` when there is one)."""
    stopper = CheckpointOnSignal()  # from the very start: a signal during the model build stops the run too
    stopper.install()
    try:
        return _run(cfg, stopper)
    finally:
        stopper.restore()


def _run(cfg: DictConfig, stopper: CheckpointOnSignal) -> dict:
    validate_early(cfg)
    reused = reused_export(cfg)
    if reused is not None:
        return reused
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    device = accelerator_device(cfg.trainer)
    built = build_model(cfg.model, cfg.paths.cache_dir, device=device)
    datamodule = instantiate(cfg.data, tokenizer=built.tokenizer)
    loggers = instantiate_group(cfg.get("logger"))
    for lg in loggers:
        if hasattr(lg, "_wandb_init") and not lg._wandb_init.get("name"):
            lg._wandb_init["name"] = run_name(cfg)
    history = ValidationHistory()
    callbacks = [cb for cb in instantiate_group(cfg.get("callbacks")) if not isinstance(cb, CheckpointOnSignal)]
    callbacks += [history, stopper, EmptyEpochGuard(f"data source {data_source_name(cfg)}")]
    if not loggers:  # Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if type(cb).__name__ != "LearningRateMonitor"]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    stopper.distributed = trainer.world_size > 1
    publish_checkpoint_dirs(trainer.strategy)

    total_tokens = cfg.budget.total_tokens
    if cfg.budget.get("tokens_per_param"):  # a training regime: tokens per parameter of the model trained
        total_tokens = tokens_per_param_budget(cfg.budget.tokens_per_param, built.model)
    if cfg.budget.get("match_flops_layers"):  # equal-compute control: as many FLOPs as a deeper model's
        total_tokens = flops_matched_tokens(total_tokens, built.model.config, cfg.budget.match_flops_layers,
                                            cfg.data.seq_len)
    budget = make_budget(total_tokens, cfg.data.batch_size, cfg.data.seq_len, trainer.world_size,
                         cfg.trainer.get("accumulate_grad_batches", 1), cfg.budget.warmup_fraction,
                         cfg.trainer.get("max_steps"))
    trainer.fit_loop.epoch_loop.max_steps = budget.steps  # the budget is known only once world_size is
    module = KiwiLM(model_cfg=as_dict(cfg.model), optimizer=as_dict(cfg.optimizer),
                    scheduler=as_dict(cfg.get("scheduler")) or None, cache_dir=cfg.paths.cache_dir,
                    loss_chunk=cfg.module.loss_chunk, nonfinite_loss=cfg.module.nonfinite_loss,
                    loss_impl=cfg.module.get("loss_impl", "auto"),
                    warmup_steps=budget.warmup_steps, total_steps=budget.steps, device=device, built=built)
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info("model: %s -> %d layers, %.1fM params (%.1fM trainable)", built.base_path,
             module.model.config.num_hidden_layers, n_params / 1e6, module.num_trainable_parameters() / 1e6)
    log.info(budget.describe(cfg.budget.get("tokens_per_s_estimate")))
    for lg in loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "n_params": n_params,
                            "budget": budget.__dict__})

    before = _val_ppl(trainer, module, datamodule) if cfg.validate_before and not cfg.get("ckpt_path") else None
    history.before = before
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except RunInterrupted:
        raise stopper.error() from None  # names the checkpoint written while the exception unwound
    fit_wall_s = time.perf_counter() - start
    interrupted = stopper.interrupted
    before = history.before  # after a resume: the step-0 value of the run it continues, if measured
    after = None if interrupted or trainer.fast_dev_run else _val_ppl(trainer, module, datamodule)

    result = {"val/ppl_before": before, "val/ppl": after, "steps": trainer.global_step,
              "tokens": trainer.global_step * budget.tokens_per_step, "interrupted": interrupted}
    if trainer.is_global_zero:
        flops = training_flops(module.model.config, result["tokens"], cfg.data.seq_len)
        write_report(out_dir, before, after, {"steps": result["steps"], "tokens": result["tokens"],
                                              "tokens_per_step": budget.tokens_per_step,
                                              "plan": built.plan.strategy, "n_params": n_params,
                                              "n_trainable": module.num_trainable_parameters(),
                                              "train_flops": flops, "fit_wall_s": round(fit_wall_s, 2),
                                              "val_curve": [{"step": st, "tokens": st * budget.tokens_per_step,
                                                             "ppl": ppl} for st, ppl in history.points]})
        if cfg.export_hf and not interrupted and "FSDP" in type(trainer.strategy).__name__:
            log.warning("FSDP: the model is sharded; export from the full checkpoint instead: "
                        "python -m kiwi.train.export %s/checkpoints/last.ckpt <out_dir>", out_dir)
        elif cfg.export_hf and not interrupted:
            result["hf_dir"] = str(export_to(module, built, Path(cfg.get("export_dir") or out_dir / "hf_model")))
        print_outputs(out_dir, result)
    finish_loggers(loggers)
    if interrupted:
        raise stopper.error()
    return result


def data_source_name(cfg: DictConfig) -> str:
    """The training data as the user named it (files, dataset or corpus), for error messages."""
    src = cfg.data.get("source") or {}
    for key in ("files", "path", "name", "dataset"):
        if src.get(key):
            value = src.get(key)
            return f"{key}={list(value) if not isinstance(value, str) else value}"
    return str(src.get("kind") or src.get("_target_") or "data")


def reused_export(cfg: DictConfig) -> dict | None:
    """With ``reuse_export``, a model already exported to ``export_dir`` is kept and nothing is trained."""
    export_dir = cfg.get("export_dir")
    if not (export_dir and cfg.get("reuse_export") and (Path(export_dir) / "config.json").exists()):
        return None
    print(f"kiwi: {export_dir} already exists, reusing it (delete it to train again)")
    return {"val/ppl": None, "hf_dir": str(export_dir), "reused": True}


def export_to(module: KiwiLM, built, out: Path) -> Path:
    return export_hf(module.model, built.tokenizer, built.plan, out, base_model=built.base_path)


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


def finish_loggers(loggers: list) -> None:
    """Close W&B runs so the next job of a multirun starts its own run."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and lg._experiment is not None:
            lg.experiment.finish()
