"""A real `train.py -m` sweep ends in one table of its jobs (kiwi.train.sweep_summary), a failed job included."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest

from kiwi.cli import ROOT_DIR
from tests.helpers import run_in_group


@pytest.mark.slow
def test_sweep_summary_rows_match_each_jobs_report(tmp_path, kiwi_cache):
    """Job 0 trains 3 steps; job 1 has a bad override (only there), fails in kiwi's preflight with one
    `kiwi: error:` line and so leaves Hydra by SystemExit, aborting the sweep before on_multirun_end."""
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_API_KEY", "WANDB_MODE")}
    env.update({"KIWI_CACHE": str(kiwi_cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    proc = run_in_group([sys.executable, "train.py", "-m", "experiment=quickstart", "trainer.max_steps=3,-5",
                         "data.seq_len=128", "data.val_documents=4", "validate_before=false", "export_hf=false",
                         "logger=none", f"hydra.sweep.dir={sweep}"], 300, cwd=ROOT_DIR, env=env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the sweep still fails as before
    with (sweep / "summary.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == ["0", "1"]
    # only the override that differs between jobs gets a column
    assert list(rows[0])[:3] == ["job", "trainer.max_steps", "status"], list(rows[0])
    assert [r["trainer.max_steps"] for r in rows] == ["3", "-5"]

    report = json.loads((sweep / "0" / "perplexity_report.json").read_text())
    ok = rows[0]
    assert ok["status"] == "finished" and ok["reason"] == ""
    assert float(ok["val/ppl"]) == report["val_ppl_after"]
    assert int(ok["tokens"]) == report["tokens"] and report["steps"] == 3
    assert float(ok["train_flops"]) == report["train_flops"]
    assert float(ok["fit_wall_s"]) == report["fit_wall_s"]

    failed = rows[1]
    reason = (sweep / "1" / "FAILED").read_text().strip()
    assert failed["status"] == "failed" and failed["reason"] == reason
    assert reason.startswith("kiwi: error: trainer.max_steps") and "-5" in reason
    assert not (sweep / "1" / "perplexity_report.json").exists()
    assert failed["val/ppl"] == failed["tokens"] == failed["train_flops"] == ""

    md = (sweep / "summary.md").read_text()
    assert "1 of 2 jobs finished." in md
    assert "| 1 | -5 | failed |" in md and reason in md
    assert f"| 0 | 3 | finished | {report['val_ppl_after']:.3f} | {report['tokens']} |" in md
    png = (sweep / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_no_summary_outside_a_multirun(tmp_path, kiwi_cache):
    """A single run (`train.py` without -m) writes no summary: the callback acts only in multirun mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR",)}
    env.update({"KIWI_CACHE": str(kiwi_cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    run = tmp_path / "run"
    proc = run_in_group([sys.executable, "train.py", "experiment=quickstart", "trainer.max_steps=-5", "logger=none",
                         f"hydra.run.dir={run}"], 120, cwd=ROOT_DIR, env=env)
    assert proc.returncode == 1 and (run / "FAILED").exists(), proc.stderr[-2000:]
    assert not list(tmp_path.rglob("summary.*"))
