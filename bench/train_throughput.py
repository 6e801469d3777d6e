"""Training-step throughput: kiwi's fast path against stock Hugging Face, same model, same batch.

Baseline ("stock HF"): sdpa with a plain causal mask over the whole packed row (documents see each
other), ``model(input_ids, labels=...).loss`` (full logits), ``gradient_checkpointing_enable()``,
bf16 weights and fused AdamW on them. kiwi variants: document-masked attention from restarting
``position_ids`` (flex_attention on CUDA, sdpa on CPU), Liger fused linear cross-entropy on CUDA
(chunked fallback), a checkpointing mode, and either bf16 weights with fp32 masters in the optimizer
(``MasterWeightAdamW``) or fp32 weights under bf16 autocast. Each variant is measured for forward +
backward only and for the full optimizer step; warm-up steps are not timed.

MFU counts the document-masked model FLOPs of the batch (kiwi.train.flops) for every variant, so
the baseline is not credited for its extra cross-document attention.

    python bench/train_throughput.py --size tiny                 # CPU smoke run (fp32)
    python bench/train_throughput.py --size full --out $OUT/train_throughput.md   # H100
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kiwi.model.attention import resolve_attn_implementation
from kiwi.model.checkpointing import apply_activation_checkpointing
from kiwi.model.loss import lm_nll, resolve_loss_impl
from kiwi.model.master_weights import MasterWeightAdamW
from kiwi.train.flops import flops_per_token, mfu, peak_flops

SIZES = {
    # Qwen2.5-0.5B widths at Kiwi's 38 layers: 702.8M parameters.
    "full": dict(model=dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                            num_key_value_heads=2, num_hidden_layers=38, vocab_size=151_936),
                 seq_len=32_768, rows=1),
    "tiny": dict(model=dict(hidden_size=128, intermediate_size=384, num_attention_heads=4,
                            num_key_value_heads=2, num_hidden_layers=4, vocab_size=8192),
                 seq_len=2048, rows=1),
}


@dataclass(frozen=True)
class Variant:
    name: str
    kiwi: bool  # False: the stock-HF baseline
    ckpt: str = "full"
    every: int = 1
    precision: str = "bf16-master"  # or "autocast" (fp32 weights, bf16 autocast)
    compile: bool = False


VARIANTS = {
    v.name: v for v in [
        Variant("hf_baseline", kiwi=False),
        Variant("kiwi_ckpt_full", kiwi=True, ckpt="full"),
        Variant("kiwi_ckpt_mlp", kiwi=True, ckpt="mlp"),
        Variant("kiwi_ckpt_every2", kiwi=True, ckpt="every_k", every=2),
        Variant("kiwi_ckpt_every3", kiwi=True, ckpt="every_k", every=3),
        Variant("kiwi_no_ckpt", kiwi=True, ckpt="none"),
        Variant("kiwi_autocast_every2", kiwi=True, ckpt="every_k", every=2, precision="autocast"),
    ]
}
DEFAULT_VARIANTS = ["hf_baseline", "kiwi_ckpt_full", "kiwi_ckpt_mlp", "kiwi_ckpt_every2", "kiwi_ckpt_every3",
                    "kiwi_autocast_every2"]


def doc_lengths(seq_len: int, rows: int, seed: int) -> list[list[int]]:
    """Wikipedia-like packing: lognormal lengths (median ~1.8k of 32k, clipped to 200..4000 tokens,
    scaled with seq_len), ~15 documents per row, the last one cut to fill the row."""
    gen = torch.Generator().manual_seed(seed)
    scale = seq_len / 32_768
    lo, hi = max(1, round(200 * scale)), max(2, round(4000 * scale))
    out = []
    for _ in range(rows):
        row, used = [], 0
        while used < seq_len:
            n = math.exp(math.log(1800 * scale) + 0.6 * torch.randn((), generator=gen).item())
            n = min(max(round(n), lo), hi, seq_len - used)
            row.append(n)
            used += n
        out.append(row)
    return out


def make_batch(lengths: list[list[int]], vocab: int, device, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    seq = sum(lengths[0])
    ids = torch.randint(0, vocab, (len(lengths), seq), generator=gen)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    labels = ids.masked_fill(pos == 0, -100)  # never predict a document's first token from the previous one
    return {k: v.to(device) for k, v in dict(input_ids=ids, position_ids=pos, labels=labels).items()}


def build(variant: Variant, model_kwargs: dict, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**model_kwargs, max_position_embeddings=32_768, rope_theta=1_000_000.0,
                         tie_word_embeddings=True)
    attn = resolve_attn_implementation("auto", device.type) if variant.kiwi else "sdpa"
    weights = torch.float32 if variant.precision == "autocast" else dtype
    torch.manual_seed(seed)
    with device:
        model = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=weights)
    model.train()
    if variant.kiwi:
        apply_activation_checkpointing(model, variant.ckpt, variant.every)
        opt_cls = MasterWeightAdamW if weights != torch.float32 else torch.optim.AdamW
    else:
        model.gradient_checkpointing_enable()
        opt_cls = torch.optim.AdamW
    if variant.compile:
        for layer in model.model.layers:
            layer.compile()
    fused = device.type == "cuda"
    opt = opt_cls(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    return model, opt, attn


def loss_fn(variant: Variant, model, batch, device):
    if not variant.kiwi:
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss
    autocast = variant.precision == "autocast"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        nll, n = lm_nll(model, batch["input_ids"], batch["labels"], batch["position_ids"])
    return nll / n


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device) -> tuple[float, float | None]:
    """Seconds per call and peak GiB allocated while timing."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    secs = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return secs, peak


def precision_label(variant: Variant, dtype: torch.dtype) -> str:
    if variant.kiwi and variant.precision == "autocast":
        return "fp32 weights, bf16 autocast"
    weights = f"{str(dtype).removeprefix('torch.')} weights"
    if variant.kiwi and dtype != torch.float32:
        return weights + ", fp32 master AdamW"
    return weights


def measure(variant, args, size, device, dtype, batch) -> list[dict]:
    model, opt, attn = build(variant, size["model"], device, dtype, args.seed)

    def fwd_bwd():
        loss = loss_fn(variant, model, batch, device)
        loss.backward()
        return loss

    def step():
        fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    fb_s, fb_peak = timed(lambda: (fwd_bwd(), opt.zero_grad(set_to_none=True)), args.steps, device)
    st_s, st_peak = timed(step, args.steps, device)
    loss_impl = resolve_loss_impl("auto", device.type) if variant.kiwi else "hf (full logits)"
    base = dict(variant=variant.name, attn=attn + ("" if variant.kiwi else " causal"), loss=loss_impl,
                ckpt=("hf full" if not variant.kiwi else variant.ckpt
                      + (f"/{variant.every}" if variant.ckpt == "every_k" else "")),
                precision=precision_label(variant, dtype) + (" +compile" if variant.compile else ""))
    return [dict(base, mode="fwd+bwd", secs=fb_s, peak=fb_peak), dict(base, mode="step", secs=st_s, peak=st_peak)]


def free_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def versions() -> str:
    import transformers

    try:
        from importlib.metadata import version

        liger = version("liger-kernel")
    except Exception:
        liger = "not installed"
    return f"torch {torch.__version__}, transformers {transformers.__version__}, liger-kernel {liger}"


def table(rows: list[dict], tokens: int, fpt: float, peak: float | None) -> str:
    base = {r["mode"]: r["secs"] for r in rows if r["variant"] == "hf_baseline" and "secs" in r}
    out = ["| variant | attention | loss | ckpt | precision | mode | tok/s | vs HF | MFU | peak GiB |",
           "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['variant']} | {r['attn']} | {r['loss']} | {r['ckpt']} | {r['precision']} | {r['mode']} |"
        if "error" in r:
            out.append(f"{head} {r['error']} | | | |")
            continue
        tps = tokens / r["secs"]
        ratio = f"{base[r['mode']] / r['secs']:.2f}x" if r["mode"] in base else "-"
        m = mfu(tps, fpt, peak)
        m_txt = "-" if m is None else f"{100 * m:.1f}%"
        mem_txt = "-" if r["peak"] is None else f"{r['peak']:.1f}"
        out.append(f"{head} {tps:,.0f} | {ratio} | {m_txt} | {mem_txt} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, from {sorted(VARIANTS)}; a '_compiled' suffix compiles the layers")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 3 full, 2 tiny)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also run each kiwi variant with compiled layers")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="weights of the non-autocast variants (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = ap.parse_args(argv)

    size = SIZES[args.size]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    args.steps = args.steps or (3 if args.size == "full" else 2)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n.removesuffix("_compiled") not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)} (optionally + '_compiled')")
    variants = [VARIANTS[n] if n in VARIANTS else
                dataclasses.replace(VARIANTS[n.removesuffix("_compiled")], name=n, compile=True) for n in names]
    if args.compile:
        variants += [dataclasses.replace(v, name=v.name + "_compiled", compile=True) for v in variants if v.kiwi]

    lengths = doc_lengths(size["seq_len"], size["rows"], args.seed)
    batch = make_batch(lengths, size["model"]["vocab_size"], device, args.seed)
    tokens = batch["input_ids"].numel()
    from transformers import Qwen2Config

    fpt = flops_per_token(Qwen2Config(**size["model"]), [n for row in lengths for n in row])
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(dev_name) if device.type == "cuda" else None

    rows = []
    for v in variants:
        print(f"[bench] {v.name} ...", file=sys.stderr, flush=True)
        try:
            rows += measure(v, args, size, device, dtype, batch)
            free_memory(device)
        except torch.OutOfMemoryError as e:
            info = dict(variant=v.name, attn="", loss="", ckpt=v.ckpt, precision=v.precision)
            rows += [dict(info, mode="both", error=f"OOM ({str(e).splitlines()[0][:60]})")]
            free_memory(device)
        except Exception as e:  # keep measuring the other variants, report the failure in the table
            info = dict(variant=v.name, attn="", loss="", ckpt=v.ckpt, precision=v.precision)
            rows += [dict(info, mode="both", error=f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")]
            free_memory(device)
    n_docs = sum(len(r) for r in lengths)
    peak_txt = "- (no peak for this device)" if peak is None else f"{peak / 1e12:.0f} TFLOP/s bf16 dense"
    header = (f"## Training-step throughput ({args.size}: {size['model']['num_hidden_layers']} layers, "
              f"{tokens:,} tokens/step, {n_docs} packed documents)\n\n"
              f"{dev_name} ({device.type}); {versions()}; python {platform.python_version()}; "
              f"{datetime.date.today()}; weights {str(dtype).removeprefix('torch.')}; {args.warmup} warm-up + "
              f"{args.steps} timed steps per mode; {fpt / 1e9:.2f} GFLOP/token (doc-masked); "
              f"MFU vs {peak_txt}.\n")
    report = header + "\n" + table(rows, tokens, fpt, peak) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
