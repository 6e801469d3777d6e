"""The whole DUS study in one command: per regime the base (step 1), then every variant x seed (step 2),
then the gather. Each step is the `train.py` command a user would type, run as a subprocess.

    python -m kiwi.study.run                                    # CPU profile, both regimes, 3 seeds
    python -m kiwi.study.run --profile study_gpu --out bench/results/study_gpu

Reads ../shared's Wikipedia (.jsonl.gz, held out by article) when it is present, else the offline
docstring corpus. Prints each command before running it and the wall time of the whole study at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIKIPEDIA = ROOT.parent / "shared" / "data" / "wikipedia-en-2015"
VARIANTS = "control_tokens,control_flops,interleave_id,interleave_id_2phase,interleave_id_lrcopy"
REGIMES = (2, 32)  # base tokens per parameter: under-trained (as the v1 study) and over-trained


def data_overrides(corpus: str) -> list[str]:
    if corpus == "auto":
        corpus = "wikipedia" if any(WIKIPEDIA.glob("*.jsonl.gz")) else "docstrings"
    if corpus == "wikipedia":
        return ["data=local", "data.source.files=[${paths.shared_dir}/data/wikipedia-en-2015/*.jsonl.gz]"]
    if corpus == "docstrings":
        return []
    raise ValueError(f"--corpus: expected auto, wikipedia or docstrings, got {corpus!r}")


def base_val_every(profile: str, tokens_per_param: float) -> list[str]:
    """~16 validations along the base's training whatever its length: its held-out curve and last doubling."""
    from hydra import compose, initialize_config_dir
    from transformers import Qwen2Config

    from kiwi.model.build import as_dict

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={profile}_base"])
    tiny = {k: v for k, v in as_dict(cfg.model.tiny).items() if k in Qwen2Config().to_dict()}
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in Qwen2ForCausalLM(Qwen2Config(**tiny)).parameters())
    steps = tokens_per_param * n_params / (cfg.data.batch_size * cfg.data.seq_len)
    return [f"trainer.val_check_interval={max(1, round(steps / 16))}"]


def sh(cmd: list[str], dry: bool) -> None:
    print("$", " ".join(cmd), flush=True)
    if not dry:
        subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="study_cpu", help="experiment pair <profile>_base / <profile>")
    p.add_argument("--regimes", default=",".join(map(str, REGIMES)), help="base tokens per parameter")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", default=VARIANTS)
    p.add_argument("--corpus", default="auto", help="auto | wikipedia | docstrings")
    p.add_argument("--out", default="docs/study", help="where the gather writes its tables and plot")
    p.add_argument("--wandb", default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("overrides", nargs="*", help="extra train.py overrides for both steps")
    args = p.parse_args(argv)
    if args.seeds < 2:
        raise SystemExit("--seeds: the paired intervals need at least 2 seeds")
    data = data_overrides(args.corpus)
    py = [sys.executable, "train.py"]
    start = time.perf_counter()
    sweeps = []
    for tpp in args.regimes.split(","):
        regime = [f"study.base_tokens_per_param={tpp}", *data, *args.overrides]
        sh([*py, f"experiment={args.profile}_base", *regime, *base_val_every(args.profile, float(tpp))],
           args.dry_run)
        sweep = f"logs/{args.profile}/tpp{tpp}"
        seeds = ",".join(str(s) for s in range(1, args.seeds + 1))
        sh([*py, "-m", f"experiment={args.profile}", *regime, f"seed={seeds}", f"+study={args.variants}",
            f"hydra.sweep.dir={sweep}"], args.dry_run)
        sweeps.append(sweep)
    wall = time.perf_counter() - start
    sh([sys.executable, "-m", "kiwi.study.gather", *sweeps, "--out", args.out, "--wandb", args.wandb],
       args.dry_run)
    if not args.dry_run:
        Path(args.out, "wall_time.json").write_text(json.dumps(
            {"study_wall_s": round(wall, 1), "regimes": args.regimes, "seeds": args.seeds,
             "variants": args.variants, "cpus": os.cpu_count()}, indent=2) + "\n")
        print(f"kiwi.study.run: whole study (bases + jobs) {wall / 60:.1f} min wall")
    return wall


if __name__ == "__main__":
    main()
