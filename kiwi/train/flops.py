"""Model FLOPs per trained token and MFU, for packed document-masked batches.

Counting convention (model FLOPs, as in PaLM's MFU: recomputation from activation checkpointing is
*not* counted, so MFU compares runs with different checkpointing fairly; a multiply-add is 2 FLOPs;
backward costs twice the forward):

Matmuls. Per decoder layer the weight matrices hold
    P_layer = H*(n_q*d) + 2*H*(n_kv*d) + (n_q*d)*H + 3*H*I
(q, k, v, o projections and the SwiGLU gate/up/down), plus the lm_head P_head = V*H, which is a
matmul even when tied to the embedding (the embedding lookup itself is free). Biases, norms,
RoPE and the softmax are ignored (<0.1%). So
    matmul FLOPs per token (fwd+bwd) = 6 * (L * P_layer + V*H).
For Qwen2.5-0.5B widths (H=896, I=4864, n_q=14, n_kv=2, d=64, V=151,936) at 38 layers this is
6 * 702,693,376 = 4.216 GFLOP/token.

Attention. With document-masked causal attention a query at 0-based position p within its document
attends p+1 keys (itself and the p before it). Per (query, key) pair and layer, QK^T and AV cost
2*d*n_q FLOPs each in the forward, so fwd+bwd costs 3 * 4 * d * n_q = 12 * d * n_q. A document of
n tokens has n(n+1)/2 pairs, so a batch whose documents have lengths n_1..n_k costs
    attention FLOPs (fwd+bwd) = 12 * L * n_q * d * sum_j n_j (n_j + 1) / 2,
which depends on how the batch is packed: one 32k document costs ~15x more than 15 documents of 2.2k.
The FLOPs per token of a batch are (matmul FLOPs * tokens + attention FLOPs) / tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

# Dense bf16 tensor-core peak FLOP/s (no sparsity), from NVIDIA's data sheets.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
}


def _dims(config) -> tuple[int, int, int, int, int, int, int]:
    n_q = config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // n_q
    return (config.num_hidden_layers, config.hidden_size, config.intermediate_size, n_q,
            config.num_key_value_heads, d, config.vocab_size)


def matmul_params(config) -> int:
    """Weights that multiply every token: all decoder-layer projections plus the lm_head."""
    layers, h, inter, n_q, n_kv, d, vocab = _dims(config)
    per_layer = h * n_q * d + 2 * h * n_kv * d + n_q * d * h + 3 * h * inter
    return layers * per_layer + vocab * h


def matmul_flops_per_token(config) -> int:
    """Forward + backward FLOPs of the weight matmuls for one token: 6 * matmul_params."""
    return 6 * matmul_params(config)


def attention_flops(doc_lengths: Iterable[int], config) -> int:
    """Forward + backward attention FLOPs of a batch of documents with these lengths (all rows)."""
    layers, _, _, n_q, _, d, _ = _dims(config)
    pairs = 0
    for n in doc_lengths:
        if n < 0:
            raise ValueError(f"document lengths must be >= 0, got {n}")
        pairs += n * (n + 1) // 2
    return 12 * layers * n_q * d * pairs


def flops_per_token(config, doc_lengths: Iterable[int]) -> float:
    """Average fwd+bwd model FLOPs per token of a batch made of documents with these lengths."""
    lengths = list(doc_lengths)
    tokens = sum(lengths)
    if tokens <= 0:
        raise ValueError("flops_per_token needs at least one token")
    return matmul_flops_per_token(config) + attention_flops(lengths, config) / tokens


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a CUDA device name as torch reports it (e.g. 'NVIDIA H100 80GB HBM3');
    None for CPUs and unknown devices, for which MFU is not reported."""
    if not device_name:
        return None
    name = device_name.upper()
    if "H200" in name:
        return PEAK_BF16_FLOPS["H200"]
    if "H100" in name:
        return PEAK_BF16_FLOPS["H100 PCIe" if "PCIE" in name else "H100 SXM"]
    if "A100" in name:
        return PEAK_BF16_FLOPS["A100"]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the peak is unknown (CPU)."""
    if peak is None:
        return None
    if peak <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak}")
    return tokens_per_s * flops_per_token / peak
