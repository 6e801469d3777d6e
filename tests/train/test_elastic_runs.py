"""The elastic data order with real ``train.py`` processes (issue 19): one config run on 1 process with 0
and with 2 dataloader workers and on 2 DDP processes (gloo, CPU) with 1 worker each trains the same
micro-batches in every step; a run stopped by SIGTERM resumes exactly on the other layout.

The global batch is the same everywhere (2 rows x 2 accumulation on 1 process, 2 rows x 2 processes).
1 process with 0 or 2 workers computes the very same micro-batches in the same order, so losses and weights
are bitwise equal. DDP sums the two ranks' gradients in an all-reduce instead of in one accumulation, a
different floating-point order, so there the token ids are compared exactly and the losses to 1e-6
relative."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, run_in_group
from tests.train.test_ddp import _corpus

pytestmark = pytest.mark.slow

STEPS, STOP_AT, PARTS = 8, 3, 4
RECORD = "tests.train.callbacks_for_tests.RecordRank"
LAYOUTS = {"1x0": (1, 0), "1x2": (1, 2), "2x1": (2, 1)}  # processes x dataloader workers


def _train(out: Path, corpus: Path, layout: str, *extra: str, check: bool = True):
    devices, workers = LAYOUTS[layout]
    args = ["experiment=quickstart", "data=local", f"data.source.files=['{corpus}']", "data.seq_len=64",
            "data.batch_size=2", "data.val_documents=4", f"data.num_workers={workers}", "data.shuffle_buffer=8",
            f"data.partitions={PARTS}", f"trainer.devices={devices}", f"trainer.accumulate_grad_batches={3 - devices}",
            f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1", "trainer.val_check_interval=4",
            "logger=csv", "validate_before=false", "export_hf=false", "~callbacks.layer_plan",
            f"hydra.run.dir='{out}'", f"+callbacks.record._target_={RECORD}", f"+callbacks.record.out_dir='{out}'",
            "+callbacks.record.weights=true", *extra]
    if devices > 1:
        args.append("trainer.strategy=ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK",
                                                            "NODE_RANK", "WORLD_SIZE", "RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = run_in_group([sys.executable, "train.py", *args], timeout=300, cwd=ROOT, env=env)
    if check:
        assert proc.returncode == 0, f"train.py ({layout}) failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def _stop_and_resume(root: Path, corpus: Path, first: str, then: str) -> tuple[Path, Path, int]:
    part, rest = root / f"{first}-part", root / f"{first}-then-{then}"
    _train(part, corpus, first, "+callbacks.kill._target_=tests.train.callbacks_for_tests.SignalAtStep",
           f"+callbacks.kill.step={STOP_AT}", check=False)
    ckpt = next((p for p in (part / "checkpoints" / n for n in ("interrupted.ckpt", "last.ckpt")) if p.exists()), None)
    assert ckpt is not None, f"SIGTERM on {first} left no checkpoint"
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert STOP_AT <= step < STEPS
    _train(rest, corpus, then, f"ckpt_path='{ckpt}'")
    return part, rest, step


def _micro_batches(out: Path, layout: str, steps: int | None = None) -> list[list]:
    """The run's micro-batches in global order (step-major, rank-minor, as kiwi.data.partitions numbers
    them), as token-id lists; the first ``steps`` optimizer steps only when given."""
    world = LAYOUTS[layout][0]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False)["rows"] for r in range(world)]
    if steps is not None:
        ranks = [rows[: steps * (3 - world)] for rows in ranks]
    return [b["input_ids"].tolist() for group in zip(*ranks, strict=True) for b in group]


def _losses(out: Path) -> dict[int, float]:
    rows = csv.DictReader((out / "csv" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "rank0.pt", weights_only=False)["weights"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kiwi_cache) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("elastic-runs")
    corpus = root / "docs.jsonl"
    _corpus(corpus)
    out = {"corpus": corpus, "root": root}
    for layout in LAYOUTS:
        out[layout] = root / layout
        _train(out[layout], corpus, layout)
    return out


def test_zero_and_two_workers_train_bitwise_the_same(runs):
    assert _micro_batches(runs["1x0"], "1x0") == _micro_batches(runs["1x2"], "1x2")
    assert len(_losses(runs["1x0"])) == STEPS and _losses(runs["1x0"]) == _losses(runs["1x2"])
    w0, w2 = _weights(runs["1x0"]), _weights(runs["1x2"])
    assert w0.keys() == w2.keys() and all(torch.equal(w0[k], w2[k]) for k in w0)


def test_two_ddp_processes_train_the_same_batches_and_losses(runs):
    assert _micro_batches(runs["2x1"], "2x1") == _micro_batches(runs["1x0"], "1x0")
    ref, ddp = _losses(runs["1x0"]), _losses(runs["2x1"])
    assert sorted(ddp) == sorted(ref)
    for step in ref:
        assert ddp[step] == pytest.approx(ref[step], rel=1e-6), f"step {step}"
    w0, w1 = _weights(runs["1x0"]), _weights(runs["2x1"])
    assert all(torch.allclose(w0[k], w1[k], rtol=1e-4, atol=1e-6) for k in w0)


@pytest.mark.parametrize(("first", "then"), [("2x1", "1x2"), ("1x2", "2x1")])
def test_sigterm_then_resume_on_the_other_layout_continues_the_uninterrupted_run(runs, first, then):
    part, rest, step = _stop_and_resume(runs["root"], runs["corpus"], first, then)
    seen = _micro_batches(part, first, steps=step) + _micro_batches(rest, then)
    assert seen == _micro_batches(runs["1x0"], "1x0")
    ref, got = _losses(runs["1x0"]), {**_losses(part), **_losses(rest)}
    assert sorted(got) == sorted(ref)
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-6), f"step {s}"


def test_kill_9_between_checkpoints_resumes_from_the_last_one_on_another_layout(runs):
    """SIGKILL leaves no checkpoint of its own: the run goes on from its last periodic one (step 4), on the
    other layout, with the uninterrupted run's micro-batches from there (an adversarial review's scenario)."""
    part, rest = runs["root"] / "kill9-part", runs["root"] / "kill9-then-1x2"
    every = ["callbacks.model_checkpoint.every_n_train_steps=4"]
    proc = _train(part, runs["corpus"], "2x1", *every, "+callbacks.kill._target_=tests.train.callbacks_for_tests."
                  "SignalAtStep", "+callbacks.kill.step=6", "+callbacks.kill.signum=9", check=False)
    assert proc.returncode != 0 and not (part / "checkpoints" / "interrupted.ckpt").exists()
    ckpt = part / "checkpoints" / "step0000004.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    _train(rest, runs["corpus"], "1x2", *every, f"ckpt_path='{ckpt}'")
    assert _micro_batches(rest, "1x2") == _micro_batches(runs["1x0"], "1x0")[4 * 2:]
