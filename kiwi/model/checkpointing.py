"""Activation checkpointing of Qwen2 decoder layers, whole or MLP-only.

At 32k tokens per row the saved activations of 38 layers do not fit next to the optimizer state,
while recomputing every layer costs ~1/3 more compute. The modes trade the two: ``full`` recomputes
every layer, ``every_k`` every k-th layer, and ``mlp`` only the MLP (its four [T, 4864] activations
are most of a layer's memory; attention is not recomputed).

Whole layers use transformers' own hook: ``Qwen2DecoderLayer`` is a ``GradientCheckpointingLayer``
whose ``forward`` runs through ``layer._gradient_checkpointing_func`` when
``layer.gradient_checkpointing`` is set, in training mode with grad enabled. We set it per layer with
non-reentrant ``torch.utils.checkpoint`` (reentrant checkpointing drops gradients of inputs passed
as keywords and does not compose with torch.compile). The MLP has no such hook, so its instance
is switched to a subclass whose ``forward`` is checkpointed; parameter names, and so state dicts,
do not change.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from kiwi.upscale.surgery import decoder_layers

CHECKPOINT_MODES = ("none", "full", "every_k", "mlp")

_ORIGINAL_CLASS = "_kiwi_uncheckpointed_class"
_CHECKPOINTED_CLASSES: dict[type, type] = {}


class _CheckpointedForwardMixin:
    """Recompute this module in backward instead of saving its activations."""

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


def _checkpointed_class(cls: type) -> type:
    if cls not in _CHECKPOINTED_CLASSES:
        name = f"Checkpointed{cls.__name__}"
        sub = type(name, (_CheckpointedForwardMixin, cls), {"__module__": __name__})
        globals()[name] = sub  # so pickle can find the class by name
        _CHECKPOINTED_CLASSES[cls] = sub
    return _CHECKPOINTED_CLASSES[cls]


def _reset(layer: nn.Module) -> None:
    layer.gradient_checkpointing = False
    mlp = layer.mlp
    original = mlp.__dict__.pop(_ORIGINAL_CLASS, None)
    if original is not None:
        mlp.__class__ = original


def _checkpoint_whole_layer(layer: nn.Module) -> None:
    if not hasattr(type(layer), "gradient_checkpointing"):
        raise TypeError(
            f"{type(layer).__name__} is not a transformers GradientCheckpointingLayer; cannot checkpoint it"
        )
    layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    layer.gradient_checkpointing = True


def _checkpoint_mlp(layer: nn.Module) -> None:
    mlp = layer.mlp
    original = type(mlp)
    mlp.__class__ = _checkpointed_class(original)
    mlp.__dict__[_ORIGINAL_CLASS] = original


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 1) -> list[int]:
    """Set the checkpointing ``mode`` on every decoder layer (replacing any earlier mode) and return
    the indices of the layers that are (fully or partly) recomputed. ``every`` is used by ``every_k``:
    layers 0, k, 2k, ... are checkpointed."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(
            f"activation checkpointing mode {mode!r} is not supported; choose one of {list(CHECKPOINT_MODES)}"
        )
    if mode == "every_k" and (not isinstance(every, int) or every < 1):
        raise ValueError(f"activation checkpointing every_k needs every >= 1 (an int), got {every!r}")
    layers = decoder_layers(model)
    # HF's model-level flag would re-enable checkpointing on every layer; ours is per layer.
    if getattr(model, "is_activation_checkpointing", False):
        model.activation_checkpointing_disable()
    chosen = []
    for idx, layer in enumerate(layers):
        _reset(layer)
        if mode == "full" or (mode == "every_k" and idx % every == 0):
            _checkpoint_whole_layer(layer)
            chosen.append(idx)
        elif mode == "mlp":
            _checkpoint_mlp(layer)
            chosen.append(idx)
    return chosen
