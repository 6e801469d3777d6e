"""Distributed-training strategy factories that need Python objects Hydra cannot express (wrap policies,
layer classes). "Strategy" here is Lightning's word; kiwi.upscale's strategies choose layers."""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full", **kwargs) -> FSDPStrategy:
    """FSDP with one unit per decoder layer, so each layer is gathered just in time."""
    return FSDPStrategy(auto_wrap_policy={Qwen2DecoderLayer}, sharding_strategy=sharding_strategy,
                        state_dict_type=state_dict_type, **kwargs)
