"""Real, very small studies run once per session through train.py as a user runs it: the v1 pair (tiny_base,
then a tiny_dus multirun of one identity variant and both controls at two learning rates) and the v2 pair
(study_cpu_base for a tokens-per-parameter budget, then study_cpu 2 -> 4 layers: every lever and both controls
x 2 seeds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Small enough for seconds per job on 2 cores, same code path as the real study.
DATA = ["data.seq_len=64", "data.batch_size=2", "data.val_documents=4", "data.source.packages=[stdlib]",
        "trainer.limit_val_batches=2", "logger=csv"]
TINY = ["model.tiny.num_hidden_layers=2", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64",
        "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1", "model.tiny.vocab_size=1024",
        "model.tiny.corpus_packages=[stdlib]"]
VARIANTS = "interleave_id,control_tokens,control_flops"
LRS = "1e-3,3e-3"


def train(args: list[str], cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KIWI_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def dus_args(base_dir: Path, sweep_dir: Path, variants: str = VARIANTS, lrs: str = LRS) -> list[str]:
    return ["-m", "experiment=tiny_dus", f"study.base_dir={base_dir}", "study.n_target=3", *DATA,
            "budget.total_tokens=512", "trainer.val_check_interval=2", f"optimizer.lr={lrs}",
            f"+study={variants}", f"hydra.sweep.dir={sweep_dir}"]


@pytest.fixture(scope="session")
def tiny_base_dir(kiwi_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    base_dir = root / "tiny_base"
    train(["experiment=tiny_base", f"study.base_dir={base_dir}", *TINY, *DATA, "budget.total_tokens=1024",
           "trainer.val_check_interval=4", f"hydra.run.dir={root / 'base_run'}"], kiwi_cache)
    return base_dir


@pytest.fixture(scope="session")
def tiny_sweep(kiwi_cache, tiny_base_dir, tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("study-sweep") / "sweep"
    train(dus_args(tiny_base_dir, sweep), kiwi_cache)
    return sweep


V2_VARIANTS = ("control_tokens,control_flops,interleave_id,interleave_id_2phase,interleave_id_lrcopy,"
               "interleave_id_distill,interleave_id_grow2,interleave_id_norewarm,interleave_id_lrcopy_distill")
V2_SEEDS = "1,2"


@pytest.fixture(scope="session")
def v2_base_dir(kiwi_cache, tmp_path_factory) -> Path:
    base_dir = tmp_path_factory.mktemp("study-v2") / "base"
    train(["experiment=study_cpu_base", f"study.base_dir={base_dir}", "study.base_tokens_per_param=0.05",
           *TINY, *DATA, "trainer.val_check_interval=4"], kiwi_cache)
    return base_dir


@pytest.fixture(scope="session")
def v2_sweep(kiwi_cache, v2_base_dir, tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("study-v2-sweep") / "sweep"
    train(["-m", "experiment=study_cpu", f"study.base_dir={v2_base_dir}", "study.base_tokens_per_param=0.05",
           "study.n_target=4", *DATA, "budget.total_tokens=512", "trainer.val_check_interval=2",
           f"seed={V2_SEEDS}", f"+study={V2_VARIANTS}", f"hydra.sweep.dir={sweep}"], kiwi_cache)
    return sweep
