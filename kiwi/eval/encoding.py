"""Token-level request building, identical to lm-evaluation-harness's HF backend.

Which tokens count as "the continuation" changes log-likelihoods (a space can belong to either side), so
``encode_pair`` follows lm-eval's ``_encode_pair`` and the rolling windows follow
``get_rolling_token_windows`` + ``make_disjoint_window`` with ``context_len=1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# lm-eval's fallback when neither the model config nor the tokenizer gives a usable length.
DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_NO_MAX = 1000000000000000019884624838656


def encode(tokenizer, text: str) -> list[int]:
    """lm-eval encodes without special tokens for causal models (Qwen2 adds none anyway)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Trailing spaces of the context move into the continuation; the whole string is encoded once and
    split at the length of the context's own encoding (so merges across the seam go to the
    continuation)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    context_enc = encode(tokenizer, context)
    return context_enc, whole[len(context_enc) :]


def prefix_token_id(tokenizer) -> int:
    """Token that conditions the first token of a document: BOS if the tokenizer has one, else EOS."""
    for tok_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return int(tok_id)
    raise ValueError("tokenizer has neither a BOS nor an EOS token to condition the first token on")


def model_max_length(model_config, tokenizer, override: int | None = None) -> int:
    """lm-eval's ``max_length``: explicit value, else the model config's context size, else the
    tokenizer's, else 2048."""
    if override:
        return int(override)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model_config, attr, None)
        if value:
            return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max != _TOKENIZER_NO_MAX:
        return int(tok_max)
    return DEFAULT_MAX_LENGTH


def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_seq_len: int
) -> Iterator[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows that predict every token exactly once.

    The first window predicts the first ``max_seq_len`` tokens from ``[prefix] + tokens``; each later
    window predicts the next ``max_seq_len`` tokens (fewer at the end) conditioned on the tokens right
    before them, so the model input is always the ``max_seq_len`` tokens preceding the last target.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_seq_len, len(tokens))
    yield _disjoint([prefix_token] + tokens[: first - 1], tokens[:first])
    predicted = first
    while predicted < len(tokens):
        n_pred = min(len(tokens) - predicted, max_seq_len)
        end = predicted + n_pred
        yield _disjoint(tokens[end - max_seq_len - 1 : end - 1], tokens[end - n_pred : end])
        predicted += n_pred


def _disjoint(context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
    return context[: len(context) - (len(continuation) - 1)], continuation
