"""Load a training checkpoint back into a plain HF model, without the base weights or a Trainer.

Lightning ``.ckpt`` files carry the upscaled HF config and the layer plan (``KiwiLM.on_save_checkpoint``);
DeepSpeed checkpoint directories are first consolidated into one fp32 state dict.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def is_deepspeed_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "latest").exists() or any(path.glob("*/mp_rank_*_model_states.pt")))


def read_checkpoint(path: Path) -> dict:
    if is_deepspeed_dir(path):
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(tmp) / "model.ckpt"))
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    raise FileNotFoundError(f"checkpoint {str(path)!r}: not a .ckpt file, an HF model directory or a "
                            "DeepSpeed checkpoint directory")


def load_training_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32,
                             attn_implementation: str = "sdpa"):
    """(model, tokenizer, plan) from a Lightning or DeepSpeed checkpoint written by ``kiwi.train``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from kiwi.upscale import LayerPlan

    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = ckpt.get("kiwi")
    if meta is None:
        raise ValueError(f"checkpoint {str(path)!r} was not written by kiwi.train (no 'kiwi' entry)")
    hf = dict(meta["hf_config"])
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    config._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(path)!r} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.tie_weights()
    tok_dir = meta.get("tokenizer_dir")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, TypeError) as err:
        raise OSError(f"checkpoint {str(path)!r}: cannot load its tokenizer from {tok_dir!r}: {err}") from err
    return model.eval(), tokenizer, LayerPlan.from_dict(meta["plan"])



class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that streams ``torch.save`` to a temporary file, then renames it into place.

    Lightning's default (``TorchCheckpointIO``) serialises the whole checkpoint into memory before writing
    it, so saving needs the checkpoint's size again in RAM: at full size (702.8M params, fp32 + AdamW,
    8.4 GB) that killed a CPU run on a 24 GiB machine. This keeps the atomic rename without the copy.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
