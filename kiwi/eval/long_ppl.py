"""``long_ppl``: token perplexity by position on documents at least ``max_length`` tokens long.

Long-context work (Position Interpolation, YaRN, LongLoRA) reads a model's use of context off the curve
of perplexity against position: a model that uses its window gets better further in, one that cannot
gets worse past the length it was trained at. Each selected document is cut to its first ``max_length``
tokens and scored in one causal window (the first token conditioned on the BOS/EOS prefix, as the rolling
task does), so the token at position ``p`` sees exactly ``p`` tokens of its own document.

A document shorter than ``max_length`` is never padded or joined to another: it is skipped and counted.
``concatenate: true`` instead joins every document (EOS between them) into ``max_length`` streams, and the
result says so (``concatenated: 1``), because a position in such a stream is not a position in a document.

Only scored positions go through the lm_head, in chunks (``kiwi.model.loss.token_logprobs``), so a 32k
window costs the backbone's activations plus one chunk of logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kiwi import tables
from kiwi.data.sources import Selection, SourceStats, build_source
from kiwi.errors import ConfigError
from kiwi.eval.encoding import encode, prefix_token_id
from kiwi.eval.tasks import TaskDataError
from kiwi.model.loss import auto_chunk, perplexity, token_logprobs
from kiwi.plotting import pyplot, save_figure

DEFAULT_EDGES = (1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class LongTexts:
    """Candidate documents (every text with at least ``max_length`` UTF-8 bytes, or all of them when
    concatenating) and where they came from. A byte-level BPE token covers at least one byte, so a text
    with fewer bytes can never reach ``max_length`` tokens; the token count is checked per tokenizer."""

    texts: list[str]
    origin: str
    seen: int


def bucket_edges(edges: Sequence[int], max_length: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` position buckets, the last cut at ``max_length`` and none past it."""
    out, start = [], 0
    for end in sorted(int(e) for e in edges):
        if start >= max_length:
            break
        out.append((start, min(end, max_length)))
        start = end
    if start < max_length:
        out.append((start, max_length))
    return out


def bucket_name(start: int, end: int) -> str:
    k = lambda n: f"{n // 1024}k" if n and n % 1024 == 0 else str(n)
    return f"{k(start)}-{k(end)}"


def _source_config(task: Mapping[str, Any], data_cfg: Mapping[str, Any] | None) -> tuple[dict, str]:
    if task.get("data_files"):
        files = task["data_files"]
        return ({"kind": "files", "files": files, "sample_by": task.get("sample_by", "document"),
                 "text_field": task.get("text_field", "text")}, "tasks.long_ppl.data_files")
    if task.get("source"):
        src = dict(task["source"])
        src.setdefault("text_field", task.get("text_field", "text"))
        return src, "tasks.long_ppl.source"
    if data_cfg and data_cfg.get("source"):
        src = dict(data_cfg["source"])
        src.setdefault("text_field", data_cfg.get("text_field", "text"))
        return src, "data.source"
    raise ConfigError("task 'long_ppl': set tasks.long_ppl.data_files, tasks.long_ppl.source or data=<group> "
                      "(the documents to score)")


def check_task(task: Mapping[str, Any]) -> None:
    """Bad options fail before any document or model is loaded."""
    for key in ("max_length", "documents"):
        value = task.get(key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"tasks.long_ppl.{key} must be a positive integer, got {value!r}")
    if task["max_length"] < 2:
        raise ConfigError("tasks.long_ppl.max_length must be at least 2")
    edges = task.get("buckets") or DEFAULT_EDGES
    if any(not isinstance(e, int) or e < 1 for e in edges):
        raise ConfigError(f"tasks.long_ppl.buckets must be positive integers, got {list(edges)!r}")


def load_long_texts(task: Mapping[str, Any], data_cfg: Mapping[str, Any] | None) -> LongTexts:
    """The candidate documents of the task, read once for every model."""
    check_task(task)
    src_cfg, origin = _source_config(task, data_cfg)
    src_cfg = {k: v for k, v in src_cfg.items() if k not in ("shuffle",)}
    try:
        source = build_source(**src_cfg)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"task 'long_ppl' ({origin}): {err}") from err
    source.prepare()
    concat, max_length = bool(task.get("concatenate")), task["max_length"]
    texts, seen = [], 0
    # Enough candidates for `documents` long ones (or, concatenating, for `documents` full streams).
    need_bytes = task["documents"] * max_length
    got_bytes = 0
    for _, text in source.records(Selection(), SourceStats()):
        if text is None:
            continue
        seen += 1
        n = len(text.encode("utf-8"))
        if concat or n >= max_length:
            texts.append(text)
            got_bytes += n
        if (concat and got_bytes >= 8 * need_bytes) or (not concat and len(texts) >= 8 * task["documents"]):
            break
    if not texts:
        raise TaskDataError(f"task 'long_ppl': none of the {seen} documents of {origin} ({source.describe()}) "
                            f"has {max_length} bytes, so none can reach max_length={max_length} tokens; lower "
                            "tasks.long_ppl.max_length or set tasks.long_ppl.concatenate=true (reported as such)")
    return LongTexts(texts, f"{origin}: {source.describe()}", seen)


def select_windows(tokenizer, texts: LongTexts, task: Mapping[str, Any]) -> tuple[list[list[int]], dict]:
    """``documents`` token windows of exactly ``max_length`` tokens, and how they were made."""
    max_length, want = task["max_length"], task["documents"]
    windows: list[list[int]] = []
    info: dict[str, Any] = {"concatenated": int(bool(task.get("concatenate"))), "documents_read": texts.seen}
    if task.get("concatenate"):
        sep = prefix_token_id(tokenizer)
        stream: list[int] = []
        used = 0
        for text in texts.texts:
            stream += encode(tokenizer, text) + [sep]
            used += 1
            while len(stream) >= max_length and len(windows) < want:
                windows.append(stream[:max_length])
                stream = stream[max_length:]
            if len(windows) >= want:
                break
        info["documents_joined"] = used
    else:
        short = 0
        for text in texts.texts:
            tokens = encode(tokenizer, text)
            if len(tokens) < max_length:
                short += 1
                continue
            windows.append(tokens[:max_length])
            if len(windows) >= want:
                break
        info["skipped_short"] = short
    if not windows:
        raise TaskDataError(f"task 'long_ppl': no document of {texts.origin} has max_length={max_length} tokens "
                            f"({len(texts.texts)} candidates tokenized); lower tasks.long_ppl.max_length or set "
                            "tasks.long_ppl.concatenate=true (reported as such)")
    info["documents"] = len(windows)
    return windows, info


@torch.no_grad()
def position_logprobs(model, windows: Sequence[list[int]], prefix_token: int, token_budget: int,
                      chunk: int | None = None, desc: str | None = None) -> torch.Tensor:
    """[n_windows, max_length] fp64 log-probabilities: entry ``p`` is token ``p`` given tokens ``< p``
    (token 0 given the prefix token). Windows have one length, so batches need no padding."""
    device = next(model.parameters()).device
    weight = model.lm_head.weight
    chunk = auto_chunk(weight, chunk)
    length = len(windows[0])
    per_batch = max(1, token_budget // length)
    out = torch.empty(len(windows), length, dtype=torch.float64)
    for i in tqdm(range(0, len(windows), per_batch), desc=desc, unit="batch", disable=desc is None, leave=False):
        batch = windows[i : i + per_batch]
        ids = torch.tensor([[prefix_token] + w[:-1] for w in batch], device=device)
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        targets = torch.tensor(batch, device=device).reshape(-1)
        lp = token_logprobs(hidden.reshape(-1, hidden.shape[-1]), weight, targets, chunk)
        out[i : i + len(batch)] = lp.double().cpu().reshape(len(batch), length)
        del hidden
    return out


def bucket_metrics(logprobs: torch.Tensor, edges: Sequence[int]) -> dict[str, float]:
    """``ppl`` over all positions and ``ppl@<bucket>`` per position bucket (pooled over documents)."""
    length = logprobs.shape[1]
    metrics = {"ppl": perplexity(float(-logprobs.mean())), "tokens": int(logprobs.numel())}
    for start, end in bucket_edges(edges, length):
        metrics[f"ppl@{bucket_name(start, end)}"] = perplexity(float(-logprobs[:, start:end].mean()))
    return metrics


def evaluate_long_ppl(model, tokenizer, texts: LongTexts, task: Mapping[str, Any], cfg, desc) -> dict:
    windows, info = select_windows(tokenizer, texts, task)
    lp = position_logprobs(model, windows, prefix_token_id(tokenizer), int(cfg.token_budget), cfg.chunk, desc)
    return {**bucket_metrics(lp, task.get("buckets") or DEFAULT_EDGES), **info, "max_length": len(windows[0])}


def bucket_keys(results: Mapping[str, Mapping[str, Mapping[str, float]]], task: str) -> list[str]:
    keys: list[str] = []
    for tasks in results.values():
        for k in tasks.get(task, {}):
            if k.startswith("ppl@") and k not in keys:
                keys.append(k)
    return keys


def write_long_ppl_report(results, out_dir: Path, task: str = "long_ppl") -> dict[str, Path]:
    """``long_ppl.md`` / ``.csv`` (a row per model, a column per bucket) and ``long_ppl.png`` (ppl against
    position, a line per model). Returns {} when no model ran the task."""
    models = [m for m in results if task in results[m]]
    keys = bucket_keys(results, task)
    if not models or not keys:
        return {}
    header = ["model", "ppl", *keys, "documents", "concatenated"]
    rows = [[m, results[m][task]["ppl"], *(results[m][task].get(k) for k in keys),
             results[m][task].get("documents"), results[m][task].get("concatenated")] for m in models]
    paths = {"markdown": out_dir / f"{task}.md", "csv": out_dir / f"{task}.csv", "chart": out_dir / f"{task}.png"}
    numeric = [False] + [True] * (len(header) - 1)
    shown = [[f"{c:.2f}" if isinstance(c, float) else c for c in row] for row in rows]
    paths["markdown"].write_text(tables.markdown_table(header, shown, numeric=numeric) + "\n", encoding="utf-8")
    tables.write_csv(paths["csv"], header, rows)
    plot_long_ppl(results, models, keys, paths["chart"], task)
    return paths


def plot_long_ppl(results, models: Sequence[str], keys: Sequence[str], path: Path, task: str = "long_ppl") -> None:
    """long_ppl.png: see long_ppl_figure."""
    save_figure(long_ppl_figure(results, models, keys, task), path)


def long_ppl_figure(results, models: Sequence[str], keys: Sequence[str], task: str = "long_ppl"):
    """Perplexity against token position, a line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = range(len(keys))  # evenly spaced: buckets of very different widths would crowd their labels
    for m in models:
        ys = [results[m][task].get(k, float("nan")) for k in keys]
        note = " (concatenated)" if results[m][task].get("concatenated") else ""
        ax.plot(xs, ys, marker="o", label=f"{m}{note}")
    ax.set_xticks(xs, [k.removeprefix("ppl@") for k in keys], fontsize=8)
    ax.set_xlabel("token position bucket")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"{task}: perplexity by position")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
