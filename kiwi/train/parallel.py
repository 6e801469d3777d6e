"""Where and on how many processes a run trains, read from the trainer config before the Trainer exists, and
the distributed-training strategy factories that need Python objects Hydra cannot express (wrap policies,
layer classes). "Strategy" here is Lightning's word; kiwi.upscale's strategies choose layers."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig, ListConfig
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full", **kwargs) -> FSDPStrategy:
    """FSDP with one unit per decoder layer, so each layer is gathered just in time."""
    return FSDPStrategy(auto_wrap_policy={Qwen2DecoderLayer}, sharding_strategy=sharding_strategy,
                        state_dict_type=state_dict_type, **kwargs)


def accelerator_device(trainer_cfg: DictConfig) -> str:
    """Where the model will run, so build_model picks the attention kernel for it (flex_attention on CUDA)."""
    acc = str(trainer_cfg.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def trainer_world_size(trainer_cfg: DictConfig) -> int:
    """Processes the Trainer will run (devices x num_nodes), read from its config so that the budget's steps
    are known before it is built. ``devices: auto`` (or -1) counts the GPUs, as Lightning does; on CPU it is 1."""
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, (list, ListConfig)):
        per_node = len(devices)
    elif devices in ("auto", -1):
        per_node = max(torch.cuda.device_count(), 1) if accelerator_device(trainer_cfg) == "cuda" else 1
    else:
        per_node = int(devices)
    return per_node * int(trainer_cfg.get("num_nodes") or 1)
