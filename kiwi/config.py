"""Config helpers shared by the entry points: argv normalisation, resolvers, error reporting, log routing."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

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


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("kiwi_root"):
        OmegaConf.register_new_resolver("kiwi_root", lambda: str(ROOT_DIR))


_register_resolvers()


def validate_trainer(tc: DictConfig) -> None:
    """The trainer values Lightning would reject only after the model is built, and a GPU trainer on a
    machine without one (Lightning says only "No supported gpu backend found!")."""
    import torch

    from kiwi.errors import ConfigError, DeviceError

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
    if str(tc.get("accelerator", "auto")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DeviceError("trainer: this trainer needs a CUDA GPU (trainer.accelerator=gpu) and none is available "
                          "on this machine; use trainer=cpu (e.g. `python train.py experiment=quickstart`)")


def error_line(err: BaseException) -> str:
    """The one line a user sees for an anticipated error.

    torch re-raises an error from a DataLoader worker as the same type with the worker's whole formatted
    traceback as its message ("Caught DataError in DataLoader worker process 0. Original Traceback ...");
    the original message is what follows the last ``<module>.<Type>: `` of that traceback.
    """
    msg = str(err)
    if msg.startswith("Caught ") and "Original Traceback" in msg:
        cls = type(err)
        head = f"{cls.__module__}.{cls.__qualname__}: "
        if head in msg:
            msg = msg.rsplit(head, 1)[1]
    return " ".join(msg.split())


def report_errors(task: Callable) -> Callable:
    """Wrap a Hydra task function: a ``KiwiError`` ends the process with one line on stderr and exit code 1.

    Hydra catches exceptions inside the task function and prints a stripped traceback, so the error is
    handled here, before Hydra sees it; ``SystemExit`` passes through Hydra in single runs and multiruns
    alike. ``HYDRA_FULL_ERROR=1`` re-raises it for the full traceback; unexpected exceptions always keep theirs.
    """
    from kiwi.errors import KiwiError

    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except KiwiError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            line = f"kiwi: error: {error_line(err)}"
            record = logging.LogRecord("kiwi", logging.ERROR, __file__, 0, line, None, None)
            for handler in logging.getLogger().handlers:  # the job's log file keeps the reason too
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)
            sys.stdout.flush()
            print(f"{line}  (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1) from None

    return wrapped


def log_through_root() -> None:
    """Print every library log record once, through the root handlers Hydra configured (console + job log).

    lightning and huggingface_hub attach a console handler to their own logger at import and still
    propagate to the root, so each of their lines appeared twice; transformers prints through its own
    handler only, so its lines missed the job log. Imported here first so that no later import re-adds one.
    """
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
