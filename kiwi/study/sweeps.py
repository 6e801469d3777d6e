"""One multirun folder, one launch: Hydra numbers a sweep's jobs from 0 and never clears the folder, so a
rerun with fewer points (or other values) into the same ``hydra.sweep.dir`` leaves the old jobs beside the
new ones. The launch's ``multirun.yaml`` (rewritten by every launch) says which jobs it produced."""

from __future__ import annotations

import math
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


def _values(overrides: list[str]) -> dict[str, list[str]]:
    """{override key: the values it takes} of a launch's (or a job's) command-line overrides."""
    out = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.get_key_element()
        out[key] = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    return out


def _overrides(path: Path, key: str | None = None) -> list[str]:
    """The override strings stored in ``path`` (at ``key``), as written: never resolved, since multirun.yaml
    also holds the config, and resolving there filled in the ${...} that each job's overrides.yaml keeps
    (escaped), so one launch's jobs looked like another's."""
    node = OmegaConf.load(path)
    node = OmegaConf.select(node, key, default=None) if key else node
    return [] if node is None else list(OmegaConf.to_container(node, resolve=False))


def check_one_launch(root: Path, job_dirs: list[Path]) -> None:
    """Raise ValueError (one line) naming the first job folder of ``root`` the latest launch did not produce:
    a number past its job count, or an override value it did not sweep. Folders without a multirun.yaml
    (written by hand, or by an older Hydra) are not checked."""
    launch = root / "multirun.yaml"
    if not launch.exists():
        return
    task = _overrides(launch, "hydra.overrides.task")
    swept = _values(task)
    count = math.prod(len(v) for v in swept.values()) if swept else 1
    for job_dir in job_dirs:
        why = None
        if job_dir.name.isdigit() and int(job_dir.name) >= count:
            why = f"job number {job_dir.name} is past the {count} jobs of the latest launch"
        elif (job_dir / ".hydra" / "overrides.yaml").exists():
            own = _values(_overrides(job_dir / ".hydra" / "overrides.yaml"))
            bad = [f"{k}={v[0]}" for k, v in own.items() if v[0] not in swept.get(k, [])]
            bad += [f"{k} unset" for k in swept if k not in own]
            if bad:
                why = f"{', '.join(bad)} is not a point of the latest launch ({' '.join(task)})"
        if why:
            raise ValueError(f"{job_dir}: left by an earlier launch into the same folder ({why}), so {root} holds "
                             "jobs from more than one sweep; run each sweep into a fresh folder "
                             "(python -m kiwi.study.run does) and gather the folders it printed")
