"""train.py's checks of every option that needs no weights, run before torch, Lightning, the model, the data
or a logger start: the config groups, the trainer values, the target depth against the base config, the
data files (present and holding documents), a resume checkpoint that opens and the prerequisites.

Light on purpose (no torch import): a bad option is one ``kiwi: error:`` line in about a second.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from kiwi.cli import validate_trainer
from kiwi.data.document_check import check_documents
from kiwi.data.partitions import check_layout, check_partitions
from kiwi.data.sources import build_source
from kiwi.errors import ConfigError, DataError
from kiwi.model.preflight import check_checkpoint, check_layer_selection


def check_train_config(cfg: DictConfig) -> None:
    """Raise the ``KiwiError`` of the first bad option (ConfigError, DataError, DeviceError)."""
    for key in ("model", "data", "trainer", "optimizer"):
        if cfg.get(key) is None:
            raise ConfigError(f"config: missing group '{key}'")
    if cfg.module.nonfinite_loss not in ("stop", "skip"):
        raise ConfigError(f"module.nonfinite_loss: expected 'stop' or 'skip', got {cfg.module.nonfinite_loss!r}")
    for i, req in enumerate(cfg.get("prerequisites") or []):
        if not Path(req.path).exists():
            raise ConfigError(f"prerequisites[{i}]: {req.path} does not exist; {req.get('how', '')}")
    validate_trainer(cfg.trainer)
    check_layer_selection(OmegaConf.to_container(cfg.model, resolve=True))
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, "ckpt_path")
    check_data_layout(cfg.data, cfg.trainer)
    check_data_files(cfg.data)


def check_data_layout(data: DictConfig, trainer: DictConfig) -> None:
    """``data.partitions`` against the processes and workers asked for (when the config says how many:
    ``devices: auto`` is counted by the datamodule once the trainer knows)."""
    partitions = check_partitions(data.get("partitions"), bool(data.get("repeat", True)))
    devices = trainer.get("devices", 1)
    if partitions is None or not isinstance(devices, int | ListConfig) or devices in (-1,):
        return
    per_node = len(devices) if isinstance(devices, ListConfig) else devices
    check_layout(partitions, per_node * int(trainer.get("num_nodes") or 1), int(data.get("num_workers") or 0))


def check_data_files(data: DictConfig) -> None:
    """Local data files (``data.source.kind=files``): every file or glob resolves, and they hold a document
    beyond the ``data.val_documents`` held out. Reads only the first records; hub and corpus sources are
    checked when they are opened."""
    source_cfg = OmegaConf.to_container(data.get("source") or {}, resolve=True)
    if not isinstance(source_cfg, dict) or source_cfg.get("kind") != "files":
        return
    try:
        source = build_source(text_field=data.get("text_field", "text"), on_error=data.get("on_error", "raise"),
                              **source_cfg)
    except DataError:
        raise
    except (TypeError, ValueError) as err:  # an unknown key or value of data.source
        raise ConfigError(" ".join(str(err).split())) from err
    check_documents(source, int(data.get("val_documents") or 0), data.get("max_documents"))
