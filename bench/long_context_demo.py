"""CPU demonstration that ``long_ppl`` and ``passkey`` see whether a model uses its context (issue 20).

On natural text at CPU scale a tiny model uses only a few tokens of context, so the length it was trained
at cannot show. This corpus has known long-range structure instead: each document is a span of random
words, a gap of other random words, the same span again, and a short tail. Nothing in a document predicts
a word except a copy of it earlier in the same document, so the only way to do better than chance on the
second span is to look back past the gap (an induction, or copy, mechanism).

Two tiny models (``experiment=quickstart``) are trained with ``train.py`` on the same documents and the same
tokens, one on rows of ``--long-seq`` tokens (every repeat inside a row) and one on rows of ``--short-seq``
tokens (shorter than the gap: it never sees a repeat in context). ``evaluate.py`` then runs ``long_ppl``
(ppl by position on held-out documents of the same kind) and ``passkey`` (the standard prompt, never seen in
training) on both.

    python bench/long_context_demo.py --out out/long_context_demo        # ~13 min on 2 shared CPU cores

Writes ``corpus/``, ``train_<seq>/`` (the runs) and ``eval/`` (``long_ppl.md``, ``passkey.md``, both PNGs,
``results.json``) under ``--out``, and prints the two tables.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "apple", "river", "stone", "light", "cloud", "green", "house", "table", "music", "paper", "water",
    "night", "window", "garden", "summer", "winter", "bread", "horse", "silver", "market", "mountain",
    "letter", "forest", "candle", "engine", "doctor", "island", "basket", "mirror", "pencil", "rocket",
    "tiger", "violin", "yellow", "zebra", "anchor", "bridge", "castle", "dragon", "feather", "glove", "hammer",
]


def repeat_document(rng: random.Random, span: int, gap: int, tail: int) -> str:
    """``span`` random words, ``gap`` others, the same span again, ``tail`` more."""
    first = [rng.choice(WORDS) for _ in range(span)]
    rest = [rng.choice(WORDS) for _ in range(gap)], [rng.choice(WORDS) for _ in range(tail)]
    return " ".join(first + rest[0] + first + rest[1])


def write_corpus(path: Path, n: int, seed: int, span: int, gap: int, tail: int) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            fh.write(json.dumps({"text": repeat_document(rng, span, gap, tail)}) + "\n")
    return path


def _run(args: list[str], log: Path) -> None:
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"long_context_demo: {args[0]} failed (exit {proc.returncode}); see {log}")


def train(out: Path, corpus: Path, seq_len: int, tokens: int) -> Path:
    run_dir = out / f"train_{seq_len}"
    _run(["train.py", "experiment=quickstart", "logger=csv", "data=local", f"data.source.files=[{corpus}]",
          f"data.seq_len={seq_len}", f"data.batch_size={2048 // seq_len}", "data.val_documents=16",
          f"budget.total_tokens={tokens}", "validate_before=false", f"hydra.run.dir={run_dir}"],
         out / f"train_{seq_len}.log")
    return run_dir / "hf_model"


def evaluate(out: Path, models: dict[str, Path], heldout: Path, max_length: int, lengths: list[int],
             trials: int) -> dict:
    checkpoints = ",".join(f"{{name: {name}, path: {path}}}" for name, path in models.items())
    buckets = sorted({64, 128, 256, max_length - 64, max_length})
    _run(["evaluate.py", "model=tiny", "data=corpus", "compare_base=false", "evaluate_model=false",
          f"checkpoints=[{checkpoints}]", "run_tasks=[long_ppl,passkey]", f"tasks.long_ppl.data_files=[{heldout}]",
          f"tasks.long_ppl.max_length={max_length}", f"tasks.long_ppl.buckets=[{','.join(map(str, buckets))}]",
          "tasks.long_ppl.documents=32", f"tasks.passkey.lengths=[{','.join(map(str, lengths))}]",
          f"tasks.passkey.trials={trials}", f"hydra.run.dir={out / 'eval'}"], out / "eval.log")
    return json.loads((out / "eval" / "results.json").read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/long_context_demo"))
    ap.add_argument("--documents", type=int, default=3000)
    ap.add_argument("--span", type=int, default=24, help="words in the repeated span")
    ap.add_argument("--gap", type=int, default=120, help="words between the span and its repeat")
    ap.add_argument("--long-seq", type=int, default=512)
    ap.add_argument("--short-seq", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=307200, help="training tokens per model")
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args(argv)
    start = time.monotonic()
    out = args.out.resolve()
    corpus = write_corpus(out / "corpus" / "train.jsonl", args.documents, 1, args.span, args.gap, 8)
    heldout = write_corpus(out / "corpus" / "heldout.jsonl", 64, 2, args.span, args.gap, 8)
    models = {f"seq{n}": train(out, corpus, n, args.tokens) for n in (args.long_seq, args.short_seq)}
    evaluate(out, models, heldout, max_length=384, lengths=[128, 256, 384], trials=args.trials)
    for name in ("long_ppl.md", "passkey.md"):
        print((out / "eval" / name).read_text())
    print(f"long_context_demo: {time.monotonic() - start:.0f} s, outputs in {out}")


if __name__ == "__main__":
    main()
