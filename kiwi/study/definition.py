"""A study job's identity is its full training definition: its resolved config minus what is local to the
run (output paths, logger, Hydra runtime), plus the base's own definition hash. The gather groups and pairs
jobs only when their definitions agree in everything but the seed and, across variants, the variant's own
keys; anything else (budget, data, lr, sizes, encoder, workers, ...) that differs would mix runs silently."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from kiwi.cli import LEVER_KEYS
from kiwi.model.build import TRAINING_KEY

# Top-level keys that say where and how a run is recorded, not what it trains.
RUN_LOCAL = ("paths", "logger", "hydra", "task_name", "tags", "export_dir", "ckpt_path", "prerequisites",
             "model.base", "study.base_dir")
# Values that interpolate the run's own folders or the Hydra runtime are run-local wherever they sit.
RUN_LOCAL_INTERPOLATIONS = ("${hydra:", "${paths.")
BASE_KEY = "base.definition"  # the sha256 (12 hex) of the base export's training record
# What one variant may set differently from another of its regime: the layer selection, the FLOPs match,
# the levers (kiwi.cli.LEVER_KEYS: a callback lever as a whole, the schedule as a whole) and the lr.
VARIANT_KEYS = ("model.layer_selection", "budget.match_flops_layers", "optimizer.lr",
                *sorted({".".join(k.split(".")[:2]) if k.startswith("callbacks.") else
                         "scheduler" if k.startswith("scheduler.") else k for k in LEVER_KEYS}))
SEED_KEYS = ("seed",)


def under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _leaves(node, prefix: str, out: dict) -> None:
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
        for key in node:
            _leaves(node._get_node(key), f"{prefix}{key}.", out)
        return
    raw = node._value()
    if isinstance(raw, str) and (any(s in raw for s in RUN_LOCAL_INTERPOLATIONS) or raw == "${seed}"):
        return  # run-local, or the seed itself under another name (data.seed: ${seed})
    try:
        if isinstance(node, DictConfig | ListConfig):
            value = None if node._is_none() else OmegaConf.to_container(node, resolve=True)
        else:
            value = node._dereference_node()._value()
    except Exception:  # noqa: BLE001 - an interpolation that needs the Hydra runtime: keep it as written
        value = str(raw)
    if isinstance(value, str) and any(s in value for s in RUN_LOCAL_INTERPOLATIONS):
        return
    out[prefix.rstrip(".")] = json.loads(json.dumps(value, default=str))


def job_definition(cfg: DictConfig, base_dir: str | None = None) -> dict:
    """{dotted key: resolved value} of everything the job trains from, and ``base.definition``."""
    out: dict = {}
    _leaves(cfg, "", out)
    out = {k: v for k, v in out.items() if not under(k, RUN_LOCAL)}
    out[BASE_KEY] = base_definition_hash(base_dir)
    return out


def base_definition_hash(base_dir: str | None) -> str | None:
    """The base export's own training record (what train.py writes into its config.json), hashed: a base
    retrained from another definition at the same path makes its jobs a different study."""
    config_json = Path(base_dir) / "config.json" if base_dir else None
    if config_json is None or not config_json.exists():
        return None
    try:
        record = json.loads(config_json.read_text()).get(TRAINING_KEY)
    except (json.JSONDecodeError, AttributeError):
        return None
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12] if record else None


def differing(a: dict, b: dict, ignore: Sequence[str]) -> list[str]:
    """The keys (outside ``ignore``) whose values differ, or that one side lacks."""
    return sorted(k for k in set(a) | set(b) if not under(k, ignore) and a.get(k, "<unset>") != b.get(k, "<unset>"))


def mismatch_line(job_path, ref_path, keys: list[str], a: dict, b: dict, why: str) -> str:
    shown = ", ".join(f"{k}={a.get(k, '<unset>')!r} vs {b.get(k, '<unset>')!r}" for k in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return (f"{job_path}: its training definition differs from {ref_path} ({why}) in {shown}{more}; gather them "
            f"separately, or pass --allow-mixed {keys[0]} to pool them with the key shown in the tables")


def check_definitions(groups: dict[tuple, list], allow_mixed: Sequence[str] = ()) -> None:
    """Raise ValueError (one line) for the first job whose definition differs from its group's (same regime,
    variant and lr: everything but the seed) or from its regime's first job (everything but the seed and the
    variant's keys), outside the ``allow_mixed`` keys."""
    first_of_regime: dict = {}
    for (regime, _variant, _lr), members in groups.items():
        ref = first_of_regime.setdefault(regime, members[0])
        for job in members:
            keys = differing(job.definition, members[0].definition, [*SEED_KEYS, *allow_mixed])
            if keys:
                raise ValueError(mismatch_line(job.path, members[0].path, keys, job.definition,
                                               members[0].definition, f"same variant {job.variant}, lr {job.lr:g}"))
            keys = differing(job.definition, ref.definition, [*SEED_KEYS, *VARIANT_KEYS, *allow_mixed])
            if keys:
                raise ValueError(mismatch_line(job.path, ref.path, keys, job.definition, ref.definition,
                                               f"its pair in regime {regime}"))


def mixed_value(jobs: Sequence, key: str) -> str:
    """The values an --allow-mixed key takes over ``jobs`` (prefix keys: every leaf under it), as a cell."""
    values = []
    for job in jobs:
        leaves = {k: v for k, v in job.definition.items() if under(k, [key])}
        value = leaves.get(key, leaves or None) if key in leaves or not leaves else leaves
        text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
        if text not in values:
            values.append(text)
    return " / ".join(values)
