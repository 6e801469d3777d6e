"""The export-reuse check against measured weights: real ``train.py`` runs that differ only in
``data.num_workers``. In the elastic order (``data.partitions``) the worker count is speed only: the weights
are equal and the export is reused. In the per-stream order (``data.partitions=null``) the rows depend on
the workers: the weights differ and a reuse is refused."""

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


def _run(out: Path, corpus: Path, workers: int, partitions: str) -> list[str]:
    return ["experiment=quickstart", "data=local", f"data.source.files=['{corpus}']", "data.seq_len=64",
            f"data.partitions={partitions}",
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


def _weights(tmp_path: Path, corpus: Path, partitions: str) -> dict[int, dict]:
    weights = {}
    for workers in (0, 2):
        out = tmp_path / f"p{partitions}-w{workers}"
        _train(out, _run(out, corpus, workers, partitions))
        weights[workers] = load_file(out / "export" / "model.safetensors")
    return weights


def _same(weights: dict[int, dict]) -> bool:
    return weights[0].keys() == weights[2].keys() and all(torch.equal(weights[0][k], weights[2][k])
                                                          for k in weights[0])


def test_in_the_elastic_order_the_worker_count_is_speed_only(tmp_path, kiwi_cache):
    corpus = tmp_path / "docs.jsonl"
    _corpus(corpus)
    assert _same(_weights(tmp_path, corpus, "4")), "0 and 2 workers must train bitwise the same weights"
    asks_for_two = compose("train", _run(tmp_path / "p4-w0", corpus, 2, "4"))  # the 0-worker export, 2 asked
    assert reused_export(asks_for_two)["reused"]


def test_in_the_per_stream_order_another_worker_count_is_not_reused(tmp_path, kiwi_cache):
    corpus = tmp_path / "docs.jsonl"
    _corpus(corpus)
    assert not _same(_weights(tmp_path, corpus, "null")), "the per-stream order depends on the workers"
    with pytest.raises(ConfigError, match=r"data\.num_workers: 0 there, 2 now"):
        reused_export(compose("train", _run(tmp_path / "pnull-w0", corpus, 2, "null")))
