"""Hand back a plain Hugging Face model directory (safetensors, config, tokenizer, layer plan).

Also a small command for checkpoints written earlier, Lightning or DeepSpeed:
    python -m kiwi.train.export CHECKPOINT OUT_DIR [--dtype float32|bfloat16|float16]
The weights keep the checkpoint's dtype (fp32 stays fp32, exactly as the in-run export) unless --dtype
says otherwise. OUT_DIR is written under a temporary name and renamed in when complete.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write_plan_files(plan, out_dir: str | Path, base_model: str = "base") -> dict[str, Path]:
    """The plan as JSON, a text table, a mergekit passthrough YAML and a PNG picture."""
    from kiwi.upscale import plot_plan

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "layer_plan.json", "table": out / "layer_plan.txt",
             "mergekit": out / "layer_plan.mergekit.yaml", "plot": out / "layer_plan.png"}
    files["json"].write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    files["table"].write_text(plan.table() + "\n")
    files["mergekit"].write_text(plan.to_mergekit_yaml(base_model))
    plot_plan(plan, files["plot"])
    return files


def export_hf(model, tokenizer, plan, out_dir: str | Path, base_model: str = "base") -> Path:
    """Write the model directory under a temporary sibling name and rename it over ``out_dir`` when complete
    (an older export there is replaced only then), with the user's umask on every file."""
    from kiwi.atomic import apply_umask, write_dir_atomically

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        model.config.kiwi_layer_plan = plan.to_dict()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_plan_files(plan, tmp, base_model=base_model)
        apply_umask(tmp)

    out = write_dir_atomically(write, Path(out_dir))
    log.info("exported Hugging Face model to %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="where to write the Hugging Face model directory")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="cast the weights to this dtype (default: keep the checkpoint's dtype)")
    args = parser.parse_args(argv)
    from kiwi.model.build import torch_dtype
    from kiwi.train.checkpoint import load_training_checkpoint

    dtype = torch_dtype(args.dtype) if args.dtype else None
    model, tokenizer, plan = load_training_checkpoint(args.checkpoint, dtype=dtype)
    base = getattr(model.config, "kiwi_base_model", None) or "base"
    print(export_hf(model, tokenizer, plan, args.out_dir, base_model=base))


if __name__ == "__main__":
    main()
