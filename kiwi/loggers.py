"""W&B that never crashes or hangs on a missing login: offline unless a key or login is configured.

Shared by train.py and evaluate.py (conf/logger/wandb.yaml), so it lives outside kiwi.train."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)
_MODES = ("auto", "online", "offline", "disabled")


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return base in hosts


def resolve_wandb_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"logger.wandb.mode: expected one of {_MODES}, got {mode!r}")
    env = os.environ.get("WANDB_MODE")
    if mode == "auto" and env:
        mode = {"dryrun": "offline", "run": "online"}.get(env, env)
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
        if mode == "offline":
            log.warning("W&B: no API key or login found, logging OFFLINE. Sync later with "
                        "`wandb sync <run dir>/wandb/offline-run-*` (or `wandb login` before the next run).")
    return mode


def quiet_library_bars() -> None:
    """No "Loading weights" / "Writing model shards" / download bars from transformers and huggingface_hub:
    for kiwi's models they flash by and fill the log; kiwi logs what it loads and writes itself."""
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def wandb_logger(project: str, save_dir: str, name: str | None = None, group: str | None = None,
                 tags=None, mode: str = "auto", job_type: str | None = None, **kwargs):

    mode = resolve_wandb_mode(mode)
    if "settings" not in kwargs:  # no ~35-line run summary and history at the end of every run
        import wandb

        kwargs["settings"] = wandb.Settings(quiet=True)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=project, save_dir=save_dir, name=name, group=group,
                         tags=list(tags) if tags else None, mode=mode, job_type=job_type,
                         offline=mode == "offline", **kwargs)
    if logger._wandb_init.get("anonymous") is None:  # Lightning passes anonymous=None, which wandb warns about
        logger._wandb_init.pop("anonymous")
    return logger
