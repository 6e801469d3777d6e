"""Packed-token throughput of the data pipeline (tokenize + pack + collate), by DataLoader worker count.

Builds a large-vocabulary byte-level BPE (Qwen2 pipeline, target 151,646 like Qwen2.5) offline on the
docstring corpus, then streams the corpus through ``PackedDataModule`` at ``seq_len`` 32768.

    python bench/data_throughput.py [--vocab 151646] [--packages stdlib numpy lightning datasets torch transformers]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import tokenizers
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from kiwi.data.corpus import build_corpus_file  # noqa: E402
from kiwi.data.datamodule import PackedDataModule  # noqa: E402
from kiwi.data.tokenizer import build_offline_tokenizer  # noqa: E402


def measure(tokenizer, corpus: Path, workers: int, seq_len: int, batch_size: int) -> tuple[float, int]:
    dm = PackedDataModule(
        tokenizer,
        source={"kind": "files", "files": [str(corpus)]},
        seq_len=seq_len,
        batch_size=batch_size,
        num_workers=workers,
        shuffle_buffer=1000,
        repeat=False,
    )
    dm.setup("fit")
    start = time.perf_counter()
    tokens = 0
    for batch in dm.train_dataloader():
        tokens += dm.on_before_batch_transfer(batch, 0)["input_ids"].numel()
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=151_646)
    parser.add_argument(
        "--packages", nargs="+", default=["stdlib", "numpy", "lightning", "datasets", "torch", "transformers"]
    )
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", default=os.environ.get("KIWI_CACHE", str(Path.home() / ".cache/kiwi")))
    args = parser.parse_args()

    corpus = build_corpus_file(args.cache, args.packages)
    tok_dir = build_offline_tokenizer(corpus, args.vocab, args.cache, max_chars=10**9)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir)
    print(
        f"corpus {corpus.name}: {corpus.stat().st_size / 1e6:.1f} MB; tokenizer vocab {len(tokenizer):,} "
        f"(target {args.vocab:,})"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}"
    )
    print(f"{'workers':>8} {'packed tokens':>14} {'tokens/s':>12}")
    for workers in args.workers:
        rate, tokens = measure(tokenizer, corpus, workers, args.seq_len, args.batch_size)
        print(f"{workers:>8} {tokens:>14,} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
