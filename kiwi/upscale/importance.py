"""Per-layer importance from how much each decoder block changes the residual stream.

Block influence (ShortGPT): BI = 1 - mean_t cos(h_in, h_out). Angular distance (Gromov et al.):
mean_t arccos(cos(h_in, h_out)) / pi. Both are measured with forward hooks on the decoder layers
themselves, because ``output_hidden_states[-1]`` is taken after the final norm and would distort the
last layer's score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kiwi.upscale.strategies import METRICS
from kiwi.upscale.surgery import decoder_layers


@dataclass(frozen=True)
class LayerMeasurement:
    """Everything one calibration pass yields; ``similarity_*`` are n_layers x n_layers matrices
    between layer outputs (for heatmaps)."""

    block_influence: list[float]
    angular: list[float]
    similarity_cosine: list[list[float]]
    similarity_angular: list[list[float]]
    n_tokens: int

    def scores(self, metric: str) -> list[float]:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        return list(getattr(self, metric))


def _as_batch(batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError("layer_scores: each batch must be an input_ids tensor or a mapping with 'input_ids'")
    out = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if out["input_ids"].dim() == 1:
        out = {k: v.unsqueeze(0) for k, v in out.items()}
    return out


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1.0, 1.0)


def measure_layers(model: torch.nn.Module, batches: Iterable[Any]) -> LayerMeasurement:
    """One no-grad, no-cache pass over ``batches`` (tensors or dicts with input_ids / attention_mask /
    position_ids); padding positions (attention_mask == 0) are ignored."""
    layers = decoder_layers(model)
    n = len(layers)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(index: int):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            captured[index] = (h_in.detach(), _first_tensor(output).detach())

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    cos_sum = torch.zeros(n, dtype=torch.float64)
    ang_sum = torch.zeros(n, dtype=torch.float64)
    sim_cos = torch.zeros(n, n, dtype=torch.float64)
    sim_ang = torch.zeros(n, n, dtype=torch.float64)
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = _as_batch(batch, device)
                captured.clear()
                model(**inputs, use_cache=False)
                if len(captured) != n:
                    raise RuntimeError(f"layer_scores: hooks fired for {len(captured)} of {n} layers")
                mask = inputs.get("attention_mask")
                keep = (
                    mask.bool()
                    if mask is not None
                    else torch.ones_like(inputs["input_ids"], dtype=torch.bool)
                )
                keep = keep.to(captured[0][0].device)
                outs = []
                for i in range(n):
                    h_in, h_out = captured[i]
                    c = _cos(h_in, h_out)[keep].double()
                    cos_sum[i] += c.sum().cpu()
                    ang_sum[i] += (torch.arccos(c) / math.pi).sum().cpu()
                    outs.append(torch.nn.functional.normalize(h_out[keep].float(), dim=-1))
                stacked = torch.stack(outs)  # [layers, tokens, hidden]
                pair = torch.einsum("itd,jtd->ijt", stacked, stacked).clamp(-1.0, 1.0).double()
                sim_cos += pair.sum(-1).cpu()
                sim_ang += (torch.arccos(pair) / math.pi).sum(-1).cpu()
                n_tokens += int(keep.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_tokens == 0:
        raise ValueError("layer_scores: no tokens seen (empty batches or all positions masked)")
    mean_cos = cos_sum / n_tokens
    return LayerMeasurement(
        block_influence=(1.0 - mean_cos).tolist(),
        angular=(ang_sum / n_tokens).tolist(),
        similarity_cosine=(sim_cos / n_tokens).tolist(),
        similarity_angular=(sim_ang / n_tokens).tolist(),
        n_tokens=n_tokens,
    )


def layer_scores(
    model: torch.nn.Module, batches: Iterable[Any], metric: str = "block_influence"
) -> list[float]:
    """Per-layer score; larger = the block transforms its input more (a candidate to duplicate under
    direction='most')."""
    if metric not in METRICS:
        raise ValueError(f"layer_scores: metric must be one of {list(METRICS)}, got {metric!r}")
    return measure_layers(model, batches).scores(metric)


def layer_similarity(
    model: torch.nn.Module, batches: Iterable[Any], metric: str = "cosine"
) -> list[list[float]]:
    """Mean cosine similarity (or angular distance) between every pair of layer outputs."""
    if metric not in ("cosine", "angular"):
        raise ValueError(f"layer_similarity: metric must be 'cosine' or 'angular', got {metric!r}")
    m = measure_layers(model, batches)
    return m.similarity_cosine if metric == "cosine" else m.similarity_angular
