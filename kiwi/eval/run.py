"""``evaluate.py``'s body: every requested model on every requested task, then one report.

Models (in table order): the un-upscaled base (``compare_base``), ``model`` as configured (base +
``layer_selection``, upscaled on the fly = step 0 of training), extra ``strategies`` at step 0, and
``checkpoints`` (HF dirs, hub ids, Lightning ``.ckpt`` files, DeepSpeed dirs). Models are loaded one at a
time and freed before the next, so a run never holds two models in memory.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kiwi.errors import KiwiError
from kiwi.eval.choice_scoring import score_choices
from kiwi.eval.encoding import encode_pair, model_max_length, prefix_token_id
from kiwi.eval.metrics import choice_metrics, choice_records, rolling_metrics, rolling_records
from kiwi.eval.perplexity import heldout_nll, score_documents
from kiwi.eval.report import log_to_loggers, markdown_table, write_report
from kiwi.eval.tasks import TARGET_DELIMITER, ChoiceDoc, TaskDataError, TextDoc, load_docs

log = logging.getLogger(__name__)

TASK_TYPES = ("multiple_choice", "rolling", "heldout")


@dataclass
class ModelSpec:
    name: str
    load: Callable[[], tuple[Any, Any]]  # -> (model, tokenizer)
    source: str


def _as_dict(node) -> dict:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def selected_tasks(cfg: DictConfig) -> dict[str, dict]:
    """Task configs named by ``run_tasks``, validated before any model is loaded."""
    names = list(cfg.get("run_tasks") or [])
    if not names:
        raise ValueError("run_tasks is empty: name at least one task (e.g. run_tasks=[hellaswag])")
    available = _as_dict(cfg.get("tasks"))
    out = {}
    for name in names:
        if name not in available:
            raise ValueError(f"run_tasks: unknown task {name!r}; configured tasks: {sorted(available)}")
        task = dict(available[name])
        task.setdefault("name", name)
        if task.get("type") not in TASK_TYPES:
            raise ValueError(f"tasks.{name}.type must be one of {TASK_TYPES}, got {task.get('type')!r}")
        if task.get("limit") is None and cfg.get("limit") is not None:
            task["limit"] = cfg.limit
        out[name] = task
    return out


def _strategy_cfg(entry: Any, model_cfg: Mapping) -> dict:
    """A strategy name (conf/model/layer_selection/<name>.yaml, sized like ``model.layer_selection``) or
    a full layer_selection mapping."""
    from kiwi.config import CONF_DIR

    if isinstance(entry, Mapping):
        return dict(entry)
    path = CONF_DIR / "model" / "layer_selection" / f"{entry}.yaml"
    if not path.exists():
        raise ValueError(f"strategies: unknown strategy {entry!r} (no {path})")
    ls = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    current = model_cfg.get("layer_selection") or {}
    for key in ("n_target", "param_budget"):
        if key in current and key in ls:
            ls[key] = current[key]
    return ls


def model_specs(cfg: DictConfig, device: str) -> list[ModelSpec]:
    from kiwi.model.build import build_model, load_model

    model_cfg = _as_dict(cfg.get("model"))
    if model_cfg:
        model_cfg["attn_implementation"] = cfg.attn_implementation
    cache_dir = cfg.paths.cache_dir
    specs: list[ModelSpec] = []
    seen: set[str] = set()

    def add_built(name: str, layer_selection: dict) -> None:
        mc = {**model_cfg, "layer_selection": layer_selection}
        if name in seen:
            return
        seen.add(name)

        def load():
            built = build_model(mc, cache_dir, device=device)
            return built.model, built.tokenizer

        specs.append(ModelSpec(name, load, f"{model_cfg.get('base') or 'tiny'} + {layer_selection}"))

    current = model_cfg.get("layer_selection") or {"strategy": "none"}
    if model_cfg and cfg.get("compare_base"):
        add_built("base", {"strategy": "none"})
    if model_cfg and cfg.get("evaluate_model", True):
        strategy = current.get("strategy", "none")
        add_built("base" if strategy == "none" else f"{strategy}@step0", current)
    for entry in cfg.get("strategies") or []:
        ls = _strategy_cfg(entry, model_cfg)
        add_built(f"{ls.get('strategy')}@step0", ls)
    for entry in cfg.get("checkpoints") or []:
        path = entry.get("path") if isinstance(entry, Mapping) else str(entry)
        name = entry.get("name") if isinstance(entry, Mapping) else None
        name = name or _checkpoint_name(path)

        def load(path=path):
            model, tokenizer, _ = load_model(
                path, dtype=model_cfg.get("dtype", "float32"), attn_implementation=cfg.attn_implementation,
                device=device,
            )
            return model, tokenizer

        specs.append(ModelSpec(name, load, str(path)))
    if not specs:
        raise ValueError("nothing to evaluate: enable evaluate_model / compare_base or list checkpoints")
    return specs


def _checkpoint_name(path: str) -> str:
    p = Path(path)
    if p.suffix == ".ckpt":
        return f"{p.parent.parent.name}/{p.stem}" if p.parent.name == "checkpoints" else p.stem
    return p.name or str(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available")
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


def heldout_batches(cfg: DictConfig, tokenizer, limit: int | None):
    """The validation batches of the training data config: same documents, packing and labels."""
    from hydra.utils import instantiate

    if cfg.get("data") is None:
        raise ValueError("task 'heldout' needs a `data` config (the held-out documents)")
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    return itertools.islice(loader, limit) if limit else loader


def evaluate_model(model, tokenizer, tasks: dict[str, dict], docs: dict, cfg, name: str, samples_dir):
    results: dict[str, dict] = {}
    for task_name, task in tasks.items():
        desc = f"{name}/{task_name}" if cfg.get("progress", True) else None
        start = time.perf_counter()
        records: list[dict] = []
        if task["type"] == "multiple_choice":
            metrics, records = evaluate_choice_task(model, tokenizer, docs[task_name], cfg, desc)
        elif task["type"] == "rolling":
            metrics, records = evaluate_rolling_task(model, tokenizer, docs[task_name], cfg, desc)
        else:
            nll, n_tok = heldout_nll(model, heldout_batches(cfg, tokenizer, task.get("limit")), cfg.chunk, desc)
            metrics = {"ppl": float(torch.tensor(nll / n_tok, dtype=torch.float64).exp()), "nll": nll,
                       "tokens": n_tok}
        seconds = time.perf_counter() - start
        n = metrics.get("n")
        metrics["seconds"] = seconds
        if n:
            metrics["examples_per_s"] = n / seconds
        results[task_name] = metrics
        log.info("%s / %s: %s", name, task_name, {k: round(v, 4) for k, v in metrics.items()})
        if samples_dir is not None and records:
            path = samples_dir / f"{_safe(name)}__{task_name}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for rec in records:
                    fh.write(json.dumps(rec) + "\n")
    return results


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - ${hydra:...} outside a Hydra app
        return Path.cwd() / "eval_outputs"


def run(cfg: DictConfig) -> dict:
    from kiwi.train.run import finish_loggers, instantiate_group

    tasks = selected_tasks(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    specs = model_specs(cfg, device)
    # Rows do not depend on the model: load (and validate) them once, before any model.
    docs = {name: load_docs(t) for name, t in tasks.items() if t["type"] != "heldout"}
    for name, task_docs in docs.items():
        kind = ChoiceDoc if tasks[name]["type"] == "multiple_choice" else TextDoc
        if not isinstance(task_docs[0], kind):
            raise TaskDataError(f"task {name!r}: format {tasks[name]['format']!r} does not fit type "
                                f"{tasks[name]['type']!r}")
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_dir = out_dir / "samples" if cfg.get("log_samples") else None
    if samples_dir is not None:
        samples_dir.mkdir(exist_ok=True)
    loggers = instantiate_group(cfg.get("logger"))

    results: dict[str, dict] = {}
    for spec in specs:
        log.info("loading %s (%s)", spec.name, spec.source)
        try:
            model, tokenizer = spec.load()
        except KiwiError as err:  # already says what to do: keep its type, so it prints as one line
            raise type(err)(f"model {spec.name!r}: {err}") from err
        except Exception as err:
            raise RuntimeError(f"model {spec.name!r} ({spec.source}) could not be loaded: {err}") from err
        model.to(device).eval()
        results[spec.name] = evaluate_model(model, tokenizer, tasks, docs, cfg, spec.name, samples_dir)
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    meta = {"models": {s.name: s.source for s in specs}, "tasks": tasks, "device": device,
            "config": OmegaConf.to_container(cfg, resolve=False)}
    paths = write_report(results, out_dir, meta)
    log_to_loggers(loggers, results, paths["chart"])
    finish_loggers(loggers)
    print(f"\nkiwi eval: outputs in {out_dir}\n")
    print(markdown_table(results))
    return results
