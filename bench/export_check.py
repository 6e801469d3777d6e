"""A checkpoint and its export are the same model: logits of the trained module (loaded by kiwi from the
Lightning/DeepSpeed checkpoint) equal those of the export loaded by plain ``transformers``.

    python bench/export_check.py CHECKPOINT EXPORT_DIR [--tokens 512] [--device cuda] [--out check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("export_dir")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None, help="write the result here as JSON")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from kiwi.model.io import load_model

    exported = AutoModelForCausalLM.from_pretrained(args.export_dir, attn_implementation="sdpa")
    dtype = str(exported.dtype).removeprefix("torch.")
    trained, _, _ = load_model(args.checkpoint, dtype=dtype, attn_implementation="sdpa", device=args.device)
    torch.manual_seed(0)
    ids = torch.randint(0, exported.config.vocab_size, (1, args.tokens), device=args.device)
    with torch.no_grad():
        a = trained.to(args.device).eval()(input_ids=ids).logits.float()
        del trained
        b = exported.to(args.device).eval()(input_ids=ids).logits.float()
    diff = float((a - b).abs().max())
    result = {"checkpoint": args.checkpoint, "export": args.export_dir, "dtype": dtype, "tokens": args.tokens,
              "layers": exported.config.num_hidden_layers, "max_abs_logit_diff": diff, "equal": diff == 0.0}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
