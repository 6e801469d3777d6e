"""Hand back a plain Hugging Face model directory (safetensors, config, tokenizer, layer plan).

A small command for checkpoints written earlier, Lightning or DeepSpeed:
    python -m kiwi.train.export CHECKPOINT OUT_DIR [--dtype float32|bfloat16|float16]
The weights keep the checkpoint's dtype (fp32 stays fp32, exactly as the in-run export) unless --dtype
says otherwise. OUT_DIR is written under a temporary name and renamed in when complete.
"""

# Only the command line: loading and writing live in kiwi.model.io, beside the model.

from __future__ import annotations

import argparse

from kiwi.cli import report_errors
from kiwi.model.io import export_checkpoint


@report_errors  # a KiwiError (e.g. a checkpoint that cannot be loaded as trained) ends in one line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="where to write the Hugging Face model directory")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="cast the weights to this dtype (default: keep the checkpoint's dtype)")
    args = parser.parse_args(argv)
    print(export_checkpoint(args.checkpoint, args.out_dir, dtype=args.dtype))


if __name__ == "__main__":
    main()
