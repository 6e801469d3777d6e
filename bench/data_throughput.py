"""Packed-token throughput of the data pipeline (read + tokenize + pack + collate) with Qwen2.5's exact
tokenizer, by encoder and DataLoader worker count.

Streams the shared Wikipedia shards (``../shared/data/wikipedia-en-2015/*.jsonl.gz``, the
``wikimedia/wikipedia`` schema) through ``PackedDataModule`` with data=local's source, at ``seq_len`` 32768,
cycling until ``--tokens`` are packed. Encoders: ``tokenizer`` (the HF fast tokenizer, what training uses
by default) and ``tiktoken`` (``data.encoder=tiktoken``: identical ids, Qwen's reference BPE). The
machine's load average is printed with every row: measure on an idle machine.

    python bench/data_throughput.py [--encoders tokenizer tiktoken] [--workers 0 1 2] [--tokens 4000000]
                                    [--partitions 64|null] [--warmup-tokens 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import tiktoken
import tokenizers
import torch
import transformers

from kiwi.data.datamodule import PackedDataModule
from kiwi.data.qwen_tokenizer import qwen25_tokenizer_dir

SHARED_WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared/data/wikipedia-en-2015"


def measure(tokenizer, files: list[str], encoder: str, workers: int, seq_len: int, batch_size: int,
            min_tokens: int, tokenize_batch: int, partitions: int | None, warmup_tokens: int = 0) -> tuple[float, int]:
    """Packed tokens/s over ``min_tokens`` after the first ``warmup_tokens`` (not timed)."""
    order = {} if partitions is None else {"partitions": partitions}  # None: also runs on kiwi before partitions
    dm = PackedDataModule(tokenizer, source={"kind": "files", "files": files}, seq_len=seq_len,
                          batch_size=batch_size, num_workers=workers, shuffle_buffer=1000, val_documents=0,
                          repeat=True, tokenize_batch=tokenize_batch, encoder=encoder, **order)
    dm.setup("fit")
    start = time.perf_counter()
    tokens = 0
    for batch in dm.train_dataloader():
        tokens += dm.on_before_batch_transfer(batch, 0)["input_ids"].numel()
        if warmup_tokens and tokens >= warmup_tokens:
            start, tokens, warmup_tokens = time.perf_counter(), 0, 0
        elif not warmup_tokens and tokens >= min_tokens:
            break
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=[str(SHARED_WIKIPEDIA / "*.jsonl.gz")],
                        help="files or globs for data=local (default: the shared Wikipedia shards)")
    parser.add_argument("--encoders", nargs="+", default=["tokenizer", "tiktoken"],
                        choices=["tokenizer", "tiktoken"])
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tokenize-batch", type=int, default=64, help="documents per encode call")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--partitions", type=lambda v: None if v == "null" else int(v), default=64,
                        help="data.partitions (the default config's 64); null = the per-stream order")
    parser.add_argument("--warmup-tokens", type=int, default=0,
                        help="packed tokens read before the timing starts (the steady state, not the first rows)")
    parser.add_argument("--tokens", type=int, default=4_000_000, help="packed tokens to time per row")
    parser.add_argument("--cache", default=os.environ.get("KIWI_CACHE", str(Path.home() / ".cache/kiwi")))
    args = parser.parse_args()

    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen25_tokenizer_dir(args.cache))
    print(f"tokenizer: Qwen2.5 exact ({len(tokenizer):,} tokens), {qwen25_tokenizer_dir(args.cache)}")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}, transformers {transformers.__version__}"
    )
    print(f"packing {' '.join(args.data)} at seq_len {args.seq_len}, tokenize_batch {args.tokenize_batch}, "
          f"data.partitions {args.partitions}, {args.warmup_tokens:,} tokens before the timing")
    print(f"{'encoder':>9} {'workers':>8} {'packed tokens':>14} {'tokens/s':>12}  load (1/5/15 min)")
    for encoder in args.encoders:
        for workers in args.workers:
            rate, tokens = measure(tokenizer, args.data, encoder, workers, args.seq_len, args.batch_size,
                                   args.tokens, args.tokenize_batch, args.partitions, args.warmup_tokens)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"{encoder:>9} {workers:>8} {tokens:>14,} {rate:>12,.0f}  {load}", flush=True)


if __name__ == "__main__":
    main()
