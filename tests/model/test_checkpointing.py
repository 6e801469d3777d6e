"""Checkpointing must change memory, never gradients."""

from __future__ import annotations

import pickle

import pytest
import torch

from kiwi.model.attention import packed_position_ids
from kiwi.model.checkpointing import apply_activation_checkpointing
from kiwi.model.loss import lm_nll
from kiwi.upscale import decoder_layers
from tests.helpers import tiny_qwen2

DOCS = [9, 4, 11]


def _batch():
    torch.manual_seed(3)
    ids = torch.randint(0, 256, (2, sum(DOCS)))
    pos = packed_position_ids(DOCS).expand(2, -1)
    labels = ids.clone()
    labels[:, 0] = -100
    labels[:, DOCS[0]] = -100
    return ids, pos, labels


def _grads(model):
    model.train()
    model.zero_grad(set_to_none=True)
    ids, pos, labels = _batch()
    nll, n = lm_nll(model, ids, labels, pos, chunk=16)
    (nll / n).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(("mode", "every", "expected"), [
    ("full", 1, [0, 1, 2, 3]), ("every_k", 2, [0, 2]), ("every_k", 3, [0, 3]), ("mlp", 1, [0, 1, 2, 3]),
])
def test_checkpointed_gradients_equal_plain(mode, every, expected):
    reference = _grads(tiny_qwen2())
    model = tiny_qwen2()
    assert apply_activation_checkpointing(model, mode, every) == expected
    grads = _grads(model)
    assert grads.keys() == reference.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, reference[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(("mode", "every", "recomputed"), [
    ("full", 1, {0, 1, 2, 3}), ("every_k", 2, {0, 2}), ("mlp", 1, set()), ("none", 1, set()),
])
def test_modes_recompute_the_chosen_layers_only(mode, every, recomputed):
    model = tiny_qwen2()
    apply_activation_checkpointing(model, mode, every)
    layers = decoder_layers(model)
    attn_calls = [_count_calls(layer.self_attn.q_proj) for layer in layers]
    mlp_calls = [_count_calls(layer.mlp.up_proj) for layer in layers]
    _grads(model)
    for idx in range(len(layers)):
        assert len(attn_calls[idx]) == (2 if idx in recomputed else 1), idx
        mlp_recomputed = idx in recomputed or mode == "mlp"
        assert len(mlp_calls[idx]) == (2 if mlp_recomputed else 1), idx


def test_no_recompute_without_grad_and_modes_replace_each_other():
    model = tiny_qwen2()
    keys = list(model.state_dict())
    apply_activation_checkpointing(model, "mlp")
    apply_activation_checkpointing(model, "every_k", 2)
    layers = decoder_layers(model)
    assert [type(layer.mlp).__name__ for layer in layers] == ["Qwen2MLP"] * 4
    apply_activation_checkpointing(model, "mlp")
    assert list(model.state_dict()) == keys
    assert not any(layer.gradient_checkpointing for layer in layers)
    restored = pickle.loads(pickle.dumps(model))
    assert type(decoder_layers(restored)[0].mlp).__name__ == "CheckpointedQwen2MLP"
    calls = _count_calls(layers[0].mlp.up_proj)
    ids, pos, labels = _batch()
    with torch.no_grad():
        lm_nll(model.train(), ids, labels, pos)
    assert len(calls) == 1
    apply_activation_checkpointing(model, "none")
    assert type(layers[0].mlp).__name__ == "Qwen2MLP"


def test_invalid_mode_and_every_are_rejected():
    model = tiny_qwen2()
    with pytest.raises(ValueError, match="'selective'.*none"):
        apply_activation_checkpointing(model, "selective")
    with pytest.raises(ValueError, match="every >= 1"):
        apply_activation_checkpointing(model, "every_k", 0)
    with pytest.raises(TypeError, match="no decoder layers"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), "full")
