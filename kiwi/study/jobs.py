"""Read one tiny_dus multirun back from disk: per job its variant, learning rate and held-out curve.

Everything comes from what train.py already writes per job (``.hydra/config.yaml``,
``perplexity_report.json``, ``csv/metrics.csv``), so a study can be gathered long after it ran.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kiwi.cli import CONTROL_FLOPS, CONTROL_TOKENS, LEVER_KEYS, setting_with_levers
from kiwi.model.loss import perplexity
from kiwi.study.definition import job_definition
from kiwi.study.sweeps import check_one_launch

log = logging.getLogger(__name__)


@dataclass
class StudyJob:
    path: Path
    variant: str
    strategy: str
    identity_init: bool
    trainable: str
    lr: float
    seed: int
    ppl_step0: float | None
    ppl_end: float | None
    steps: int
    tokens: int
    train_flops: float | None            # every FLOP of the run: the distillation teacher's forwards included
    wall_s: float | None
    wandb_group: str | None = None
    teacher_flops: float = 0.0           # of which the distillation teacher's forward passes
    wandb_project: str | None = None
    base_dir: str | None = None          # the base every job of one regime continues (model.base)
    base_tokens_per_param: float | None = None  # the regime knob (study.base_tokens_per_param)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (tokens trained, held-out ppl)
    definition: dict = field(default_factory=dict)  # kiwi.study.definition.job_definition: what it trained from

    @property
    def is_control(self) -> bool:
        return self.variant in (CONTROL_TOKENS, CONTROL_FLOPS)

    @property
    def regime(self) -> str:
        """Jobs continuing the same base belong to one regime (one section of the report)."""
        if self.base_tokens_per_param is not None:
            return f"{self.base_tokens_per_param:g} tokens/param"
        return Path(self.base_dir).name if self.base_dir else "base"


def variant_label(cfg) -> str:
    """The ``+study=`` name of a job (conf/study/<name>.yaml), derived from its resolved config rather than
    from how it was asked for, so `+study=solar_id` and `model.layer_selection=solar
    model.layer_selection.identity_init=true` get the same row: kiwi.cli's setting name, plus the levers'
    suffixes (kiwi.cli.lever_suffix) on every variant but the controls."""
    layer_selection = {key: _select(cfg, f"model.layer_selection.{key}")
                       for key in ("strategy", "identity_init", "trainable")}
    return setting_with_levers(layer_selection, bool(_select(cfg, "budget.match_flops_layers", None)),
                               _resolved_levers(cfg))


def _resolved_levers(cfg) -> dict:
    """The lever keys (kiwi.cli.LEVER_KEYS) of a job's config, resolved one by one (a job's saved config may
    hold interpolations that need the Hydra runtime, such as paths)."""
    out: dict = {}
    for key in LEVER_KEYS:
        value = _select(cfg, key)
        if value is None:
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return out


def _select(cfg, key: str, default=None):
    try:
        value = OmegaConf.select(cfg, key, default=default)
    except Exception:  # noqa: BLE001 - an interpolation that needs the Hydra runtime
        return default
    return default if value is None else value


def read_curve(metrics_csv: Path, tokens_per_step: int) -> list[tuple[int, float]]:
    """(tokens, ppl) of the validations the CSV logger recorded, for runs whose report has no
    ``val_curve``. Lightning logs a validation inside fit at optimizer step - 1 (the one before training,
    at step 0, as 0), so the first val row is step 0 and later rows are shifted by one."""
    if not metrics_csv.exists():
        return []
    points: dict[int, float] = {}
    with metrics_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            loss = row.get("val/loss")
            if loss:
                logged = int(float(row["step"]))
                step = 0 if not points and logged == 0 else logged + 1
                points[step * tokens_per_step] = perplexity(float(loss))
    return sorted(points.items())


def load_job(job_dir: str | Path) -> StudyJob:
    job_dir = Path(job_dir)
    cfg_path, report_path = job_dir / ".hydra" / "config.yaml", job_dir / "perplexity_report.json"
    for path in (cfg_path, report_path):
        if not path.exists():
            raise FileNotFoundError(f"{job_dir}: {path.name} is missing (job not finished, or not a train.py job)")
    cfg = OmegaConf.load(cfg_path)
    report = json.loads(report_path.read_text())
    strategy = str(_select(cfg, "model.layer_selection.strategy", "none"))
    identity = bool(_select(cfg, "model.layer_selection.identity_init", False))
    trainable = str(_select(cfg, "model.layer_selection.trainable", "all"))
    per_step = int(report.get("tokens_per_step") or 0)
    if report.get("val_curve"):  # exact: written by kiwi.train.run
        points = {int(p["tokens"]): float(p["ppl"]) for p in report["val_curve"]}
    else:  # older runs: the CSV logger's float32 copies, with the report's first and last values
        csv_curve = read_curve(job_dir / "csv" / "metrics.csv", per_step) if per_step else []
        points = {t: p for t, p in csv_curve if t <= int(report["tokens"])}
        if report.get("val_ppl_before") is not None:
            points[0] = report["val_ppl_before"]
        if report.get("val_ppl_after") is not None:
            points[int(report["tokens"])] = report["val_ppl_after"]
    return StudyJob(
        path=job_dir,
        variant=variant_label(cfg),
        strategy=strategy,
        identity_init=identity,
        trainable=trainable,
        lr=float(_select(cfg, "optimizer.lr")),
        seed=int(_select(cfg, "seed", 0)),
        ppl_step0=report.get("val_ppl_before"),
        ppl_end=report.get("val_ppl_after"),
        steps=int(report["steps"]),
        tokens=int(report["tokens"]),
        train_flops=report.get("train_flops"),
        teacher_flops=float(report.get("teacher_flops") or 0.0),
        wall_s=report.get("fit_wall_s"),
        wandb_group=_select(cfg, "logger.wandb.group"),
        wandb_project=_select(cfg, "logger.wandb.project"),
        base_dir=_select(cfg, "model.base"),
        base_tokens_per_param=_float_or_none(_select(cfg, "study.base_tokens_per_param")),
        curve=sorted(points.items()),
        definition=job_definition(cfg, _select(cfg, "model.base")),
    )


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def load_jobs(multirun_dir: str | Path) -> tuple[list[StudyJob], list[Path]]:
    """(finished jobs, job directories without results) of a Hydra multirun directory."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"multirun directory {root} does not exist")
    jobs, incomplete = [], []
    job_dirs = sorted((p for p in root.iterdir() if (p / ".hydra").is_dir()), key=_job_order)
    check_one_launch(root, job_dirs)
    for job_dir in job_dirs:
        try:
            jobs.append(load_job(job_dir))
        except FileNotFoundError as err:
            log.warning("%s", err)
            incomplete.append(job_dir)
    if not jobs:
        raise ValueError(f"{root}: no finished train.py jobs (no */perplexity_report.json)")
    return jobs, incomplete


def _job_order(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)
