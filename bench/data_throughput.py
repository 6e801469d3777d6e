"""Packed-token throughput of the data pipeline (tokenize + pack + collate), by DataLoader worker count.

Builds a large-vocabulary byte-level BPE (Qwen2 pipeline, target 151,646 like Qwen2.5) offline on the
docstring corpus, then streams Wikipedia text (WikiText-2 from ../shared when present, else the docstring
corpus) through ``PackedDataModule`` at ``seq_len`` 32768, cycling until ``--tokens`` are packed.

    python bench/data_throughput.py [--vocab 151646] [--data PATH.txt|PATH.jsonl] [--tokens 4000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import tokenizers
import torch
import transformers

from kiwi.data.corpus import build_corpus_file
from kiwi.data.datamodule import PackedDataModule
from kiwi.data.tokenizer import build_offline_tokenizer

SHARED_WIKITEXT = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/valid.txt"


def source_for(path: Path) -> dict:
    if path.suffix == ".txt":  # WikiText raw: one document per top-level article
        return {"kind": "files", "files": [str(path)], "format": "txt", "sample_by": "wikitext"}
    return {"kind": "files", "files": [str(path)]}


def measure(tokenizer, data: Path, workers: int, seq_len: int, batch_size: int, min_tokens: int):
    dm = PackedDataModule(tokenizer, source=source_for(data), seq_len=seq_len, batch_size=batch_size,
                          num_workers=workers, shuffle_buffer=1000, val_documents=0, repeat=True)
    dm.setup("fit")
    start = time.perf_counter()
    tokens = 0
    for batch in dm.train_dataloader():
        tokens += dm.on_before_batch_transfer(batch, 0)["input_ids"].numel()
        if tokens >= min_tokens:
            break
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
    parser.add_argument("--data", type=Path, default=SHARED_WIKITEXT if SHARED_WIKITEXT.exists() else None,
                        help="text to pack (default: WikiText-2 from ../shared, else the docstring corpus)")
    parser.add_argument("--tokens", type=int, default=4_000_000, help="packed tokens to time per row")
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
    data = args.data or corpus
    print(f"packing {data} at seq_len {args.seq_len}")
    print(f"{'workers':>8} {'packed tokens':>14} {'tokens/s':>12}")
    for workers in args.workers:
        rate, tokens = measure(tokenizer, data, workers, args.seq_len, args.batch_size, args.tokens)
        print(f"{workers:>8} {tokens:>14,} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
