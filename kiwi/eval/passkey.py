"""``passkey``: retrieve a random k-digit key hidden at a chosen depth of a long haystack.

The synthetic retrieval test of Mohtashami & Jaggi (2023), as LongLoRA and needle-in-a-haystack run it:
an instruction, filler text, ``The pass key is 71432. Remember it. 71432 is the pass key.`` at a depth of
the filler, more filler, then ``What is the pass key? The pass key is``. Perplexity cannot show whether a
model finds one fact far back in its window; this can, cell by cell over lengths x depths.

Every prompt is built in tokens, so a cell of length ``L`` is exactly ``L`` tokens (prompt + key) whatever
the tokenizer: the filler is whole sentences (the repeated default sentence, or real text from
``filler_files``) cut at the last one, and the needle goes at the sentence boundary nearest to
``depth`` percent of the filler (0: right after the instruction, 100: right before the question).

One forward pass per prompt scores both measures: the key's log-likelihood (sum over its tokens, teacher
forced) and exact greedy retrieval, which holds iff the argmax at every key position is the key's token
(greedy decoding then reproduces the key token for token; at the first wrong argmax it leaves it). Only the
key positions go through the lm_head. Trial ``i`` uses the same key and filler offset in every cell, drawn
from ``seed``, so cells differ only in length and depth.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kiwi import tables
from kiwi.data.sources import Selection, SourceStats, build_source
from kiwi.errors import ConfigError
from kiwi.eval.encoding import encode, encode_pair
from kiwi.eval.tasks import TaskDataError
from kiwi.plotting import pyplot, save_figure

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filler:
    """The haystack's sentences, in order, and where they came from (read once for every model)."""

    sentences: list[str]
    origin: str


def check_task(task: Mapping[str, Any]) -> None:
    """Bad options fail before any file or model is loaded."""
    name = task.get("name", "passkey")
    for key in ("lengths", "depths"):
        values = task.get(key)
        if not values or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            raise ConfigError(f"tasks.{name}.{key} must be a non-empty list of integers, got {values!r}")
    if any(v < 1 for v in task["lengths"]):
        raise ConfigError(f"tasks.{name}.lengths must be positive token counts, got {list(task['lengths'])}")
    if any(not 0 <= d <= 100 for d in task["depths"]):
        raise ConfigError(f"tasks.{name}.depths are percents of the filler in [0, 100], got {list(task['depths'])}")
    for key in ("trials", "digits"):
        value = task.get(key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"tasks.{name}.{key} must be a positive integer, got {value!r}")
    if not isinstance(task.get("seed"), int):
        raise ConfigError(f"tasks.{name}.seed must be an integer, got {task.get('seed')!r}")


def n_trials(task: Mapping[str, Any]) -> int:
    """``trials`` per cell, cut to ``limit`` when set (evaluate.py's quick runs)."""
    limit = task.get("limit")
    return min(int(task["trials"]), int(limit)) if limit else int(task["trials"])


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def load_filler(task: Mapping[str, Any]) -> Filler:
    """The filler sentences: ``filler`` (default the original's repeated text), or the documents of
    ``filler_files`` (jsonl/json/parquet with ``text_field``, or .txt) split into sentences, read in order
    until they hold 16 x the longest length in bytes (trials start at different sentences; a haystack
    longer than the text wraps round to its start)."""
    check_task(task)
    name = task.get("name", "passkey")
    files = task.get("filler_files")
    if not files:
        text = task.get("filler") or FILLER
        out = sentences(text)
        if not out:
            raise ConfigError(f"tasks.{name}.filler is empty")
        return Filler(out, "repeated sentence" if text == FILLER else f"tasks.{name}.filler")
    try:
        source = build_source(kind="files", files=files, sample_by="document",
                              text_field=task.get("text_field", "text"))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"tasks.{name}.filler_files: {err}") from err
    source.prepare()
    out: list[str] = []
    enough, got = 16 * max(task["lengths"]), 0  # bytes: a token is at least one, so >= 16 prompts' worth
    for _, text in source.records(Selection(), SourceStats()):
        if text:
            out += sentences(text)
            got += len(text.encode("utf-8"))
        if got >= enough:
            break
    if not out:
        raise TaskDataError(f"tasks.{name}.filler_files ({source.describe()}) holds no text to use as filler")
    return Filler(out, f"tasks.{name}.filler_files: {source.describe()}")


@dataclass(frozen=True)
class Prompt:
    """One trial of one cell: ``tokens`` (prompt + key, exactly ``length`` of them), the key's last
    ``n_key`` tokens, and where the needle went."""

    tokens: list[int]
    n_key: int
    key: str
    length: int
    depth: int
    needle_at: int  # token index where the needle starts


class PromptBuilder:
    """Token-level prompts for one tokenizer, its sentence encodings cached across cells."""

    def __init__(self, tokenizer, filler: Filler, task: Mapping[str, Any]):
        self.tokenizer, self.filler, self.task = tokenizer, filler, task
        self._cache: dict[int, list[int]] = {}
        self.instruction = encode(tokenizer, task.get("instruction") or INSTRUCTION)
        rng = random.Random(int(task["seed"]))
        digits = int(task["digits"])
        draws = [(rng.randint(10 ** (digits - 1), 10**digits - 1), rng.randrange(len(filler.sentences)))
                 for _ in range(int(task["trials"]))]  # drawn for all trials, so `limit` keeps the first ones
        self.keys = [str(k) for k, _ in draws]
        self.offsets = [o for _, o in draws]

    def _sentence(self, i: int) -> list[int]:
        if i not in self._cache:
            self._cache[i] = encode(self.tokenizer, " " + self.filler.sentences[i])
        return self._cache[i]

    def haystack(self, n_tokens: int, offset: int) -> tuple[list[int], list[int]]:
        """``n_tokens`` of filler from sentence ``offset`` on (wrapping round), and the sentence boundaries."""
        out: list[int] = []
        bounds = [0]
        i = offset
        while len(out) < n_tokens:
            out += self._sentence(i % len(self.filler.sentences))
            bounds.append(min(len(out), n_tokens))
            i += 1
        return out[:n_tokens], bounds

    def prompt(self, length: int, depth: int, trial: int) -> Prompt:
        key = self.keys[trial]
        needle = encode(self.tokenizer, NEEDLE.format(key=key))
        question, answer = encode_pair(self.tokenizer, QUESTION, " " + key)
        n_filler = length - len(self.instruction) - len(needle) - len(question) - len(answer)
        if n_filler < 0:
            name = self.task.get("name", "passkey")
            raise ConfigError(f"tasks.{name}.lengths: {length} tokens cannot hold the instruction, needle, question "
                              f"and key ({length - n_filler} tokens with this tokenizer); use longer lengths")
        hay, bounds = self.haystack(n_filler, self.offsets[trial])
        cut = min(bounds, key=lambda b: (abs(b - depth / 100 * n_filler), b))
        tokens = self.instruction + hay[:cut] + needle + hay[cut:] + question + answer
        return Prompt(tokens, len(answer), key, length, depth, len(self.instruction) + cut)


@torch.no_grad()
def score_prompts(model, prompts: Sequence[Prompt], token_budget: int) -> list[tuple[float, bool]]:
    """(key log-likelihood, exact greedy retrieval) per prompt; prompts of one length batch unpadded."""
    device = next(model.parameters()).device
    weight = model.lm_head.weight
    per_batch = max(1, token_budget // prompts[0].length)
    out: list[tuple[float, bool]] = []
    for i in range(0, len(prompts), per_batch):
        batch = prompts[i : i + per_batch]
        n_key = batch[0].n_key
        if any(p.n_key != n_key or len(p.tokens) != len(batch[0].tokens) for p in batch):
            out += [r for p in batch for r in score_prompts(model, [p], token_budget)]
            continue
        ids = torch.tensor([p.tokens[:-1] for p in batch], device=device)
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, -n_key:]
        logits = (hidden.float() @ weight.float().T).log_softmax(-1)
        targets = torch.tensor([p.tokens[-n_key:] for p in batch], device=device)
        lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double().sum(-1)
        hit = (logits.argmax(-1) == targets).all(-1)
        out += list(zip(lp.cpu().tolist(), hit.cpu().tolist(), strict=True))
    return out


def cell_key(metric: str, length: int, depth: int) -> str:
    return f"{metric}@{length}@{depth}"


def evaluate_passkey(model, tokenizer, filler: Filler, task: Mapping[str, Any], cfg, desc) -> tuple[dict, list[dict]]:
    """``acc`` and ``key_logprob`` over all cells, and per cell ``acc@<length>@<depth>`` and
    ``key_logprob@<length>@<depth>`` (mean over trials); one record per trial."""
    builder = PromptBuilder(tokenizer, filler, task)
    lengths, depths, trials = list(task["lengths"]), list(task["depths"]), n_trials(task)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and max(lengths) > max_positions:
        log.warning("passkey: lengths %s exceed the model's max_position_embeddings=%d (scored anyway: "
                    "extrapolation)", [n for n in lengths if n > max_positions], max_positions)
    metrics: dict[str, Any] = {}
    records: list[dict] = []
    cells = [(n, d) for n in lengths for d in depths]
    for length, depth in tqdm(cells, desc=desc, unit="cell", disable=desc is None, leave=False):
        prompts = [builder.prompt(length, depth, t) for t in range(trials)]
        scores = score_prompts(model, prompts, int(cfg.token_budget))
        metrics[cell_key("acc", length, depth)] = sum(hit for _, hit in scores) / trials
        metrics[cell_key("key_logprob", length, depth)] = sum(lp for lp, _ in scores) / trials
        records += [{"length": length, "depth": depth, "trial": t, "key": p.key, "needle_at": p.needle_at,
                     "key_logprob": lp, "correct": bool(hit)}
                    for t, (p, (lp, hit)) in enumerate(zip(prompts, scores, strict=True))]
    n = len(records)
    summary = {"acc": sum(r["correct"] for r in records) / n, "key_logprob": sum(r["key_logprob"] for r in records) / n,
               "n": n, "trials": trials, "digits": int(task["digits"])}
    return {**summary, **metrics}, records


def grid(metrics: Mapping[str, Any], metric: str = "acc") -> tuple[list[int], list[int], dict[tuple[int, int], float]]:
    """(lengths, depths, {(length, depth): value}) read back from a model's flat metrics."""
    cells = {}
    for k, v in metrics.items():
        parts = k.split("@")
        if len(parts) == 3 and parts[0] == metric:
            cells[(int(parts[1]), int(parts[2]))] = v
    return sorted({n for n, _ in cells}), sorted({d for _, d in cells}), cells


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def write_passkey_report(results, out_dir: Path, task: str = "passkey") -> dict[str, Path]:
    """``passkey.md`` (per model an accuracy grid, a row per length, a column per depth), ``passkey.csv``
    (a row per model x cell: accuracy and key log-likelihood) and ``passkey.png`` (a heatmap per model).
    Returns {} when no model ran the task."""
    models = [m for m in results if task in results[m]]
    if not models:
        return {}
    paths = {"markdown": out_dir / f"{task}.md", "csv": out_dir / f"{task}.csv", "chart": out_dir / f"{task}.png"}
    blocks, rows = [], []
    for m in models:
        metrics = results[m][task]
        lengths, depths, acc = grid(metrics)
        _, _, lp = grid(metrics, "key_logprob")
        header = ["length", *(f"{d}%" for d in depths)]
        shown = [[length_label(n), *(f"{acc[(n, d)]:.2f}" for d in depths)] for n in lengths]
        blocks.append(f"**{m}**: exact greedy retrieval accuracy, {metrics.get('trials')} trials per cell, "
                      f"{metrics.get('digits')}-digit keys (overall {metrics['acc']:.3f})\n\n"
                      + tables.markdown_table(header, shown, numeric=[False] + [True] * len(depths)))
        rows += [[m, n, d, acc[(n, d)], lp[(n, d)], metrics.get("trials")] for n in lengths for d in depths]
    paths["markdown"].write_text("\n".join(blocks), encoding="utf-8")
    tables.write_csv(paths["csv"], ["model", "length", "depth", "acc", "key_logprob", "trials"], rows)
    plot_passkey(results, models, paths["chart"], task)
    return paths


def plot_passkey(results, models: Sequence[str], path: Path, task: str = "passkey") -> None:
    """passkey.png: see passkey_figure."""
    save_figure(passkey_figure(results, models, task), path)


def passkey_figure(results, models: Sequence[str], task: str = "passkey"):
    """The needle-in-a-haystack picture: accuracy per (length, depth), a panel per model."""
    plt = pyplot()
    n = len(models)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.8, 3.8), squeeze=False, layout="constrained")
    image = None
    for col, (ax, m) in enumerate(zip(axes[0], models, strict=True)):
        lengths, depths, acc = grid(results[m][task])
        values = [[acc[(length, d)] for length in lengths] for d in depths]
        image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.2 or v > 0.85 else "black")
        ax.set_xticks(range(len(lengths)), [length_label(x) for x in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=8)
        ax.set_xlabel("context length (tokens)")
        if col == 0:
            ax.set_ylabel("needle depth (% of the filler before the key)")
        ax.set_title(f"{m}\n{task}: accuracy {results[m][task]['acc']:.2f}", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="exact retrieval accuracy", fraction=0.05)
    return fig
