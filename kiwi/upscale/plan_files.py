"""A layer plan written beside a run or an exported model: JSON, a text table, a mergekit YAML and a picture."""

from __future__ import annotations

import json
from pathlib import Path

from kiwi.upscale.plan import LayerPlan
from kiwi.upscale.plots import plot_plan


def dtype_name(dtype) -> str:
    """``torch.float32`` -> ``float32``: the name mergekit's ``dtype`` and ``--dtype`` options take."""
    return str(dtype).removeprefix("torch.")


def write_plan_files(plan: LayerPlan, out_dir: str | Path, base_model: str, dtype: str) -> dict[str, Path]:
    """The plan as JSON, a text table, a mergekit passthrough YAML (of ``base_model``, the path or hub id
    the base came from, in ``dtype``) and a PNG picture."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "layer_plan.json", "table": out / "layer_plan.txt",
             "mergekit": out / "layer_plan.mergekit.yaml", "plot": out / "layer_plan.png"}
    files["json"].write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    files["table"].write_text(plan.table() + "\n")
    files["mergekit"].write_text(plan.to_mergekit_yaml(base_model, dtype_name(dtype)))
    plot_plan(plan, files["plot"])
    return files
