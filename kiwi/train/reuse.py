"""``reuse_export``: a model already exported to ``export_dir`` (a study's base) is reused instead of trained
again only if it finished its budget and was trained from the same definition; the definition is written
into the export's config.json (``TRAINING_KEY``) by train.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from kiwi.data.sources import resolve_files
from kiwi.errors import ConfigError
from kiwi.model.build import TRAINING_KEY, as_dict
from kiwi.train.parallel import trainer_world_size

log = logging.getLogger(__name__)


# What changes how fast a run goes but not the weights it ends with: left out of training_definition.
# data.num_workers only with data.partitions (the elastic order, kiwi.data.partitions): in the per-stream order
# the rows are a function of world size x workers, so another count trains other batches
# (tests/train/test_reuse_workers.py measures both).
SPEED_ONLY = {"model": ("compile", "activation_checkpointing", "checkpoint_every", "attn_implementation"),
              "data": ("tokenize_batch", "val_batch_size", "val_tokens", "val_seq_len"),
              "budget": ("tokens_per_s_estimate",), "module": ("_target_", "_partial_", "cache_dir", "loss_chunk",
                                                             "loss_impl")}
TRAINER_KEYS = ("max_steps", "max_epochs", "max_time", "limit_train_batches", "fast_dev_run",
                "accumulate_grad_batches", "gradient_clip_val", "precision")
COMPLETION_KEYS = ("steps", "budget_steps")  # how far the exported run got (training_record; not compared)


def training_definition(cfg: DictConfig) -> dict:
    """What an export's weights depend on: model, data, budget, optimizer, schedule, seed, the trainer values
    that change the steps or the arithmetic, the module's loss options and the levers' callbacks; not speed
    settings (``SPEED_ONLY``), logging or validation. Saved with the export, so that a reused one is known
    to match."""
    out = {key: as_dict(cfg.get(key)) for key in ("model", "data", "budget", "optimizer", "scheduler", "module")}
    for key, dropped in SPEED_ONLY.items():
        for name in dropped:
            out[key].pop(name, None)
    if out["data"].get("partitions") is not None:
        out["data"].pop("num_workers", None)
    out["trainer"] = {k: cfg.trainer.get(k) for k in TRAINER_KEYS}  # key by key: others need the Hydra runtime
    out["trainer"]["world_size"] = trainer_world_size(cfg.trainer)  # devices: auto counts the GPUs here
    callbacks = cfg.get("callbacks") or {}
    out["levers"] = {name: as_dict(callbacks[name]) for name in callbacks
                     if str((callbacks[name] or {}).get("_target_", "")).startswith("kiwi.train.levers.")}
    out["seed"] = cfg.get("seed")
    files = (out["data"].get("source") or {}).get("files")
    if files:  # the files themselves (name and size), not where this checkout or a glob spells them
        out["data"]["source"]["files"] = [[f.name, f.stat().st_size] for f in resolve_files(files)]
    return json.loads(json.dumps(out, default=str))


def training_record(cfg: DictConfig, steps: int, budget_steps: int) -> dict:
    """What train.py writes into an export's config.json: the definition and how far the run got."""
    return {**training_definition(cfg), "steps": steps, "budget_steps": budget_steps}


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict) and d:
        return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): d}


def reused_export(cfg: DictConfig) -> dict | None:
    """With ``reuse_export``, a model already exported to ``export_dir`` is kept and nothing is trained, if it
    was trained from the same definition (``training_definition``); a different one is a ConfigError."""
    export_dir = cfg.get("export_dir")
    config_json = Path(export_dir) / "config.json" if export_dir else None
    if not (config_json and cfg.get("reuse_export") and config_json.exists()):
        return None
    try:
        config = json.loads(config_json.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"export_dir {export_dir}: config.json is not valid JSON ({err}); delete the directory "
                          "to train again") from None
    stored = config.get(TRAINING_KEY) if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(stored, dict | None):
        raise ConfigError(f"export_dir {export_dir}: config.json is not a model config with a training record "
                          f"({TRAINING_KEY}); delete the directory to train again")
    if stored is None:
        log.warning("%s has no record of how it was trained (exported by an older kiwi): reusing it unchecked",
                    export_dir)
    else:
        if stored.get("steps") != stored.get("budget_steps"):
            raise ConfigError(f"export_dir {export_dir} holds a run stopped at step {stored.get('steps')} of "
                              f"{stored.get('budget_steps')}; delete it to train again")
        stored = {k: v for k, v in stored.items() if k not in COMPLETION_KEYS}
        old, new = _flat(stored), _flat(training_definition(cfg))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in changed[:4])
            raise ConfigError(f"export_dir {export_dir} was trained with a different configuration ({shown}"
                              f"{'; ...' if len(changed) > 4 else ''}); delete it to train again, or point "
                              "export_dir elsewhere")
    print(f"kiwi: {export_dir} already exists, reusing it (delete it to train again)")
    return {"val/ppl": None, "hf_dir": str(export_dir), "reused": True}
