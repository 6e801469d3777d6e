"""The README's quickstart and multirun sweep, run exactly as a user would (subprocess, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiwi.cli import ROOT_DIR


def _train(args: list[str], kiwi_cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KIWI_CACHE": str(kiwi_cache), "HF_HUB_OFFLINE": "1"}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT_DIR, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, kiwi_cache):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    proc = _train(["experiment=quickstart", f"hydra.run.dir={out}"], kiwi_cache)
    assert f"kiwi: outputs in {out}" in proc.stdout
    assert "logging OFFLINE" in proc.stderr + proc.stdout
    report = json.loads((out / "perplexity_report.json").read_text())
    assert report["steps"] == 40
    assert report["val_ppl_after"] < report["val_ppl_before"]
    assert (out / "checkpoints" / "last.ckpt").exists()
    model = AutoModelForCausalLM.from_pretrained(out / "hf_model")
    assert model.config.num_hidden_layers == 10
    assert list((out / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_multirun_two_strategies(tmp_path, kiwi_cache):
    sweep = tmp_path / "sweep"
    _train(["-m", "experiment=quickstart", "model.layer_selection=interleave,solar", "trainer.max_steps=3",
            "data.seq_len=128", "data.val_documents=4", "validate_before=false", f"hydra.sweep.dir={sweep}"],
           kiwi_cache)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "perplexity_report.json").exists())
    assert len(jobs) == 2, list(sweep.iterdir())
    plans = {json.loads((j / "perplexity_report.json").read_text())["plan"] for j in jobs}
    assert plans == {"interleave", "solar"}
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"one W&B run per job in {job}"
    # the sweep summary (kiwi.train.sweep_summary): the differing override, and as a W&B Table in the sweep dir
    md = (sweep / "summary.md").read_text()
    assert "2 of 2 jobs finished." in md and "| job | model/layer_selection | status |" in md, md
    (table,) = (sweep / "wandb").glob("offline-run-*/files/media/table/sweep_summary_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"][:3] == ["job", "model/layer_selection", "status"]
    for row in table["data"]:
        report = json.loads((sweep / row[0] / "perplexity_report.json").read_text())
        assert row[1] == report["plan"] and row[2] == "finished"
        assert row[3] == report["val_ppl_after"] and row[4] == report["tokens"]
