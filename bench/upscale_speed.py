"""Wall time and peak memory of kiwi.upscale.upscale on a Qwen2.5-0.5B-sized model (random weights).

Each measurement runs in a fresh subprocess so ru_maxrss (peak RSS) belongs to that run alone.
Target (issue #3): 24 -> 38 layers in < 10 s with peak memory < 3x the source model's size.

    python bench/upscale_speed.py [--dtypes float32 bfloat16] [--strategies interleave solar]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
    num_hidden_layers=24, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    rope_theta=1e6,
)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(dtype_name: str, strategy: str, mode: str) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kiwi.upscale import count_parameters, make_plan, upscale

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = getattr(torch, dtype_name)
    base_rss = _rss_bytes()
    cfg = Qwen2Config(**QWEN25_05B)
    # Random weights without a second full-size init buffer: skeleton on meta, then fill in place.
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    model = model.to(dtype).to_empty(device="cpu")
    model.tie_weights()  # before filling, so the untied lm_head buffer is never touched (not resident)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        model.model.rotary_emb.inv_freq.copy_(
            1.0 / (1e6 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
        )
    model.eval()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_before = _rss_bytes()
    peak_before = _peak_bytes()

    plan = make_plan(strategy, 24, 38, identity_init=True)
    t0 = time.perf_counter()
    new = upscale(model, plan, consume_source=mode == "move")
    seconds = time.perf_counter() - t0
    peak_after = _peak_bytes()
    assert len(new.model.layers) == 38
    assert count_parameters(new) == 702_806_144, count_parameters(new)
    return {
        "dtype": dtype_name,
        "strategy": strategy,
        "mode": mode,
        "seconds": seconds,
        "model_gib": model_bytes / 2**30,
        "rss_before_gib": (rss_before - base_rss) / 2**30,
        "peak_gib": (max(peak_after, peak_before) - base_rss) / 2**30,
        "peak_over_model": (peak_after - base_rss) / model_bytes,
        "upscale_extra_gib": (peak_after - rss_before) / 2**30,
        "peak_grew": peak_after > peak_before,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--strategies", nargs="+", default=["interleave", "solar"])
    parser.add_argument("--modes", nargs="+", default=["copy", "move"],
                        help="copy: the source stays usable; move: consume_source=True, as build_model does")
    parser.add_argument("--child", nargs=3, metavar=("DTYPE", "STRATEGY", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    for dtype in args.dtypes:
        for strategy in args.strategies:
            for mode in args.modes:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", dtype, strategy, mode],
                    check=True, capture_output=True, text=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch
    import transformers

    print(f"# upscale 24 -> 38 (Qwen2.5-0.5B-sized, random weights, identity_init=True), "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {time.strftime('%Y-%m-%d')}")
    print("memory columns are process RSS above the post-import baseline; peak covers source + new model")
    head = (f"{'dtype':<9} {'strategy':<11} {'mode':<5} {'time_s':>7} {'model_GiB':>9} {'peak_GiB':>8} "
            f"{'peak/model':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['dtype']:<9} {r['strategy']:<11} {r['mode']:<5} {r['seconds']:>7.2f} {r['model_gib']:>9.2f} "
              f"{r['peak_gib']:>8.2f} {r['peak_over_model']:>10.2f}")


if __name__ == "__main__":
    main()
