"""Multiple-choice scoring speed: kiwi's shared-context scorer vs lm-eval-style naive scoring.

Naive = lm-eval's HF default: one forward per (context, choice), batch 1, logits and a full-vocabulary
log-softmax at every position. Kiwi = one forward per question (tree mask), token-budget batches sorted by
length, lm_head only at scored positions. Same model, same rows, same lm-eval strings; the script asserts
identical acc / acc_norm predictions and prints examples/s of each and the ratio.

    python bench/eval_throughput.py                      # shared benchmark samples if present, else fixtures
    python bench/eval_throughput.py --hidden 896 --layers 24 --heads 14 --intermediate 4864 \
        --dtype bfloat16 --device cuda          # Qwen2.5-0.5B's shape (random weights)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kiwi.eval.choice_scoring import score_choices
from kiwi.eval.encoding import encode_pair
from kiwi.eval.metrics import choice_metrics, choice_predictions
from kiwi.eval.tasks import load_docs

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "benchmarks"
FIXTURES = ROOT / "tests" / "eval" / "fixtures"
TASKS = (("hellaswag", "hellaswag", "hellaswag_validation"), ("arc_challenge", "arc", "arc_challenge_test"),
         ("openbookqa", "openbookqa", "openbookqa_test"))


def load_all(limit: int | None):
    docs, source = {}, "shared samples" if SHARED.exists() else "test fixtures"
    for name, fmt, shared in TASKS:
        path = SHARED / f"{shared}_sample.jsonl" if SHARED.exists() else FIXTURES / f"{name}.jsonl"
        docs[name] = load_docs({"name": name, "format": fmt, "data_files": str(path)}, limit=limit)
    return docs, source


def build_tokenizer(docs) -> object:
    """A byte-level BPE (Qwen2 pipeline) trained on the rows themselves: offline and quick."""
    from transformers import AutoTokenizer

    from kiwi.data.tokenizer import save_as_qwen2, train_bpe

    texts = [d.context + " " + " ".join(d.choices) for task in docs.values() for d in task]
    out = Path(tempfile.mkdtemp(prefix="kiwi-bench-tok-"))
    save_as_qwen2(train_bpe(texts, 4096), out)
    return AutoTokenizer.from_pretrained(out)


def build_model(args, device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden,
                         intermediate_size=args.intermediate or args.hidden * 4, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device=device, dtype=getattr(torch, args.dtype)).eval()


@torch.no_grad()
def naive_scores(model, requests, device):
    out = []
    for ctx, conts in requests:
        lls = []
        for cont in conts:
            inp = torch.tensor([(ctx + cont)[:-1]], device=device)
            logp = torch.log_softmax(model(inp).logits[0].float(), dim=-1)
            scored = logp[len(ctx) - 1 :]
            lls.append(float(scored.gather(1, torch.tensor(cont, device=device)[:, None]).sum()))
        out.append(lls)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden)")
    p.add_argument("--vocab", type=int, default=151936, help="Qwen2.5's vocabulary size")
    p.add_argument("--repeat", type=int, default=1, help="score the rows this many times (more work per run)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--limit", type=int, default=None, help="rows per task")
    p.add_argument("--token-budget", type=int, default=8192)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    docs, source = load_all(args.limit)
    tok = build_tokenizer(docs)
    model = build_model(args, device)
    requests, all_docs = [], []
    for task_docs in docs.values():
        for d in task_docs:
            pairs = [encode_pair(tok, d.context, " " + c) for c in d.choices]
            requests.append((pairs[0][0], [c for _, c in pairs]))
            all_docs.append(d)
    requests, all_docs = requests * args.repeat, all_docs * args.repeat
    n = len(all_docs)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    naive_scores(model, requests[:2], device)  # warm-up (allocator, kernels)
    score_choices(model, requests[:2], max_length=4096, token_budget=args.token_budget)
    sync()
    t0 = time.perf_counter()
    ref = naive_scores(model, requests, device)
    sync()
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = score_choices(model, requests, max_length=4096, token_budget=args.token_budget, score_context=False)
    sync()
    t_fast = time.perf_counter() - t0
    # evaluate.py's default also scores the context tokens (ppl_text), which the naive path never computes.
    t0 = time.perf_counter()
    score_choices(model, requests, max_length=4096, token_budget=args.token_budget, score_context=True)
    sync()
    t_text = time.perf_counter() - t0

    max_diff = max(abs(a - b) for s, r in zip(fast, ref, strict=True) for a, b in zip(s.logprobs, r, strict=True))
    for d, s, r in zip(all_docs, fast, ref, strict=True):
        pred_fast = choice_predictions(d, s)
        lls = np.asarray(r)
        pred_ref = (int(np.argmax(lls)), int(np.argmax(lls / [len(c) for c in d.choices])))
        assert pred_fast == pred_ref, f"row {d.index}: predictions differ {pred_fast} vs {pred_ref}"
    m = choice_metrics(all_docs, fast)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"# eval_throughput  {datetime.date.today()}  {platform.processor() or platform.machine()}  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  device {device}")
    print(f"model: Qwen2 hidden={args.hidden} layers={args.layers} vocab={args.vocab} {args.dtype} "
          f"({n_params / 1e6:.1f}M params); rows: {source}, {n} questions "
          f"({', '.join(f'{k} {len(v)}' for k, v in docs.items())})")
    print(f"naive (lm-eval default, batch 1): {n / t_naive:8.2f} examples/s  ({t_naive:.2f} s)")
    print(f"kiwi shared-context scorer:       {n / t_fast:8.2f} examples/s  ({t_fast:.2f} s)  "
          f"speed-up {t_naive / t_fast:.1f}x (same outputs as naive)")
    print(f"kiwi + context scoring (ppl_text): {n / t_text:7.2f} examples/s  ({t_text:.2f} s)  "
          f"speed-up {t_naive / t_text:.1f}x (evaluate.py default)")
    print("identical acc/acc_norm predictions: yes "
          f"(acc {m['acc']:.4f}, acc_norm {m['acc_norm']:.4f}); max |delta loglik| {max_diff:.2e}")


if __name__ == "__main__":
    main()
