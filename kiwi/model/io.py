"""Model I/O beside the model: load an HF directory, hub id or training checkpoint, and write an HF export.

Lightning ``.ckpt`` files carry the upscaled HF config and the layer plan (``KiwiLM.on_save_checkpoint``),
so a checkpoint loads without the base weights or a Trainer; DeepSpeed checkpoint directories are first
consolidated into one fp32 state dict. An export is a plain Hugging Face model directory (safetensors,
config, tokenizer) with the layer plan files beside it.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kiwi.atomic import apply_umask, write_dir_atomically
from kiwi.errors import CheckpointError
from kiwi.hub import check_hub
from kiwi.model.build import hub_error, resolve_attn, torch_dtype
from kiwi.upscale import LayerPlan, remove_layers, write_plan_files

log = logging.getLogger(__name__)


def load_model(path: str | Path, dtype: str = "float32", attn_implementation: str = "auto",
               device: str = "cpu"):
    """(model, tokenizer, plan or None) from an HF directory or hub id, a Lightning ``.ckpt`` file, or a
    DeepSpeed checkpoint directory (converted to a consolidated state dict first)."""
    p = Path(str(path)).expanduser()
    attn = resolve_attn(attn_implementation, torch.device(device).type)
    if p.is_dir() and (p / "config.json").exists() or not p.exists():
        why = check_hub(str(path))
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype),
                                                         attn_implementation=attn)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except OSError as err:
            raise hub_error("model", str(path), why, err) from err
        plan_dict = getattr(model.config, "kiwi_layer_plan", None)
        return model, tokenizer, LayerPlan.from_dict(plan_dict) if plan_dict else None
    return load_training_checkpoint(p, dtype=torch_dtype(dtype), attn_implementation=attn)


def is_deepspeed_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "latest").exists() or any(path.glob("*/mp_rank_*_model_states.pt")))


def read_checkpoint(path: Path) -> dict:
    if is_deepspeed_dir(path):
        # lazy: Lightning's DeepSpeed helpers are needed only for DeepSpeed checkpoint directories
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(tmp) / "model.ckpt"))
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    raise FileNotFoundError(f"checkpoint {str(path)!r}: not a .ckpt file, an HF model directory or a "
                            "DeepSpeed checkpoint directory")


def stored_dtype(state_dict: dict) -> torch.dtype:
    """The dtype of a state dict's floating-point weights (the most common one, should they differ)."""
    counts = Counter(v.dtype for v in state_dict.values() if torch.is_tensor(v) and v.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def load_training_checkpoint(path: str | Path, dtype: torch.dtype | None = torch.float32,
                             attn_implementation: str = "sdpa"):
    """(model, tokenizer, plan) from a Lightning or DeepSpeed checkpoint written by ``kiwi.train``;
    ``dtype=None`` keeps the dtype the weights are stored in."""
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
    plan = LayerPlan.from_dict(meta["plan"])
    skipped = skipped_in_training(ckpt, path)
    if skipped:
        plan = remove_layers(model, plan, skipped)
        log.info("checkpoint %s: grow_in_steps layers %s had not joined at step %s (they returned their input); "
                 "loaded without them, as trained: %d layers", path, skipped, ckpt.get("global_step"),
                 plan.n_target)
    tok_dir = meta.get("tokenizer_dir")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, TypeError) as err:
        raise OSError(f"checkpoint {str(path)!r}: cannot load its tokenizer from {tok_dir!r}: {err}") from err
    return model.eval(), tokenizer, plan


def skipped_in_training(ckpt: dict, path: Path) -> list[int]:
    """The layers the run skipped when ``ckpt`` was saved (grow_in_steps stages not joined yet). A checkpoint
    of an older kiwi does not say; one saved mid-growth by it is refused rather than loaded with every layer."""
    meta = ckpt["kiwi"]
    if "skipped_layers" in meta:
        return [int(j) for j in meta["skipped_layers"]]
    growth = next((v for k, v in (ckpt.get("callbacks") or {}).items() if str(k).startswith("GrowInSteps")), None)
    step, total = ckpt.get("global_step"), (ckpt.get("hyper_parameters") or {}).get("total_steps")
    if growth is not None and step is not None and total is not None and step < total:
        joined = sorted(int(k) for k in growth.get("joined_at", {}) or growth.get("grown", []))
        raise CheckpointError(f"checkpoint {str(path)!r}: saved at step {step} of {total} while growing in steps "
                              f"(grow_in_steps stages joined: {joined}) by an older kiwi that did not record which "
                              "layers were still skipped, so it cannot be loaded as trained; use a checkpoint from "
                              "the end of the run or one written by this kiwi")
    return []


def export_hf(model, tokenizer, plan, out_dir: str | Path, base_model: str = "base") -> Path:
    """Write the model directory under a temporary sibling name and rename it over ``out_dir`` when complete
    (an older export there is replaced only then), with the user's umask on every file."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        model.config.kiwi_layer_plan = plan.to_dict()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_plan_files(plan, tmp, base_model=base_model, dtype=model.dtype)
        apply_umask(tmp)

    out = write_dir_atomically(write, Path(out_dir))
    log.info("exported Hugging Face model to %s", out)
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None) -> Path:
    """An HF directory from a training checkpoint; ``dtype=None`` keeps the checkpoint's dtype (exact)."""
    model, tokenizer, plan = load_training_checkpoint(checkpoint, dtype=torch_dtype(dtype) if dtype else None)
    base = getattr(model.config, "kiwi_base_model", None) or "base"
    return export_hf(model, tokenizer, plan, out_dir, base_model=base)
