"""What train.py and evaluate.py share: argv normalisation, resolvers, config composition and checks, the
task wrapper (one-line errors, W&B closed in ``finally``), instantiation of config groups, and run names.

Neutral ground: it imports nothing from kiwi.train or kiwi.eval, so both tasks can import it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from kiwi.errors import ConfigError, DeviceError, KiwiError, worker_message

ROOT_DIR = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT_DIR / "conf"

# Nested config groups that users address with dots (`model.layer_selection=solar`). Hydra only accepts
# the group path (`model/layer_selection=solar`) for a group choice; with dots it would silently replace
# the whole strategy node by a string, so the entry points rewrite this one form before Hydra parses.
NESTED_GROUPS = ("model/layer_selection",)


def normalize_overrides(argv: Sequence[str]) -> list[str]:
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        for group in NESTED_GROUPS:
            if sep and key == group.replace("/", ".") and not value.startswith(("{", "[")):
                arg = f"{group}={value}"
        out.append(arg)
    return out


# The names of the study's controls (conf/study/<name>.yaml): strategy none, trained on the same tokens or
# on the FLOPs of a deeper model.
CONTROL_TOKENS = "control_tokens"
CONTROL_FLOPS = "control_flops"
# LLaMA Pro's names in conf/study/: the published setting (identity copies, only they train) is plain
# `llama_pro`, as `model.layer_selection=llama_pro` gives it; the other two name what differs from it.
LLAMA_PRO_NAMES = {(True, "new"): "llama_pro", (True, "all"): "llama_pro_all", (False, "all"): "llama_pro_noid"}


def setting_name(layer_selection: Mapping | None, match_flops: bool = False) -> str:
    """The one name of an up-scaling setting, used for W&B runs, evaluate.py's step-0 rows and study rows.

    Derived from the resolved options rather than from how they were asked for, so `+study=solar_id` and
    `model.layer_selection=solar model.layer_selection.identity_init=true` get the same name: strategy,
    + `_id` (identity_init), + `_new` (only the copies train); conf/study's names for LLaMA Pro and the
    controls (strategy none)."""
    ls = layer_selection or {}
    strategy = str(ls.get("strategy") or "none")
    identity, trainable = bool(ls.get("identity_init", False)), str(ls.get("trainable") or "all")
    if strategy == "none":
        return CONTROL_FLOPS if match_flops else CONTROL_TOKENS
    if strategy == "llama_pro" and (identity, trainable) in LLAMA_PRO_NAMES:
        return LLAMA_PRO_NAMES[identity, trainable]
    return strategy + ("_id" if identity else "") + ("_new" if trainable == "new" else "")


def _pick(cfg: Mapping, dotted: str):
    for key in dotted.split("."):
        cfg = cfg.get(key) if isinstance(cfg, Mapping) else None
    return cfg


# The suffix each lever adds to a setting's name (lever_suffix); a name holding one is a lever variant.
LEVER_TAGS = ("_2phase", "_lrcopy", "_distill", "_grow", "_norewarm")
OWN_LR_TAG = "_norewarm"  # the lever whose lr is part of it (the base's final lr)
# Where lever_suffix reads the levers in a resolved config (the study reads a job's saved config by them).
LEVER_KEYS = ("callbacks.two_phase.new_only_fraction", "optimizer.copied_lr_scale", "module.distill",
              "callbacks.grow_in_steps.stages", "scheduler._target_", "budget.warmup_fraction")


def is_lever(setting: str) -> bool:
    return any(tag in setting for tag in LEVER_TAGS)


def lever_suffix(cfg: Mapping) -> str:
    """The continued-pretraining levers (kiwi.train.levers) a resolved config turns on, as the suffix of its
    setting's name (conf/study/interleave_id_<lever>.yaml); a value is appended when it is not the study
    file's: `_2phase` (new layers alone first), `_lrcopy` (copied layers at a lower lr), `_distill`
    (KL to the base; `T<t>` for another temperature, `_unmatched` without flops_matched), `_grow<k>` (grown
    in k steps), `_norewarm` (constant lr, no warmup)."""
    out = ""
    if (fraction := _pick(cfg, "callbacks.two_phase.new_only_fraction")) is not None:
        out += "_2phase" + ("" if float(fraction) == 0.5 else f"{float(fraction):g}")
    if (scale := _pick(cfg, "optimizer.copied_lr_scale")) is not None:
        out += "_lrcopy" + ("" if float(scale) == 0.1 else f"{float(scale):g}")
    if (distill := _pick(cfg, "module.distill")) not in (None, False):
        distill = distill if isinstance(distill, Mapping) else {}
        alpha, temperature = float(distill.get("alpha") or 0.5), float(distill.get("temperature") or 1.0)
        out += "_distill" + ("" if alpha == 0.5 else f"{alpha:g}") + ("" if temperature == 1 else f"T{temperature:g}")
        out += "_unmatched" if distill.get("flops_matched") is False else ""
    if (stages := _pick(cfg, "callbacks.grow_in_steps.stages")) is not None:
        out += f"_grow{int(stages)}"
    if (str(_pick(cfg, "scheduler._target_") or "").endswith(".warmup_constant")
            and not _pick(cfg, "budget.warmup_fraction")):
        out += "_norewarm"
    return out


def setting_with_levers(layer_selection: Mapping | None, match_flops: bool, levers: Mapping) -> str:
    """``setting_name`` plus ``lever_suffix(levers)``; the controls take no suffix (levers do not apply)."""
    setting = setting_name(layer_selection, match_flops)
    return setting if setting in (CONTROL_TOKENS, CONTROL_FLOPS) else setting + lever_suffix(levers)


def run_name(cfg: Mapping) -> str:
    """``<task>-<setting><levers>``: the default W&B run name (conf/logger/wandb.yaml resolves it)."""
    model = cfg.get("model") or {}
    match_flops = bool((cfg.get("budget") or {}).get("match_flops_layers"))
    return f"{cfg.get('task_name')}-{setting_with_levers(model.get('layer_selection'), match_flops, cfg)}"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("kiwi_root"):
        OmegaConf.register_new_resolver("kiwi_root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("kiwi_mul"):  # e.g. the lr a cosine schedule ends at: lr x min_lr_ratio
        OmegaConf.register_new_resolver("kiwi_mul", lambda a, b: float(a) * float(b))
    if not OmegaConf.has_resolver("kiwi_run_name"):
        OmegaConf.register_new_resolver("kiwi_run_name", lambda *, _root_: run_name(_root_))


_register_resolvers()


def validate_trainer(tc: DictConfig) -> None:
    """The trainer values Lightning would reject only after the model is built, and a GPU trainer on a
    machine without one (Lightning says only "No supported gpu backend found!")."""

    def integer(key: str, minimum: int, allowed: tuple = ()) -> None:
        value = tc.get(key)
        if value is None or value in allowed:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
            raise ConfigError(f"trainer.{key}: expected an integer >= {minimum}{extra}, got {value!r}")

    integer("max_steps", 1, allowed=(-1,))
    integer("max_epochs", 1, allowed=(-1,))
    integer("num_nodes", 1)
    integer("accumulate_grad_batches", 1)
    integer("log_every_n_steps", 1)
    integer("num_sanity_val_steps", 0, allowed=(-1,))
    devices = tc.get("devices")
    if not (devices in ("auto", -1) or isinstance(devices, (list, ListConfig))
            or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)):
        raise ConfigError(f"trainer.devices: expected an integer >= 1, -1, 'auto' or a list of ids, got {devices!r}")
    vci = tc.get("val_check_interval")
    if vci is not None and (isinstance(vci, bool) or not isinstance(vci, (int, float)) or vci <= 0):
        raise ConfigError(f"trainer.val_check_interval: expected a positive number of batches, got {vci!r}")
    clip = tc.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val: expected a number >= 0 or null, got {clip!r}")
    if str(tc.get("accelerator", "auto")) in ("gpu", "cuda") and not _cuda_available():
        raise DeviceError("trainer: this trainer needs a CUDA GPU (trainer.accelerator=gpu) and none is available "
                          "on this machine; use trainer=cpu (e.g. `python train.py experiment=quickstart`)")


def _cuda_available() -> bool:
    import torch  # heavy: lazy, so that a CPU run's config checks answer at once

    return torch.cuda.is_available()


def compose_option(group: str, option: str, overrides: Sequence[str] = ()) -> DictConfig:
    """One option of a config group (``model/layer_selection``, ``solar``) composed by Hydra, its defaults
    list and ``overrides`` applied: the file as ``group=option`` on the command line would give it.

    Works inside a Hydra app (the app's search path) and outside one (conf/)."""
    ovs = [f"+{group}={option}", *overrides]
    try:
        if GlobalHydra.instance().is_initialized():
            cfg = compose(overrides=ovs)
        else:
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                cfg = compose(overrides=ovs)
    except MissingConfigException as err:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"{group}: unknown option {option!r}; available: {options}") from err
    except HydraException as err:  # e.g. an override of a key the option does not have
        raise ConfigError(f"{group}={option}: {' '.join(str(err).split())}") from err
    return OmegaConf.select(cfg, group.replace("/", "."))


def instantiate_group(cfg: DictConfig | None) -> list:
    """Each entry of a group such as ``callbacks`` or ``logger`` that has a ``_target_``."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if isinstance(v, DictConfig) and "_target_" in v]


def task_wrapper(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a task function (``train``, ``evaluate``): the W&B run it started is finished in ``finally``,
    marked failed when the task raised, so the next job of a multirun starts its own run and a crashed run
    is not left open."""

    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        ok = False
        try:
            result = task(*args, **kwargs)
            ok = True
            return result
        finally:
            finish_wandb(exit_code=0 if ok else 1)

    return wrapped


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the current W&B run, if one was started (wandb is looked up, not imported: a run without
    W&B never pays for the import)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def error_line(err: BaseException) -> str:
    """The one line a user sees for an anticipated error (raised in a DataLoader worker or not)."""
    return " ".join((worker_message(err) or str(err)).split())


# The file a run's output directory gets when the run did not finish, holding its one-line reason: a
# failure (an anticipated error or an unexpected exception), or a stop by SIGTERM/SIGINT (resumable).
FAILED, INTERRUPTED = "FAILED", "INTERRUPTED"


def run_dirs(cfg: Any = None) -> list[Path]:
    """The existing directories of this job: ``paths.output_dir`` (checkpoints, W&B) and Hydra's job dir."""
    dirs = []
    if isinstance(cfg, DictConfig):
        dirs.append(OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False))
    if HydraConfig.initialized():
        dirs.append(HydraConfig.get().runtime.output_dir)
    out = []
    for d in dirs:
        if d and Path(d).is_dir() and Path(d).resolve() not in [o.resolve() for o in out]:
            out.append(Path(d))
    return out


def mark_run(dirs: Sequence[Path], status: str | None, reason: str = "") -> None:
    """Write ``status`` (FAILED / INTERRUPTED) with its reason into each dir; ``None`` clears both (a
    rerun into the same directory starts unmarked)."""
    for d in dirs:
        for name in (FAILED, INTERRUPTED):
            (d / name).unlink(missing_ok=True)
        if status is not None:
            (d / status).write_text(reason + "\n", encoding="utf-8")


def report_errors(task: Callable) -> Callable:
    """Wrap a Hydra task function: a ``KiwiError`` ends the process with one line on stderr and its
    ``exit_code`` (1; 130 / 143 for SIGINT / SIGTERM); the run's directory gets a FAILED (or INTERRUPTED)
    file with that line, as it does for an unexpected exception.

    Hydra catches exceptions inside the task function and prints a stripped traceback, so the error is
    handled here, before Hydra sees it; ``SystemExit`` passes through Hydra in single runs and multiruns
    alike. ``HYDRA_FULL_ERROR=1`` re-raises it for the full traceback; unexpected exceptions always keep theirs.
    """

    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        dirs = run_dirs(args[0] if args else kwargs.get("cfg"))
        mark_run(dirs, None)
        try:
            return task(*args, **kwargs)
        except KiwiError as err:
            line = f"kiwi: error: {error_line(err)}"
            mark_run(dirs, INTERRUPTED if err.exit_code > 128 else FAILED, line)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            record = logging.LogRecord("kiwi", logging.ERROR, __file__, 0, line, None, None)
            for handler in logging.getLogger().handlers:  # the job's log file keeps the reason too
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)
            sys.stdout.flush()
            print(f"{line}  (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt:  # SIGINT before kiwi's handler is installed
            mark_run(dirs, INTERRUPTED, "interrupted by SIGINT")
            raise
        except Exception as err:
            mark_run(dirs, FAILED, f"{type(err).__name__}: {' '.join(str(err).split())}"[:2000])
            raise

    return wrapped


def log_through_root() -> None:
    """Print every library log record once, through the root handlers Hydra configured (console + job log).

    lightning and huggingface_hub attach a console handler to their own logger at import and still
    propagate to the root, so each of their lines appeared twice; transformers prints through its own
    handler only, so its lines missed the job log. Imported here first so that no later import re-adds one.
    """
    # lightning 2.6.6 builds torch's LeafSpec, which torch 2.13 deprecates with a FutureWarning on every
    # batch transfer: nothing a user can act on. Only that message from that one module is dropped.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    root = logging.getLogger()
    if not root.handlers:  # not under Hydra's job logging: leave the libraries' defaults alone
        return
    import huggingface_hub  # noqa: F401  (importing these two attaches the handlers removed below)
    import lightning  # noqa: F401
    import transformers.utils.logging as tf_logging

    tf_logging.disable_default_handler()
    tf_logging.enable_propagation()
    for name in ("lightning", "huggingface_hub"):
        lg = logging.getLogger(name)
        for handler in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
            lg.removeHandler(handler)
        lg.propagate = True


class DropTips(logging.Filter):
    """Drop Lightning's advertisement for its cloud logger ("💡 Tip: ... litlogger"): it asks for no action.

    Attached (conf/hydra/default.yaml) to the one logger that emits it; every other record passes.
    """

    _TIP = re.compile(r"^\W*Tip:.*litlogger", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._TIP.match(str(record.msg))
