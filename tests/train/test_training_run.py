"""End-to-end training behaviour on CPU with the real pipeline (tiny offline model, offline corpus)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tests.helpers import compose

FAST = ["experiment=quickstart", "logger=csv", "data.seq_len=128", "data.batch_size=2", "data.val_documents=4",
        "validate_before=false", "export_hf=false", "trainer.val_check_interval=1000"]


def _cfg(tmp_path: Path, extra: list[str], callbacks: dict | None = None):
    cfg = compose("train", FAST + extra, output_dir=tmp_path)
    with open_dict(cfg):
        for name, node in (callbacks or {}).items():
            cfg.callbacks[name] = node
    return cfg


def _train_losses(out_dir: Path) -> dict[int, float]:
    rows = list(csv.DictReader((out_dir / "csv" / "metrics.csv").open()))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_exact_resume_after_sigterm(tmp_path, kiwi_cache):
    """2N steps straight == N steps, SIGTERM (checkpoint), resume for N more: same losses."""
    from kiwi.train.run import run

    n = 3
    straight = tmp_path / "straight"
    run(_cfg(straight, [f"trainer.max_steps={2 * n}", "trainer.log_every_n_steps=1"]))
    ref = _train_losses(straight)
    assert len(ref) == 2 * n

    from kiwi.train.callbacks import RunInterrupted

    part = tmp_path / "part"
    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM at step"):
        run(_cfg(part, [f"trainer.max_steps={2 * n}", "trainer.log_every_n_steps=1"],
                 {"kill": {"_target_": "tests.train.callbacks_for_tests.SignalAtStep", "step": n}}))
    # the signal lands after step n; the step in flight finishes, is checkpointed as last.ckpt, and it stops
    ckpt = part / "checkpoints" / "last.ckpt"
    assert n <= torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] <= n + 1

    resumed = tmp_path / "resumed"
    run(_cfg(resumed, [f"trainer.max_steps={2 * n}", "trainer.log_every_n_steps=1", f"ckpt_path={ckpt}"]))
    got = {**_train_losses(part), **_train_losses(resumed)}
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), f"step {step}"


def test_nonfinite_loss_stops_without_a_poisoned_checkpoint(tmp_path, kiwi_cache):
    from kiwi.train.module import NonFiniteLossError
    from kiwi.train.run import run

    cfg = _cfg(tmp_path, ["trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=1"],
               {"poison": {"_target_": "tests.train.callbacks_for_tests.PoisonLossAtStep", "step": 3}})
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        run(cfg)
    ckpts = sorted((tmp_path / "checkpoints").glob("step*.ckpt"))
    assert ckpts, "the healthy steps before the bad one were checkpointed"
    for path in ckpts:
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert state["global_step"] <= 3
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_skip_mode_skips_the_step(tmp_path, kiwi_cache):
    from kiwi.train.run import run

    cfg = _cfg(tmp_path, ["trainer.max_steps=5", "module.nonfinite_loss=skip", "trainer.log_every_n_steps=1"],
               {"poison": {"_target_": "tests.train.callbacks_for_tests.PoisonLossAtStep", "step": 2}})
    result = run(cfg)
    assert result["steps"] == 5  # the skipped batch did not count as an optimizer step
    losses = _train_losses(tmp_path)
    assert all(v == v for v in losses.values())


def test_export_round_trip(tmp_path, kiwi_cache):
    """The exported HF directory loads in plain transformers and computes what the trained module did;
    `python -m kiwi.train.export` gives the same model from the Lightning checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kiwi.model.io import load_training_checkpoint
    from kiwi.train.export import main as export_main
    from kiwi.train.run import run

    result = run(_cfg(tmp_path, ["trainer.max_steps=2", "export_hf=true"]))
    hf_dir = Path(result["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert model.config.num_hidden_layers == 10
    assert (hf_dir / "layer_plan.json").exists() and (hf_dir / "layer_plan.png").exists()
    ids = torch.tensor([tok("Return the sum of the values along an axis.")["input_ids"]])

    ckpt_model, _, plan = load_training_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert plan.n_target == 10
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ckpt_model(ids).logits, atol=1e-5)

    export_main([str(tmp_path / "checkpoints" / "last.ckpt"), str(tmp_path / "exported"), "--dtype", "float32"])
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_wandb_offline_run_files_written(tmp_path, kiwi_cache):
    import wandb

    from kiwi.train.run import run

    run(_cfg(tmp_path, ["trainer.max_steps=2", "logger=wandb"]))
    assert wandb.run is None  # finished: the next job of a multirun starts its own run
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].glob("*.wandb"))
    assert (tmp_path / "layer_plan.png").exists()


def test_wandb_run_is_finished_when_training_fails(tmp_path, kiwi_cache):
    """The task wrapper finishes W&B in ``finally``: a failed job leaves no open run behind."""
    import wandb

    from kiwi.train.module import NonFiniteLossError
    from kiwi.train.run import run

    cfg = _cfg(tmp_path, ["trainer.max_steps=3", "logger=wandb"],
               {"poison": {"_target_": "tests.train.callbacks_for_tests.PoisonLossAtStep", "step": 1}})
    with pytest.raises(NonFiniteLossError):
        run(cfg)
    assert list((tmp_path / "wandb").glob("offline-run-*")), "the run had started"
    assert wandb.run is None


def test_budget_sets_max_steps_of_the_trainer_it_builds(tmp_path, kiwi_cache):
    """Steps come from the token budget and devices x num_nodes of the trainer config, before the Trainer
    exists, and agree with the world size Lightning then runs (DDP on 2 CPU processes, not launched)."""
    from kiwi.model.build import build_model
    from kiwi.train.run import make_trainer, trainer_world_size, training_budget

    cfg = _cfg(tmp_path, ["trainer.devices=2", "trainer.strategy=ddp", "budget.total_tokens=2000"])
    built = build_model(cfg.model, cfg.paths.cache_dir, device="cpu")
    budget = training_budget(cfg, built)
    assert trainer_world_size(cfg.trainer) == 2 and budget.tokens_per_step == 2 * 128 * 2
    trainer = make_trainer(cfg, budget, [], [])
    assert trainer.world_size == 2 and trainer.max_steps == budget.steps == 4  # ceil(2000 / 512)
    for devices, nodes, world in ((1, 1, 1), ("auto", 1, 1), ([0, 1, 2], 2, 6), (4, 3, 12)):
        tc = _cfg(tmp_path, [f"trainer.devices={devices}", f"trainer.num_nodes={nodes}"]).trainer
        assert trainer_world_size(tc) == world, (devices, nodes)


def test_budget_alone_ends_the_run(tmp_path, kiwi_cache):
    """No trainer.max_steps: the run stops at the budget's step count."""
    from kiwi.train.run import run

    result = run(_cfg(tmp_path, ["trainer.max_steps=-1", "budget.total_tokens=700"]))  # 700 / (2 x 128) -> 3
    assert result["steps"] == 3 and result["tokens"] == 3 * 256


def test_mergekit_yaml_names_the_real_base_and_dtype(tmp_path, kiwi_cache):
    """The plan's mergekit YAML beside the run and in each export is a passthrough config of the base the
    run was built from (its path, not a made-up name) in the weights' dtype, rebuilding the layer plan."""
    import yaml
    from transformers import AutoConfig

    from kiwi.model.io import export_checkpoint
    from kiwi.train.run import run
    from kiwi.upscale import LayerPlan
    from tests.helpers import check_mergekit_passthrough

    result = run(_cfg(tmp_path / "run", ["trainer.max_steps=1", "export_hf=true"]))
    plan = LayerPlan.load(tmp_path / "run" / "layer_plan.json")
    source = AutoConfig.from_pretrained(result["hf_dir"]).kiwi_base_model
    assert (Path(source) / "config.json").exists()  # the tiny base: a real HF directory mergekit can read
    bf16 = export_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "bf16", dtype="bfloat16")
    for folder, dtype in ((tmp_path / "run", "float32"), (Path(result["hf_dir"]), "float32"), (bf16, "bfloat16")):
        parsed = yaml.safe_load((folder / "layer_plan.mergekit.yaml").read_text())
        assert check_mergekit_passthrough(parsed, plan) == (source, dtype), folder


def test_a_flops_matched_run_that_rounds_off_equal_compute_is_flagged_in_its_report(tmp_path, kiwi_cache, caplog):
    """Distillation at equal FLOPs on a budget of 3 whole steps: the teacher's share is less than a step, so
    rounding up gives the full plain budget plus the teacher. The run warns before training and its report
    flags the gap against the plain run's FLOPs; a budget of 400 steps rounds to within the 2%."""
    from kiwi.train.run import run, training_flops

    caplog.set_level("WARNING")
    distill = ["module.distill={flops_matched:true}", "trainer.max_steps=-1"]
    run(_cfg(tmp_path / "small", [*distill, "budget.total_tokens=700"]))  # ceil(700 / 256) = 3 steps
    report = json.loads((tmp_path / "small" / "perplexity_report.json").read_text())
    assert report["steps"] == 3 and report["teacher_flops"] > 0
    assert report["flops_target"] == pytest.approx(report["train_flops"] - report["teacher_flops"])  # 3 plain steps
    assert report["flops_vs_target_pct"] == pytest.approx(100 * report["teacher_flops"] / report["flops_target"],
                                                          abs=1e-3)
    assert report["flops_mismatch"] is True and report["flops_vs_target_pct"] > 2
    assert "not equal compute" in (tmp_path / "small" / "perplexity_report.md").read_text()
    assert any("not equal compute" in r.message for r in caplog.records)

    from kiwi.model.build import build_model
    from kiwi.train.run import flops_gap, flops_target, training_budget

    cfg = _cfg(tmp_path / "large", [*distill, "budget.total_tokens=102400"])  # 400 plain steps
    built = build_model(cfg.model, cfg.paths.cache_dir, device="cpu")
    budget = training_budget(cfg, built)
    own = training_flops(built.model.config, budget.total_tokens, cfg.data.seq_len)
    teacher = training_flops(built.base_config, budget.total_tokens, cfg.data.seq_len) / 3
    gap = flops_gap(own + teacher, flops_target(cfg, built))
    assert budget.steps < 400 and abs(gap["flops_vs_target_pct"]) < 2 and gap["flops_mismatch"] is False
    assert flops_target(_cfg(tmp_path, ["budget.total_tokens=700"]), built) is None  # not FLOPs-matched


def test_a_long_docs_run_reports_its_plan_and_what_it_read(tmp_path, kiwi_cache):
    """``data.long_docs`` through the real run: the report carries the measured plan and, with 0 workers,
    the copies the reader added."""
    from kiwi.train.run import run

    out = tmp_path / "long"
    run(_cfg(out, ["trainer.max_steps=3", "data.num_workers=0", "data.partitions=4",
                   "data.long_docs={min_tokens:4096,target_share:0.8,mode:repeat}"]))
    plan = json.loads((out / "perplexity_report.json").read_text())["long_docs"]
    assert plan["min_tokens"] == 4096 and plan["mode"] == "repeat"
    assert plan["sample_share"] < 0.8 and plan["factor"] > 1 and plan["expected_share"] == pytest.approx(0.8)
    assert plan["read_this_run"]["long_doc_copies"] > 0
