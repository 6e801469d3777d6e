"""AdamW that keeps fp32 master weights for bf16 parameters.

Training with bf16 parameters (no autocast) makes every matmul read bf16 weights directly and halves
parameter and gradient memory, but adding a small update to a bf16 weight rounds it away. So the
optimizer holds an fp32 master copy of each low-precision parameter (plus fp32 Adam moments), updates
the master with torch's fused AdamW kernel and copies it back to the bf16 parameter. fp32 parameters
are updated in place, so with fp32 weights this is plain AdamW.

Memory per parameter: 2 (bf16 weight) + 2 (bf16 grad) + 12 (master, exp_avg, exp_avg_sq) bytes,
and fp32 copies of the gradients of one bucket of parameters at a time during ``step``.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.adamw import adamw

_BUCKET_NUMEL = 1 << 26  # fp32 grad copies made at once in step(): 256 MiB


class MasterWeightAdamW(Optimizer):
    """Drop-in AdamW (same hyper-parameters, decoupled weight decay) for bf16/fp16 parameters."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, fused: bool | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW hyper-parameters: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      fused=fused))

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            if p.dtype != torch.float32:
                state["master"] = p.detach().float()
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bucket, size = [], 0
            for p in params:
                bucket.append(p)
                size += p.numel()
                if size >= _BUCKET_NUMEL:
                    self._update(group, bucket)
                    bucket, size = [], 0
            if bucket:
                self._update(group, bucket)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        states = [self._state(p) for p in params]
        masters = [s.get("master", p) for s, p in zip(states, params, strict=True)]
        grads = [p.grad.float() if p.grad.dtype != torch.float32 else p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("MasterWeightAdamW does not support sparse gradients")
        fused = group["fused"]
        if fused is None:
            fused = all(p.device.type == "cuda" for p in params)
        beta1, beta2 = group["betas"]
        adamw(masters, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
              [s["step"] for s in states], foreach=None if fused else True, fused=fused, amsgrad=False,
              beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
              eps=group["eps"], maximize=False)
        low = [(p, s["master"]) for p, s in zip(params, states, strict=True) if "master" in s]
        if low:
            torch._foreach_copy_([p for p, _ in low], [m for _, m in low])

    def load_state_dict(self, state_dict: dict) -> None:
        # Optimizer.load_state_dict casts saved state to each parameter's dtype, which would round the
        # fp32 masters and moments to bf16; put the fp32 tensors back afterwards.
        super().load_state_dict(state_dict)
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups, strict=True):
            for idx, p in zip(saved_group["params"], group["params"], strict=True):
                saved = state_dict["state"].get(idx, {})
                for key in ("master", "exp_avg", "exp_avg_sq", "step"):
                    if key in saved:
                        self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32).clone()
