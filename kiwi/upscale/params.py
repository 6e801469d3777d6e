"""Exact parameter counts from an HF config alone, so a parameter budget can pick the depth before
any weights are downloaded or built."""

from __future__ import annotations

from typing import Any

# Architectures whose decoder layer is: q/k/v/o projections, gated MLP, two RMSNorms (weight only).
_SUPPORTED = ("qwen2", "llama", "mistral")


def _attention_biases(config: Any) -> tuple[bool, bool]:
    """(q/k/v have bias, o_proj has bias). Qwen2 hard-codes qkv bias and no o_proj bias."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def layer_parameter_count(config: Any) -> int:
    """Parameters in one decoder layer."""
    if getattr(config, "model_type", None) not in _SUPPORTED:
        raise NotImplementedError(
            f"count_parameters: model_type {getattr(config, 'model_type', None)!r} not supported "
            f"(supported: {list(_SUPPORTED)})"
        )
    h = config.hidden_size
    n_heads = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_heads
    head_dim = getattr(config, "head_dim", None) or h // n_heads
    qkv_bias, o_bias = _attention_biases(config)
    q = h * n_heads * head_dim + (n_heads * head_dim if qkv_bias else 0)
    kv = 2 * (h * n_kv * head_dim + (n_kv * head_dim if qkv_bias else 0))
    o = n_heads * head_dim * h + (h if o_bias else 0)
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    inter = config.intermediate_size
    mlp = 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
    norms = 2 * h
    return q + kv + o + mlp + norms


def count_parameters(config_or_model: Any, n_layers: int | None = None) -> int:
    """Total parameters (tied embeddings counted once). For a model without ``n_layers`` the real
    tensors are counted; otherwise the exact formula from the config is used."""
    if hasattr(config_or_model, "parameters"):  # a model (torch.nn.Module); a config has no parameters()
        if n_layers is None:
            return sum(p.numel() for p in config_or_model.parameters())  # parameters() dedups ties
        config = config_or_model.config
    else:
        config = config_or_model
    per_layer = layer_parameter_count(config)
    layers = config.num_hidden_layers if n_layers is None else n_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"count_parameters: n_layers must be a non-negative integer, got {layers!r}")
    embed = config.vocab_size * config.hidden_size
    lm_head = 0 if getattr(config, "tie_word_embeddings", False) else embed
    final_norm = config.hidden_size
    return embed + lm_head + final_norm + layers * per_layer


def n_target_for_budget(config: Any, budget: float) -> int:
    """The deepest layer count whose total parameter count fits within ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise ValueError(f"param_budget must be a positive number, got {budget!r}")
    fixed = count_parameters(config, n_layers=0)
    if budget < fixed + layer_parameter_count(config):
        raise ValueError(
            f"param_budget={budget:.4g} is below the size of a 1-layer model "
            f"({fixed + layer_parameter_count(config):,} params)"
        )
    return int((budget - fixed) // layer_parameter_count(config))
