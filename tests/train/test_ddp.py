"""Two real processes: ``train.py`` with Lightning DDP on CPU (gloo), quickstart-size model, a small local
corpus. DeepSpeed refuses CPU; DDP exercises the same rank and world-size paths of the data, the loss and
the checkpoints. Each run is shared by several tests (module-scoped fixtures); ``RecordRank`` (a test
callback) writes what each rank saw and computed."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, compose

pytestmark = pytest.mark.slow

N_DOCS, VAL_DOCS, STEPS, SIGTERM_AT, NAN_AT = 40, 4, 8, 3, 2
WORDS = ["the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "that", "this",
         "it", "be", "are", "was", "an", "or", "which", "one", "data", "value"]
RECORD = "tests.train.callbacks_for_tests.RecordRank"


def _corpus(path: Path) -> list[str]:
    """Short unique documents, so an epoch is a few steps per rank and the last rows are padded."""
    rng = random.Random(0)
    texts = [f"document {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 18))) + "."
             for i in range(N_DOCS)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def _train(out: Path, corpus: Path, *overrides: str, record: dict | None = None, steps: int = STEPS,
           check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py ...`` on 2 CPU processes writing to ``out`` (it must succeed when ``check``)."""
    args = ["experiment=quickstart", "data=local", f"data.source.files=['{corpus}']", "data.seq_len=64",
            "data.batch_size=2", f"data.val_documents={VAL_DOCS}", "data.num_workers=0", "data.shuffle_buffer=8",
            "trainer.devices=2", "trainer.strategy=ddp", f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1",
            "trainer.val_check_interval=4", "logger=csv", "validate_before=false", "export_hf=false",
            "~callbacks.layer_plan", f"hydra.run.dir='{out}'", "data.partitions=null", *overrides,
            f"+callbacks.record._target_={RECORD}", f"+callbacks.record.out_dir='{out}'"]
    args += [f"+callbacks.record.{k}={v}" for k, v in (record or {}).items()]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK",
                                                            "NODE_RANK", "WORLD_SIZE", "RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def _ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _losses(out: Path) -> dict[int, float]:
    rows = csv.DictReader((out / "csv" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, kiwi_cache) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("ddp-corpus") / "docs.jsonl"
    return path, _corpus(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("straight")
    _train(out, corpus[0], record={"grads_at_step": 0})
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, corpus) -> tuple[Path, Path]:
    """SIGTERM on both ranks after step SIGTERM_AT, then a resume from the checkpoint it left (its exit
    status and the checkpoint's name are the signal handler's business, not this test's)."""
    part, rest = tmp_path_factory.mktemp("part"), tmp_path_factory.mktemp("resumed")
    _train(part, corpus[0], "+callbacks.kill._target_=tests.train.callbacks_for_tests.SignalAtStep",
           f"+callbacks.kill.step={SIGTERM_AT}", check=False)
    ckpt = next((p for p in (part / "checkpoints" / n for n in ("interrupted.ckpt", "last.ckpt")) if p.exists()), None)
    assert ckpt is not None, "SIGTERM on both ranks left no checkpoint"
    assert SIGTERM_AT <= torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] < STEPS
    _train(rest, corpus[0], f"ckpt_path='{ckpt}'")
    return part, rest


def test_every_training_document_once_per_epoch_across_ranks(straight, corpus):
    """Each rank's documents up to its first repeat are its epoch; together the two epochs hold every
    training document exactly once (none twice, none on both ranks, none missing)."""
    texts = corpus[1]
    epochs = []
    for rank in _ranks(straight):
        docs = rank["docs"]
        first_repeat = next((i for i, d in enumerate(docs) if d in docs[:i]), None)
        assert first_repeat is not None, "the run must go past one epoch on every rank"
        epochs.append(docs[:first_repeat])
    assert epochs[0] and epochs[1]
    assert not set(epochs[0]) & set(epochs[1]), "a document was trained on by both ranks"
    assert Counter(epochs[0] + epochs[1]) == Counter(texts[VAL_DOCS:])


def test_validation_perplexity_identical_on_both_ranks(straight):
    r0, r1 = _ranks(straight)
    assert [s for s, _ in r0["val"]] == [4, 8]
    assert r0["val"] == r1["val"]


def test_logged_validation_tokens_are_the_held_out_sets_once(straight):
    """Every rank scores the whole held-out set: ``val/tokens`` is its label count, not world_size times it."""
    from transformers import AutoTokenizer

    from kiwi.data.datamodule import PackedDataModule

    ckpt = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    dm = PackedDataModule(AutoTokenizer.from_pretrained(ckpt["kiwi"]["tokenizer_dir"]),
                          **ckpt["datamodule_hyper_parameters"])
    dm.setup("validate")
    held_out = sum(int((b["labels"] != -100).sum()) for b in dm.val_dataloader())
    logged = {float(r["val/tokens"]) for r in csv.DictReader((straight / "csv" / "metrics.csv").open())
              if r.get("val/tokens")}
    assert logged == {float(held_out)}


def test_gradient_and_logged_loss_weigh_every_token_of_the_global_batch(straight, kiwi_cache, tmp_path):
    """The all-reduced gradient of step 0 on 2 ranks equals one process's gradient on the union of both
    ranks' rows, and the logged loss is that batch's token mean (ranks hold unequal label counts)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from kiwi.model.build import as_dict
    from kiwi.train.module import KiwiLM
    from tests.train.callbacks_for_tests import RecordRank

    r0, r1 = _ranks(straight)
    assert torch.equal(r0["grads"][next(iter(r0["grads"]))], r1["grads"][next(iter(r1["grads"]))])
    rows = [r0["rows"][0], r1["rows"][0]]
    counts = [int((r["labels"] != -100).sum()) for r in rows]
    assert counts[0] != counts[1], "pick a step whose ranks hold unequal label counts"
    union = {k: torch.cat([r[k] for r in rows]) for k in ("input_ids", "labels", "position_ids")}

    cfg = compose("train", ["experiment=quickstart"], output_dir=tmp_path)
    lm = KiwiLM(as_dict(cfg.model), as_dict(cfg.optimizer), as_dict(cfg.scheduler), cache_dir=str(kiwi_cache))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.copy_(r0["init"][name])
    ref = RecordRank(str(tmp_path), grads_at_step=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[ref])
    trainer.fit(lm, train_dataloaders=DataLoader([union], batch_size=None))
    assert ref.grads.keys() == r0["grads"].keys()
    diff = sum((ref.grads[k] - r0["grads"][k]).double().norm() ** 2 for k in ref.grads) ** 0.5
    norm = sum(ref.grads[k].double().norm() ** 2 for k in ref.grads) ** 0.5
    assert diff / norm < 1e-5, f"relative gradient difference {diff / norm:.3g}"
    assert _losses(straight)[0] == pytest.approx(float(trainer.callback_metrics["train/loss"]), rel=1e-5)


def test_sigterm_then_resume_gives_the_uninterrupted_losses(straight, resumed):
    part, rest = resumed
    ref, first, second = _losses(straight), _losses(part), _losses(rest)
    assert len(ref) == STEPS and SIGTERM_AT <= len(first) < STEPS  # (CSV step s logs optimizer step s + 1)
    got = {**first, **second}
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), f"step {step}"


def test_nan_on_one_rank_with_skip_keeps_both_ranks_finite_and_identical(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("nan")
    _train(out, corpus[0], "module.nonfinite_loss=skip",
           "+callbacks.poison._target_=tests.train.callbacks_for_tests.PoisonLossOnRank",
           f"+callbacks.poison.step={NAN_AT}", "+callbacks.poison.rank=1", record={"weights": "true"}, steps=4)
    r0, r1 = _ranks(out)
    assert r0["skipped_steps"] == r1["skipped_steps"] == 1
    assert r0["global_step"] == r1["global_step"] == 4
    for name, w in r0["weights"].items():
        assert torch.isfinite(w).all(), name
        assert torch.equal(w, r1["weights"][name]), f"{name} differs between ranks"
    assert all(v == v for v in _losses(out).values())


def test_nan_on_one_rank_with_stop_stops_every_rank_naming_step_and_rank(tmp_path_factory, corpus):
    """Both ranks stop together (no rank left waiting in a collective), before the update."""
    proc = _train(tmp_path_factory.mktemp("nan-stop"), corpus[0], "module.nonfinite_loss=stop",
                  "+callbacks.poison._target_=tests.train.callbacks_for_tests.PoisonLossOnRank",
                  f"+callbacks.poison.step={NAN_AT}", "+callbacks.poison.rank=1", steps=4, check=False)
    assert proc.returncode != 0
    assert f"non-finite training loss on rank(s) [1] at global step {NAN_AT}" in proc.stdout + proc.stderr
