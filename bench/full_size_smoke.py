"""Full-size smoke on CPU through the real entry points: Qwen2.5-0.5B's exact shape and tokenizer.

Proves the default config's path works at 702.8M params with the real 151,936-row vocabulary: surgery
(24 -> 38 layers), chunked loss over 151,936 logits, checkpoint, HF export, held-out perplexity after
training (one document), and evaluate.py on the export and on the base (2 rows of each benchmark sample,
one WikiText-2 page). On 2 shared cores a 1,024-token forward pass takes ~1 min, hence the small sizes.
Stages run as separate processes; each one's wall time and peak RSS (``os.wait4``) go to
``<results>/summary.json`` with the stage logs. Needs ~15-20 GiB of RAM and ~20 GB of disk under ``--work``.

    OMP_NUM_THREADS=2 python bench/full_size_smoke.py [--work /tmp/kiwi-full-smoke] [--results DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

# Qwen/Qwen2.5-0.5B's config.json (architecture fields), so the random-init base has the real shape.
QWEN25_05B = dict(
    vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32_768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu", initializer_range=0.02, bos_token_id=151_643,
    eos_token_id=151_643, use_sliding_window=False, sliding_window=32_768, max_window_layers=24,
)
EXPECTED = "38 layers, 702.8M params"


def make_base(out: Path) -> None:
    """Random-init Qwen2.5-0.5B-shaped model + the exact tokenizer, saved (bf16, as on the hub)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from kiwi.data.qwen_tokenizer import qwen25_tokenizer_dir

    config = Qwen2Config(**QWEN25_05B)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    print(f"base: {config.num_hidden_layers} layers, {n / 1e6:.1f}M params")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(qwen25_tokenizer_dir()).save_pretrained(out)


def stage(name: str, cmd: list[str], log_dir: Path, env: dict) -> dict:
    """Run one stage as a child process; its wall time and peak RSS."""
    log = log_dir / f"{name}.log"
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    row = {"stage": name, "rc": rc, "wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
           "cmd": cmd}
    print(f"[{name}] rc {rc}, {wall:.0f} s, peak RSS {row['peak_rss_gib']} GiB (log: {log})", flush=True)
    if rc != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"stage {name} failed (rc {rc}); see {log}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/kiwi-full-smoke"), help="models, checkpoints")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "bench/results" / f"cpu-{datetime.date.today().isoformat()}/full_size_smoke")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--limit", type=int, default=2, help="rows of each multiple-choice task (WikiText-2: 1 page)")
    parser.add_argument("--make-base", type=Path, help=argparse.SUPPRESS)  # internal: the first stage
    args = parser.parse_args()
    if args.make_base:
        make_base(args.make_base)
        return

    wikitext = SHARED / "wikitext-2-raw/valid.txt"
    bench = SHARED / "benchmarks"
    if not wikitext.exists() or not bench.exists():
        raise SystemExit(f"needs the shared dev data ({wikitext}, {bench})")
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.setdefault("OMP_NUM_THREADS", "2")
    base, train_dir = args.work / "base", args.work / "train"
    py = sys.executable
    load_start = os.getloadavg()
    rows = [stage("make_base", [py, __file__, "--make-base", str(base)], args.results, env)]

    # Training data: WikiText-2 (raw text, one document per article) through data=local's code path.
    rows.append(stage("train", [
        py, "train.py", f"model.base={base}", "trainer=cpu", "data=local", f"data.source.files=[{wikitext}]",
        "data.source.format=txt", "data.source.sample_by=wikitext", f"data.seq_len={args.seq_len}",
        "data.batch_size=1", "data.num_workers=0", "data.val_documents=1", "validate_before=false",
        f"trainer.max_steps={args.steps}",
        "trainer.log_every_n_steps=1", f"callbacks.model_checkpoint.every_n_train_steps={args.steps}",
        "logger=csv", f"hydra.run.dir={train_dir}",
        # Lightning's default CheckpointIO buffers the whole 8.4 GB checkpoint in RAM before writing it.
        "+trainer.plugins=[{_target_:kiwi.train.checkpoint.StreamingCheckpointIO}]",
    ], args.results, env))
    train_log = (args.results / "train.log").read_text()
    m = re.search(r"-> (\d+) layers, ([\d.]+)M params", train_log)
    if not m or f"{m.group(1)} layers, {m.group(2)}M params" != EXPECTED:
        raise SystemExit(f"train.py did not report '{EXPECTED}' (found {m.group(0) if m else 'nothing'})")
    hf = train_dir / "hf_model"
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    if not (hf / "config.json").exists() or not ckpt.exists():
        raise SystemExit(f"missing the export ({hf}) or the checkpoint ({ckpt})")

    tasks = [
        f"tasks.hellaswag.data_files={bench / 'hellaswag_validation_sample.jsonl'}",
        f"tasks.arc_challenge.data_files={bench / 'arc_challenge_test_sample.jsonl'}",
        f"tasks.openbookqa.data_files={bench / 'openbookqa_test_sample.jsonl'}",
        f"tasks.wikitext.data_files={wikitext}", "run_tasks=[hellaswag,arc_challenge,openbookqa,wikitext]",
        f"limit={args.limit}", "tasks.wikitext.limit=1", f"max_length={args.seq_len}", "progress=false", "device=cpu",
    ]
    for name, which in (("eval_export", ["compare_base=false", "evaluate_model=false", f"checkpoints=[{hf}]"]),
                        ("eval_base", ["compare_base=true", "evaluate_model=false"])):
        rows.append(stage(name, [py, "evaluate.py", f"model.base={base}", *which, *tasks,
                                 f"hydra.run.dir={args.work / name}"], args.results, env))
        for f in (args.work / name / "results.json", args.work / name / "results.md"):
            (args.results / f"{name}-{f.name}").write_text(f.read_text())
    for f in [train_dir / "perplexity_report.json", train_dir / "csv" / "metrics.csv"]:
        if f.exists():
            (args.results / f"train-{f.name}").write_text(f.read_text())

    summary = {
        "model": f"random-init Qwen2.5-0.5B shape -> {EXPECTED} (from train.log)",
        "seq_len": args.seq_len, "steps": args.steps, "eval_limit": args.limit,
        "checkpoint_gib": round(ckpt.stat().st_size / 2**30, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}",
        "load_1_5_15_start": load_start, "load_1_5_15_end": os.getloadavg(), "stages": rows,
    }
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'stage':<12} {'wall s':>8} {'peak RSS GiB':>13}")
    for r in rows:
        print(f"{r['stage']:<12} {r['wall_s']:>8} {r['peak_rss_gib']:>13}")


if __name__ == "__main__":
    main()
