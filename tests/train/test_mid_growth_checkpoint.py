"""A grow-in-steps checkpoint saved before its second stage joins is evaluated and exported as the model it
was trained as: the layers that had not joined yet are left out (in training they returned their input)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import open_dict

from tests.helpers import ROOT, compose

pytestmark = pytest.mark.slow  # a 4-step training run (in process), then an export and an evaluation

STEP = 1  # saved here; the second stage joins at step round(1 x 4 / 2) = 2
IDS = list(range(5, 69))
# Plain copies (identity_init=false): a layer that has not joined yet is not the identity if it is run.
TRAIN = ["experiment=quickstart", "logger=none", "data.seq_len=128", "data.batch_size=2", "data.val_documents=4",
         "trainer.max_steps=4", "trainer.val_check_interval=1", "model.layer_selection.identity_init=false",
         "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
         "validate_before=false", "export_hf=false"]


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory, kiwi_cache):
    """(run dir, the checkpoint of step 1, the training module's logits on IDS at step 1)."""
    from kiwi.train.run import run

    out = tmp_path_factory.mktemp("grow-run")
    cfg = compose("train", TRAIN, output_dir=out)
    with open_dict(cfg):
        cfg.callbacks["grow_in_steps"] = {"_target_": "kiwi.train.levers.GrowInSteps", "stages": 2}
        cfg.callbacks["logits"] = {"_target_": "tests.train.callbacks_for_tests.LogitsAtStep", "step": STEP,
                                   "input_ids": IDS, "out": str(out / "logits.pt")}
    run(cfg)
    return out, out / "checkpoints" / f"step{STEP:07d}.ckpt", torch.load(out / "logits.pt")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([IDS])).logits


def test_a_checkpoint_before_the_second_stage_loads_and_exports_as_trained(grown_run, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from kiwi.model.io import load_model

    _, ckpt, trained = grown_run
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    hf = dict(saved["kiwi"]["hf_config"])
    every_layer = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    every_layer.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()}, strict=False)
    every_layer.tie_weights()
    assert not torch.allclose(_logits(every_layer), trained, atol=1e-3)  # the skipped layers matter

    model, _, plan = load_model(ckpt)  # what evaluate.py loads
    assert torch.equal(_logits(model), trained)
    assert plan.n_target == model.config.num_hidden_layers == 8  # 6 -> 10, 2 of the 4 new layers joined

    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "kiwi.train.export", str(ckpt), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = AutoModelForCausalLM.from_pretrained(out)  # a plain transformers model
    assert torch.equal(_logits(exported), trained)
    assert json.loads((out / "layer_plan.json").read_text())["n_target"] == 8


@pytest.mark.parametrize("step", [STEP, 2])  # 2: saved at the step the second stage joins, validated joined
def test_evaluate_heldout_of_a_mid_growth_checkpoint_is_its_runs_val_ppl_at_that_step(grown_run, tmp_path, step):
    from kiwi.eval.run import run

    run_dir = grown_run[0]
    ckpt = run_dir / "checkpoints" / f"step{step:07d}.ckpt"
    curve = json.loads((run_dir / "perplexity_report.json").read_text())["val_curve"]
    at_step = next(p["ppl"] for p in curve if p["step"] == step)
    results = run(compose("eval", ["compare_base=false", "evaluate_model=false", "run_tasks=[heldout]",
                                   "progress=false", f"checkpoints=[{ckpt}]"], output_dir=tmp_path / "eval"))
    (heldout,) = [r["heldout"] for r in results.values()]
    assert heldout["ppl"] == pytest.approx(at_step, rel=1e-12)


def test_an_older_checkpoint_saved_mid_growth_is_refused_in_one_line(grown_run, tmp_path):
    """A checkpoint of a kiwi that did not record the skipped layers: mid-growth it is refused (naming the
    growth stage), from the run's end (every stage joined) it loads with every layer."""
    from kiwi.errors import CheckpointError
    from kiwi.model.io import load_model

    run_dir, ckpt, _ = grown_run
    for name in (ckpt.name, "last.ckpt"):
        saved = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        del saved["kiwi"]["skipped_layers"]
        torch.save(saved, tmp_path / name)
    old = tmp_path / ckpt.name
    with pytest.raises(CheckpointError, match=r"saved at step 1 of 4 while growing in steps \(grow_in_steps "
                                              r"stages joined: \[0\]\)"):
        load_model(old)
    proc = subprocess.run([sys.executable, "-m", "kiwi.train.export", str(old), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("kiwi: error: ") and "grow_in_steps" in lines[0], lines
    assert not (tmp_path / "out").exists()
    assert load_model(tmp_path / "last.ckpt")[0].config.num_hidden_layers == 10
