"""The study end to end on a tiny sweep: table, deltas, identity start, plot, W&B, evaluate.py parity."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from kiwi.study.gather import gather, log_to_wandb
from kiwi.study.jobs import load_jobs
from kiwi.train.flops import flops_per_token
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_base_export_is_a_stable_hf_dir_and_reused(tiny_base_dir, kiwi_cache):
    from transformers import AutoConfig

    from .conftest import DATA, TINY, train

    assert AutoConfig.from_pretrained(tiny_base_dir).num_hidden_layers == 2
    assert not tiny_base_dir.with_name(tiny_base_dir.name + ".tmp").exists()
    # the same definition (validating more often does not change the weights): reused, nothing trained
    proc = train(["experiment=tiny_base", f"study.base_dir={tiny_base_dir}", *TINY, *DATA, "budget.total_tokens=1024",
                  "trainer.val_check_interval=2"], kiwi_cache)
    assert "already exists, reusing it" in proc.stdout


@pytest.mark.parametrize("change", ["model.tiny.hidden_size=16", "budget.total_tokens=2048", "optimizer.lr=1e-2"])
def test_a_stale_base_export_is_refused_not_reused(tiny_base_dir, kiwi_cache, change):
    """A base exported from another definition (sizes, budget, lr) is an error naming what differs, not
    silently continued by every study job."""
    from .conftest import DATA, TINY

    args = ["experiment=tiny_base", f"study.base_dir={tiny_base_dir}", *TINY, *DATA, "budget.total_tokens=1024",
            change]
    env = {**os.environ, "KIWI_CACHE": str(kiwi_cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "reusing it" not in proc.stdout
    key = change.split("=")[0]
    assert f"kiwi: error: export_dir {tiny_base_dir} was trained with a different configuration ({key}:" in proc.stderr


def test_gathered_table_deltas_and_identity_start(tiny_sweep, tmp_path):
    g = gather(tiny_sweep, tmp_path / "study")
    assert not g.incomplete
    assert sorted((r["variant"], r["lr"]) for r in g.rows) == sorted(
        (v, lr) for v in ("interleave_id", "control_tokens", "control_flops") for lr in (1e-3, 3e-3))
    by = {(r["variant"], r["lr"]): r for r in g.rows}
    base = by[("control_tokens", 1e-3)]["ppl_step0"]
    for lr in (1e-3, 3e-3):
        dus, ctrl_t, ctrl_f = (by[(v, lr)] for v in ("interleave_id", "control_tokens", "control_flops"))
        # identity_init starts exactly at the base's held-out perplexity
        assert dus["ppl_step0"] == pytest.approx(base, rel=1e-6)
        assert abs(dus["step0_vs_base"]) <= 1e-6
        assert dus["delta_vs_tokens_ctrl_pct"] == pytest.approx(100 * (dus["ppl_end"] / ctrl_t["ppl_end"] - 1))
        assert dus["delta_vs_flops_ctrl_pct"] == pytest.approx(100 * (dus["ppl_end"] / ctrl_f["ppl_end"] - 1))
        assert ctrl_t["tokens"] == dus["tokens"] == 512
        assert ctrl_f["tokens"] > ctrl_t["tokens"]
        assert dus["train_flops"] > ctrl_t["train_flops"] and dus["wall_s"] > 0
    # the equal-FLOPs control spends (at least, to the next whole step) the deeper model's FLOPs
    assert by[("control_flops", 1e-3)]["train_flops"] >= by[("interleave_id", 1e-3)]["train_flops"]
    md = g.files["markdown"].read_text()
    assert "## Base at" in md and "all start at the base" in md
    assert g.files["plot"].stat().st_size > 10_000
    assert g.files["csv"].read_text().splitlines()[0].startswith("regime,variant,seed,lr")


def test_curves_come_from_training_validation(tiny_sweep):
    jobs, _ = load_jobs(tiny_sweep)
    for job in jobs:
        tokens = [t for t, _ in job.curve]
        every = 2 * (2 * 64)  # validation every 2 steps of 2 x 64 tokens, and once more at the end
        assert tokens == sorted({*range(0, job.tokens + 1, every), job.tokens})
        assert job.curve[0][1] == job.ppl_step0 and job.curve[-1][1] == job.ppl_end
        assert all(math.isfinite(p) and p > 1 for _, p in job.curve)


def test_gather_logs_tables_and_plot_to_wandb_offline(tiny_sweep, tmp_path):
    g = gather(tiny_sweep, tmp_path / "study")
    log_to_wandb(g, mode="offline")
    runs = list((tmp_path / "study" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*")}
    assert any(name.endswith(".png") for name in files), files
    assert any(name.endswith(".table.json") for name in files), files


def test_gather_command_line(tiny_sweep, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kiwi.study.gather", str(tiny_sweep), "--out",
                           str(tmp_path / "o"), "--wandb", "disabled"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| variant |" in proc.stdout
    assert (tmp_path / "o" / "results.md").exists() and (tmp_path / "o" / "curves.png").exists()


def test_flops_control_steps_follow_flops_per_token(tiny_sweep, tiny_base_dir):
    from transformers import AutoConfig

    jobs = {(j.variant, j.lr): j for j in load_jobs(tiny_sweep)[0]}
    base = AutoConfig.from_pretrained(tiny_base_dir)
    deep = AutoConfig.from_pretrained(tiny_base_dir)
    deep.num_hidden_layers = 3
    want = 512 * flops_per_token(deep, [64]) / flops_per_token(base, [64])
    per_step = 2 * 64
    assert jobs[("control_flops", 1e-3)].tokens == math.ceil(round(want) / per_step) * per_step


def test_evaluate_py_heldout_matches_training_validation(tiny_sweep, kiwi_cache, tmp_path):
    """evaluate.py's `heldout` task on the job's last checkpoint and on the base gives the numbers the
    training run reported (same data config, same lm_nll)."""
    job = tiny_sweep / "0"
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    report = json.loads((job / "perplexity_report.json").read_text())
    data = cfg.data
    args = ["evaluate.py", "data=corpus", f"data.seq_len={data.seq_len}", f"data.batch_size={data.batch_size}",
            f"data.val_documents={data.val_documents}", f"data.source.packages=[{','.join(data.source.packages)}]",
            "data.num_workers=0", f"tasks.heldout.limit={cfg.trainer.limit_val_batches}", "run_tasks=[heldout]",
            f"model.base={cfg.study.base_dir}", "model.tiny=null", "model.layer_selection=none",
            "compare_base=false", "evaluate_model=true", "progress=false",
            f"checkpoints=[{job / 'checkpoints' / 'last.ckpt'}]", f"hydra.run.dir={tmp_path / 'eval'}"]
    env = {**os.environ, "KIWI_CACHE": str(kiwi_cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert results["base"]["heldout"]["ppl"] == pytest.approx(report["val_ppl_before"], rel=1e-5)
    (ckpt_name,) = [k for k in results if k != "base"]
    assert results[ckpt_name]["heldout"]["ppl"] == pytest.approx(report["val_ppl_after"], rel=1e-5)


def test_same_seeds_give_the_same_table(tiny_sweep, tiny_base_dir, kiwi_cache, tmp_path):
    """The same jobs run again on CPU give identical perplexities (the table minus wall time); the first run
    is the session's sweep, so only the rerun costs time."""
    from .conftest import dus_args, train

    def rows(sweep, out):
        return {(r["variant"], r["lr"]): {k: v for k, v in r.items() if k != "wall_s" and "flops_ctrl" not in k}
                for r in gather(sweep, out).rows if r["variant"] != "control_flops" and r["lr"] == 3e-3}

    train(dus_args(tiny_base_dir, tmp_path / "again", variants="interleave_id,control_tokens", lrs="3e-3"),
          kiwi_cache)
    again, first = rows(tmp_path / "again", tmp_path / "again-out"), rows(tiny_sweep, tmp_path / "first-out")
    assert again == first and len(again) == 2
