"""``evaluate.py``'s body: every requested model on every requested task, then one report.

Models (in table order): the un-upscaled base (``compare_base``), ``model`` as configured (base +
``layer_selection``, upscaled on the fly = step 0 of training), extra ``strategies`` at step 0, and
``checkpoints`` (HF dirs, hub ids, Lightning ``.ckpt`` files, DeepSpeed dirs). Models are loaded one at a
time and freed before the next, so a run never holds two models in memory.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kiwi.cli import compose_option, instantiate_group, setting_name, task_wrapper
from kiwi.errors import ConfigError, DeviceError, KiwiError
from kiwi.eval.choice_scoring import score_choices
from kiwi.eval.encoding import encode_pair, model_max_length, prefix_token_id
from kiwi.eval.heldout import HeldoutData, heldout_batches, heldout_definitions
from kiwi.eval.long_ppl import evaluate_long_ppl, load_long_texts, write_long_ppl_report
from kiwi.eval.metrics import choice_metrics, choice_records, rolling_metrics, rolling_records
from kiwi.eval.passkey import evaluate_passkey, load_filler, write_passkey_report
from kiwi.eval.perplexity import heldout_nll, score_documents
from kiwi.eval.preflight import check_eval_config, checkpoint_entry
from kiwi.eval.report import log_to_loggers, markdown_table, write_report
from kiwi.eval.tasks import TARGET_DELIMITER, ChoiceDoc, TaskDataError, TextDoc, load_docs
from kiwi.model.build import as_dict, build_model
from kiwi.model.io import load_model
from kiwi.model.loss import perplexity

log = logging.getLogger(__name__)

TASK_TYPES = ("multiple_choice", "rolling", "heldout", "long_ppl", "passkey")
# Task types with their own tables and figure, and the writer of each.
TASK_REPORTS = {"long_ppl": write_long_ppl_report, "passkey": write_passkey_report}
# Task types whose rows are not lm-eval documents (loaded by their own module, or none).
_OWN_ROWS = ("heldout", "long_ppl", "passkey")


@dataclass
class ModelSpec:
    name: str
    load: Callable[[], tuple[Any, Any]]  # -> (model, tokenizer)
    source: str
    checkpoint: str | None = None  # the path or hub id, for entries of ``checkpoints``


def selected_tasks(cfg: DictConfig) -> dict[str, dict]:
    """Task configs named by ``run_tasks``, validated before any model is loaded."""
    names = list(cfg.get("run_tasks") or [])
    if not names:
        raise ConfigError("run_tasks is empty: name at least one task (e.g. run_tasks=[hellaswag])")
    available = as_dict(cfg.get("tasks"))
    out = {}
    for name in names:
        if name not in available:
            raise ConfigError(f"run_tasks: unknown task {name!r}; configured tasks: {sorted(available)}")
        task = dict(available[name])
        task.setdefault("name", name)
        if task.get("type") not in TASK_TYPES:
            raise ConfigError(f"tasks.{name}.type must be one of {TASK_TYPES}, got {task.get('type')!r}")
        if task.get("limit") is None and cfg.get("limit") is not None:
            task["limit"] = cfg.limit
        out[name] = task
    return out


def _strategy_cfg(entry: Any, model_cfg: Mapping) -> dict:
    """A strategy name (the ``model/layer_selection`` option, composed by Hydra and sized like
    ``model.layer_selection``) or a full layer_selection mapping."""
    if isinstance(entry, Mapping):
        return dict(entry)
    current = model_cfg.get("layer_selection") or {}
    sizing = [f"model.layer_selection.{k}={'null' if current[k] is None else current[k]}"
              for k in ("n_target", "param_budget") if k in current]
    try:
        return OmegaConf.to_container(compose_option("model/layer_selection", str(entry), sizing), resolve=True)
    except ConfigError as err:
        raise ConfigError(f"strategies: {err}") from err


def model_specs(cfg: DictConfig, device: str) -> list[ModelSpec]:
    """Every model to evaluate, uniquely named, validated before any of them is loaded."""
    model_cfg = as_dict(cfg.get("model"))
    if model_cfg:
        model_cfg["attn_implementation"] = cfg.attn_implementation
    cache_dir = cfg.paths.cache_dir
    specs: list[ModelSpec] = []
    built: dict[str, dict] = {}

    def add_built(name: str, layer_selection: dict) -> None:
        mc = {**model_cfg, "layer_selection": layer_selection}
        if name in built:
            if built[name] == layer_selection:  # the same model asked for twice: one row
                return
            raise ConfigError(f"strategies: two different models are both named {name!r}; name one, e.g. "
                              f"strategies=[{{name: {name}-2, strategy: ...}}]")
        built[name] = layer_selection

        def load():
            b = build_model(mc, cache_dir, device=device)
            return b.model, b.tokenizer

        specs.append(ModelSpec(name, load, f"{model_cfg.get('base') or 'tiny'} + {layer_selection}"))

    current = model_cfg.get("layer_selection") or {"strategy": "none"}
    if model_cfg and cfg.get("compare_base"):
        add_built("base", {"strategy": "none"})
    if model_cfg and cfg.get("evaluate_model", True):
        strategy = current.get("strategy", "none")
        add_built("base" if strategy == "none" else f"{setting_name(current)}@step0", current)
    for entry in cfg.get("strategies") or []:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(entry, Mapping):
            entry = {k: v for k, v in as_dict(entry).items() if k != "name"}
        ls = _strategy_cfg(entry, model_cfg)
        add_built(name or f"{setting_name(ls)}@step0", ls)
    entries = [checkpoint_entry(i, e) for i, e in enumerate(cfg.get("checkpoints") or [])]
    for (_, path), name in zip(entries, checkpoint_names(entries, reserved=built), strict=True):

        def load(path=path):
            model, tokenizer, _ = load_model(
                path, dtype=model_cfg.get("dtype", "float32"), attn_implementation=cfg.attn_implementation,
                device=device,
            )
            return model, tokenizer

        specs.append(ModelSpec(name, load, str(path), checkpoint=str(path)))
    if not specs:
        raise ConfigError("nothing to evaluate: enable evaluate_model / compare_base or list checkpoints")
    return specs


def _name_parts(path: str) -> tuple[list[str], int]:
    """Path components a checkpoint's name is a suffix of, and how many the shortest name has: a Lightning
    ``<run>/checkpoints/last.ckpt`` is ``<run>/last``; anything else (HF dir, hub id) is its last component."""
    p = Path(path).expanduser()
    if p.exists():
        p = Path(os.path.abspath(p))  # names extend into the real parent directories (no symlink resolution)
    parts = [x for x in p.parts if x not in (p.anchor, "")] or [str(path)]
    if p.suffix != ".ckpt":
        return parts, 1
    parts[-1] = p.stem
    if len(parts) > 1 and parts[-2] == "checkpoints":
        del parts[-2]
        return parts, min(2, len(parts))
    return parts, 1


def checkpoint_names(entries: list[tuple[str | None, str]], reserved: Iterable[str] = ()) -> list[str]:
    """A unique name per checkpoint: its explicit name, else the shortest path suffix that no other model
    shares (``runA/hf_model`` and ``runB/hf_model``; ``<sweep1>/0/last`` and ``<sweep2>/0/last``).

    Two explicit names alike, or an explicit name equal to another model's (``reserved``), is an error, and
    so is a path listed twice: evaluating it would overwrite one row with the other.
    """
    reserved = set(reserved)
    explicit: dict[str, str] = {}
    for name, path in entries:
        if name is None:
            continue
        if name in explicit or name in reserved:
            other = f"checkpoint {explicit[name]!r}" if name in explicit else "a step-0 model"
            raise ConfigError(f"checkpoints: name {name!r} is given to both {path!r} and {other}; "
                              "give every model a different name")
        explicit[name] = path
    auto = [i for i, (name, _) in enumerate(entries) if name is None]
    parts = {i: _name_parts(entries[i][1]) for i in auto}
    k = {i: parts[i][1] for i in auto}
    suffix = lambda i: "/".join(parts[i][0][-k[i]:])
    taken = reserved | set(explicit)
    while True:
        groups: dict[str, list[int]] = {}
        for i in auto:
            groups.setdefault(suffix(i), []).append(i)
        clashes = [(n, idx) for n, idx in groups.items() if len(idx) > 1 or n in taken]
        if not clashes:
            return [name if name is not None else suffix(i) for i, (name, _) in enumerate(entries)]
        for n, idx in clashes:
            longer = [i for i in idx if k[i] < len(parts[i][0])]
            if not longer:
                paths = [entries[i][1] for i in idx]
                why = "is listed more than once" if len(idx) > 1 else "would be named like another model"
                raise ConfigError(f"checkpoints: {paths[0]!r} {why} (name {n!r}); remove the duplicate or "
                                  "name it: checkpoints=[{name: ..., path: ...}]")
            for i in longer:
                k[i] += 1


def _sample_stems(names: Iterable[str]) -> dict[str, str]:
    """File-name stems for the per-model sample files, distinct even where two names sanitise alike."""
    stems: dict[str, str] = {}
    for name in names:
        stem, n = _safe(name), 1
        while stem in stems.values():
            n += 1
            stem = f"{_safe(name)}-{n}"
        stems[name] = stem
    return stems


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={name!r} but CUDA is not available; use device=cpu (or device=auto)")
    return name


def evaluate_choice_task(model, tokenizer, docs: list[ChoiceDoc], cfg, desc) -> tuple[dict, list[dict]]:
    requests = []
    for doc in docs:
        pairs = [encode_pair(tokenizer, doc.context, TARGET_DELIMITER + c) for c in doc.choices]
        requests.append((pairs[0][0], [cont for _, cont in pairs]))
    max_length = model_max_length(model.config, tokenizer, cfg.get("max_length"))
    scores = score_choices(
        model, requests, max_length=max_length, token_budget=cfg.token_budget, chunk=cfg.chunk,
        score_context=bool(cfg.get("ppl_text", True)), desc=desc,
    )
    return choice_metrics(docs, scores), choice_records(docs, scores)


def evaluate_rolling_task(model, tokenizer, docs: list[TextDoc], cfg, desc) -> tuple[dict, list[dict]]:
    max_length = model_max_length(model.config, tokenizer, cfg.get("max_length"))
    loglik, n_tokens = score_documents(
        model, tokenizer, docs, prefix_token=prefix_token_id(tokenizer), max_length=max_length,
        token_budget=cfg.token_budget, chunk=cfg.chunk, desc=desc,
    )
    return rolling_metrics(docs, loglik, n_tokens), rolling_records(docs, loglik, n_tokens)


def evaluate_model(model, tokenizer, tasks: dict[str, dict], docs: dict, cfg, name: str, samples_dir,
                   sample_stem: str | None = None, heldout: HeldoutData | None = None):
    results: dict[str, dict] = {}
    for task_name, task in tasks.items():
        desc = f"{name}/{task_name}" if cfg.get("progress", True) else None
        start = time.perf_counter()
        records: list[dict] = []
        if task["type"] == "multiple_choice":
            metrics, records = evaluate_choice_task(model, tokenizer, docs[task_name], cfg, desc)
        elif task["type"] == "rolling":
            metrics, records = evaluate_rolling_task(model, tokenizer, docs[task_name], cfg, desc)
        elif task["type"] == "long_ppl":
            metrics = evaluate_long_ppl(model, tokenizer, docs[task_name], task, cfg, desc)
        elif task["type"] == "passkey":
            metrics, records = evaluate_passkey(model, tokenizer, docs[task_name], task, cfg, desc)
        else:
            nll, n_tok = heldout_nll(model, heldout_batches(heldout, tokenizer, task.get("limit")), cfg.chunk, desc)
            metrics = {"ppl": perplexity(nll / n_tok), "nll": nll,
                       "tokens": n_tok}
        seconds = time.perf_counter() - start
        n = metrics.get("n")
        metrics["seconds"] = seconds
        if n:
            metrics["examples_per_s"] = n / seconds
        results[task_name] = metrics
        log.info("%s / %s: %s", name, task_name, {k: round(v, 4) for k, v in metrics.items()})
        if samples_dir is not None and records:
            path = samples_dir / f"{sample_stem or _safe(name)}__{task_name}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for rec in records:
                    fh.write(json.dumps(rec) + "\n")
    return results


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - ${hydra:...} outside a Hydra app
        return Path.cwd() / "eval_outputs"


@task_wrapper
def run(cfg: DictConfig) -> dict:
    """The steps of an evaluation: every model on every task, then one report."""
    check_eval_config(cfg)  # evaluate.py ran it already, before this module's imports; kept for callers in code
    tasks = selected_tasks(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    specs = model_specs(cfg, device)
    docs = task_docs(tasks, cfg)  # rows do not depend on the model: loaded (and validated) once, before any model
    heldout = heldout_definitions(cfg, specs) if any(t["type"] == "heldout" for t in tasks.values()) else {}
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_dir = out_dir / "samples" if cfg.get("log_samples") else None
    if samples_dir is not None:
        samples_dir.mkdir(exist_ok=True)
    stems = _sample_stems(s.name for s in specs)
    loggers = instantiate_group(cfg.get("logger"))

    results: dict[str, dict] = {}
    for spec in specs:  # one model in memory at a time: loaded, evaluated, freed
        results[spec.name] = evaluate_spec(spec, device, tasks, docs, cfg, samples_dir, stems[spec.name],
                                           heldout.get(spec.name))

    meta = {"models": {s.name: s.source for s in specs}, "tasks": tasks, "device": device,
            "heldout_data": {name: h.describe() for name, h in heldout.items()},
            "config": OmegaConf.to_container(cfg, resolve=False)}
    paths = write_report(results, out_dir, meta)
    reports = task_reports(results, tasks, out_dir)
    figures = {f"eval/{name}": p["chart"] for name, p in reports.items()}
    log_to_loggers(loggers, results, paths["chart"], figures)
    print(f"\nkiwi eval: outputs in {out_dir}\n")
    print(markdown_table(results))
    for name, report in reports.items():
        print(f"{name}:\n{report['markdown'].read_text(encoding='utf-8')}")
    for name, held in heldout.items():
        print(f"heldout for {name}: {held.describe()}")
    return results


def task_reports(results: dict, tasks: dict[str, dict], out_dir: Path) -> dict[str, dict[str, Path]]:
    """The tables and figure of every task that has its own (``long_ppl``, ``passkey``), by task name."""
    return {name: p for name, t in tasks.items() if t["type"] in TASK_REPORTS
            if (p := TASK_REPORTS[t["type"]](results, out_dir, name))}


def task_docs(tasks: dict[str, dict], cfg: DictConfig | None = None) -> dict[str, list]:
    """The rows of every task that has rows (not ``heldout``), each checked to fit its task type;
    ``long_ppl`` gets its candidate long documents (from its own files or the eval config's ``data``),
    ``passkey`` its filler sentences."""
    data_cfg = as_dict(cfg.get("data")) if cfg is not None and cfg.get("data") is not None else None
    docs = {name: load_long_texts(t, data_cfg) for name, t in tasks.items() if t["type"] == "long_ppl"}
    docs.update({name: load_filler(t) for name, t in tasks.items() if t["type"] == "passkey"})
    docs.update({name: load_docs(t) for name, t in tasks.items() if t["type"] not in _OWN_ROWS})
    for name, rows in docs.items():
        if tasks[name]["type"] in _OWN_ROWS:
            continue
        kind = ChoiceDoc if tasks[name]["type"] == "multiple_choice" else TextDoc
        if not isinstance(rows[0], kind):
            raise TaskDataError(f"task {name!r}: format {tasks[name]['format']!r} does not fit type "
                                f"{tasks[name]['type']!r}")
    return docs


def evaluate_spec(spec: ModelSpec, device: str, tasks: dict[str, dict], docs: dict, cfg, samples_dir,
                  sample_stem: str, heldout: HeldoutData | None) -> dict[str, dict]:
    """Load one model, evaluate it on every task, and free it before returning, so the next one fits."""
    log.info("loading %s (%s)", spec.name, spec.source)
    try:
        model, tokenizer = spec.load()
    except KiwiError as err:  # already says what to do: keep its type, so it prints as one line
        raise type(err)(f"model {spec.name!r}: {err}") from err
    except Exception as err:
        raise RuntimeError(f"model {spec.name!r} ({spec.source}) could not be loaded: {err}") from err
    try:
        model.to(device).eval()
        return evaluate_model(model, tokenizer, tasks, docs, cfg, spec.name, samples_dir, sample_stem, heldout)
    finally:
        del model, tokenizer
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
