"""The export-reuse check against measured weights: two real ``train.py`` runs that differ only in
``data.num_workers``. An export is reused for a run that asks for another worker count only if that count
gives the same weights; while the data order depends on the workers, it must be refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kiwi.errors import ConfigError
from kiwi.train.reuse import reused_export
from tests.helpers import ROOT, compose
from tests.train.test_ddp import _corpus

pytestmark = pytest.mark.slow


def _run(out: Path, corpus: Path, workers: int) -> list[str]:
    return ["experiment=quickstart", "data=local", f"data.source.files=['{corpus}']", "data.seq_len=64",
            "data.batch_size=2", "data.val_documents=4", f"data.num_workers={workers}", "data.shuffle_buffer=8",
            "trainer.max_steps=4", "budget.total_tokens=512", "logger=csv", "validate_before=false",
            "~callbacks.layer_plan", f"+export_dir='{out / 'export'}'", "+reuse_export=true"]


def _train(out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "train.py", *overrides, f"hydra.run.dir='{out}'"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:  # its own process group: an interrupted test leaves no dataloader worker behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]


def test_a_worker_count_that_changes_the_weights_is_not_reused(tmp_path, kiwi_cache):
    corpus = tmp_path / "docs.jsonl"
    _corpus(corpus)
    weights = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        _train(out, _run(out, corpus, workers))
        weights[workers] = load_file(out / "export" / "model.safetensors")
    same = all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    asks_for_two = compose("train", _run(tmp_path / "w0", corpus, 2))  # the 0-worker export, 2 workers asked
    if same:
        assert reused_export(asks_for_two)["reused"]
    else:
        with pytest.raises(ConfigError, match=r"data\.num_workers: 0 there, 2 now"):
            reused_export(asks_for_two)
