"""Liger's fused linear cross-entropy, the CUDA loss kernel (liger-kernel, see requirements-gpu.txt).

It does what ``kiwi.model.loss.chunked_nll_sum`` does (lm_head matmul + log-softmax + NLL, gradients
produced chunk by chunk in the forward pass, full logits never stored) in Triton kernels, so it is the
training loss on CUDA. It is imported lazily: it needs Triton and a GPU, and a CPU install lacks it.

We ask for ``reduction="sum"`` (kiwi normalises by the token count itself) and
``accum_dtype=torch.float32`` so the lm_head weight gradient is accumulated in fp32 even when the
weights are bf16.

DeepSpeed ZeRO-3 caveat: the kernel reads ``lm_head.weight`` directly, outside the module call that
ZeRO-3 hooks to gather a partitioned parameter, so under ZeRO-3 it sees an empty shard and fails (or
would need ``deepspeed.zero.GatheredParameters`` around the loss). kiwi's default strategy is ZeRO-2,
where parameters are not partitioned. The chunked fallback reads the weight the same way, so ZeRO-3 is
not supported by either. FSDP should work (the loss runs inside the root unit's forward, which gathers
lm_head) but is untested on GPUs here.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from kiwi.data.packing import IGNORE_INDEX


@functools.cache
def liger_available() -> bool:
    """True when liger-kernel is installed and a CUDA device is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def liger_nll_sum(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """fp32 sum over non-ignored positions of ``-log p(target)`` for ``hidden`` [N, H] on CUDA."""
    if hidden.device.type != "cuda":
        raise ValueError(f"liger fused linear cross-entropy needs CUDA tensors, got {hidden.device}")
    # lazy: liger-kernel is an optional GPU-only dependency (requirements-gpu.txt)
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    loss = liger_fused_linear_cross_entropy(
        hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum", accum_dtype=torch.float32
    )
    return loss.float()
