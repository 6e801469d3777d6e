"""Which held-out documents the ``heldout`` task scores, so it reproduces a training run's ``val/ppl``.

A Lightning checkpoint written by ``train.py`` carries its run's data arguments
(``datamodule_hyper_parameters``: source, seq_len, val_documents, val_tokens, ...). Evaluating it uses that
definition, with any ``data.<key>=`` given on the command line applied on top; ``data=<group>`` on the
command line, an HF export or an older checkpoint without it, uses the eval config's ``data``. When the
evaluated checkpoints share one run definition, the other rows (base, step-0 models) use it too, so the
column compares like with like. Each row's definition is logged and written to results.json.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kiwi.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RUN_DATA_KEY = "datamodule_hyper_parameters"  # Lightning's checkpoint key for the datamodule's init args
DATAMODULE = "kiwi.data.datamodule.PackedDataModule"


@dataclass(frozen=True)
class HeldoutData:
    """A datamodule config (instantiable with ``tokenizer=``) and where it came from, in words."""

    config: dict
    origin: str

    def describe(self) -> str:
        return f"{self.origin}: {describe_data(self.config)}"


def describe_data(data: Mapping) -> str:
    src = dict(data.get("source") or {})
    where = src.get("files") or src.get("path") or src.get("packages") or ""
    keys = ("seq_len", "val_seq_len", "val_documents", "val_tokens", "val_batch_size", "document_mask")
    return ", ".join([f"source={src.get('kind')} {where}".strip(),
                      *(f"{k}={data[k]}" for k in keys if k in data)])


def run_data_config(checkpoint: str | Path) -> dict | None:
    """The data arguments the training run of a Lightning ``.ckpt`` (or DeepSpeed checkpoint directory) used;
    None for HF directories, hub ids and checkpoints written before kiwi saved them."""
    path = Path(str(checkpoint)).expanduser()
    if path.is_dir():  # DeepSpeed: Lightning's client state sits in the rank-0 model-states file
        files = sorted(path.glob("*/mp_rank_00_model_states.pt"))
        if not files:
            return None
        path = files[-1]
    elif path.suffix != ".ckpt" or not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file; named in one line
        raise DataError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err
    data = ckpt.get(RUN_DATA_KEY) if isinstance(ckpt, Mapping) else None
    if not data:
        return None
    data = {k: v for k, v in dict(data).items() if k != "tokenizer"}
    return {"_target_": DATAMODULE, "_convert_": "all", **_plain(data)}


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def command_line_data_overrides() -> tuple[bool, list[str]]:
    """(``data=<group>`` was given, the ``data.<key>`` options set or deleted) on this run's command line.
    Outside a Hydra app (``run(cfg)`` from Python) there is no command line: (False, [])."""
    if not HydraConfig.initialized():
        return False, []
    group, keys = False, []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "data":
            group = True
        elif key.startswith("data."):
            keys.append(("~" if override.startswith("~") else "") + key)
    return group, keys


def _with_overrides(run_data: dict, cfg: DictConfig, keys: Sequence[str]) -> dict:
    """The run's data with the command line's ``data.<key>`` values (as the eval config resolved them)."""
    conf = OmegaConf.create(run_data)
    for key in keys:
        sub = key.lstrip("~").removeprefix("data.")
        if key.startswith("~"):
            parent, _, leaf = sub.rpartition(".")
            node = OmegaConf.select(conf, parent) if parent else conf
            if node is not None and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(conf, sub, OmegaConf.select(cfg, key), merge=False, force_add=True)
    return OmegaConf.to_container(conf, resolve=True)


def heldout_definitions(cfg: DictConfig, specs: Sequence) -> dict[str, HeldoutData]:
    """The held-out data definition of every model (``specs``: kiwi.eval.run.ModelSpec), decided and
    reported before any model is loaded."""
    group, keys = command_line_data_overrides()
    eval_data = _plain(cfg.get("data")) if cfg.get("data") is not None else None
    suffix = f" with {', '.join(keys)} from the command line" if keys else ""
    runs: dict[str, dict] = {}
    if not group:
        for spec in specs:
            if spec.checkpoint is None:
                continue
            data = run_data_config(spec.checkpoint)
            if data is not None:
                runs[spec.name] = _with_overrides(data, cfg, keys)
            elif Path(spec.checkpoint).suffix == ".ckpt":
                log.warning("heldout: checkpoint %s carries no data config (written before kiwi saved it); "
                            "using the eval config's data instead - repeat the run's data.* options to "
                            "reproduce its val/ppl", spec.checkpoint)
    shared = None
    distinct = {repr(sorted(d.items())): (name, d) for name, d in runs.items()}
    if len(distinct) == 1:
        shared = next(iter(distinct.values()))
    out: dict[str, HeldoutData] = {}
    for spec in specs:
        if spec.name in runs:
            out[spec.name] = HeldoutData(runs[spec.name], f"the training run's data (from {spec.checkpoint}){suffix}")
        elif shared is not None:
            out[spec.name] = HeldoutData(shared[1], f"the training run's data of {shared[0]!r}{suffix}")
        else:
            if eval_data is None:
                raise ConfigError("task 'heldout' needs a `data` config (the held-out documents): evaluate a "
                                  "training checkpoint or set data=<group> (e.g. data=corpus)")
            why = "data= on the command line" if group else "no training checkpoint carries one"
            out[spec.name] = HeldoutData(eval_data, f"the eval config's data ({why})")
    for name, held in out.items():
        log.info("heldout for %s: %s", name, held.describe())
    return out


def heldout_batches(data: HeldoutData, tokenizer, limit: int | None):
    """The validation batches of a data definition: the same documents, packing and labels as training's."""
    datamodule = instantiate(data.config, tokenizer=tokenizer)
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    return itertools.islice(loader, limit) if limit else loader
