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


def stored_dtype(state_dict: dict) -> torch.dtype:
    """The dtype of a state dict's floating-point weights (the most common one, should they differ)."""
    from collections import Counter

    counts = Counter(v.dtype for v in state_dict.values() if torch.is_tensor(v) and v.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def load_training_checkpoint(path: str | Path, dtype: torch.dtype | None = torch.float32,
                             attn_implementation: str = "sdpa"):
    """(model, tokenizer, plan) from a Lightning or DeepSpeed checkpoint written by ``kiwi.train``;
    ``dtype=None`` keeps the dtype the weights are stored in."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from kiwi.upscale import LayerPlan

    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = ckpt.get("kiwi")
    if meta is None:
        raise ValueError(f"checkpoint {str(path)!r} was not written by kiwi.train (no 'kiwi' entry)")
    if dtype is None:
        dtype = stored_dtype(ckpt["state_dict"])
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


def writes_directories(strategy) -> bool:
    """Whether ``strategy.save_checkpoint`` writes a directory of files (DeepSpeed; FSDP sharded)."""
    name = type(strategy).__name__
    return "DeepSpeed" in name or ("FSDP" in name and getattr(strategy, "_state_dict_type", "") == "sharded")


def publish_checkpoint_dirs(strategy, force: bool = False) -> None:
    """Make ``strategy`` write each checkpoint under a temporary name (the same on every rank) and rename
    it over the target once every rank has finished, so a crash mid-save leaves the previous checkpoint
    whole (``kiwi.atomic.publish_dir``). Only for strategies that write directories (Lightning's own file
    writes are already atomic), or with ``force``."""
    if not (force or writes_directories(strategy)):
        return
    from kiwi.atomic import publish_dir, remove

    save = strategy.save_checkpoint

    def save_atomically(checkpoint, filepath, storage_options=None):
        out = Path(strategy.broadcast(str(filepath)))
        tmp = out.with_name(f"{out.name}.tmp-step{checkpoint.get('global_step', 0)}")
        if strategy.is_global_zero:
            remove(tmp)
        strategy.barrier()
        if storage_options is None:
            save(checkpoint, str(tmp))
        else:
            save(checkpoint, str(tmp), storage_options)
        strategy.barrier()  # every rank's shard is in tmp
        if strategy.is_global_zero:
            publish_dir(tmp, out, replace=True)
        strategy.barrier()

    strategy.save_checkpoint = save_atomically



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
