"""evaluate.py's `heldout` on a training checkpoint reproduces that run's val/ppl with no data options."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import compose

pytestmark = pytest.mark.slow  # a 2-step training run (in process), then evaluations of its checkpoint

# A quickstart-sized run whose data differs from every eval default (data=wikipedia, seq_len 32768).
TRAIN = ["experiment=quickstart", "logger=none", "data.seq_len=128", "data.batch_size=2", "data.val_documents=4",
         "trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=2", "validate_before=false",
         "export_hf=false"]
EVAL = ["compare_base=false", "evaluate_model=false", "run_tasks=[heldout]", "progress=false"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, kiwi_cache):
    from kiwi.train.run import run

    out = tmp_path_factory.mktemp("quickstart-run")
    run(compose("train", TRAIN, output_dir=out))
    return out


def _evaluate(overrides: list[str], out):
    from kiwi.eval.run import run

    results = run(compose("eval", [*EVAL, *overrides], output_dir=out))
    (name,) = results
    meta = json.loads((out / "results.json").read_text())["meta"]
    return results[name]["heldout"], meta["heldout_data"][name]


def test_heldout_of_a_checkpoint_is_its_runs_val_ppl(trained_run, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    report = json.loads((trained_run / "perplexity_report.json").read_text())
    assert report["steps"] == 2 and torch.load(ckpt, weights_only=False)["global_step"] == 2
    heldout, used = _evaluate([f"checkpoints=[{ckpt}]"], tmp_path / "eval")
    assert heldout["ppl"] == report["val_ppl_after"]
    assert used.startswith(f"the training run's data (from {ckpt})") and "seq_len=128" in used
    assert "val_documents=4" in used and "source=corpus" in used
    assert f"heldout for {ckpt.parent.parent.name}/last: the training run's data" in capsys.readouterr().out


def test_command_line_data_options_apply_on_top_of_the_runs_data(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    report = json.loads((trained_run / "perplexity_report.json").read_text())
    heldout, used = _evaluate([f"checkpoints=[{ckpt}]", "data.val_documents=2"], tmp_path / "eval")
    assert "with data.val_documents from the command line" in used and "val_documents=2" in used
    assert "seq_len=128" in used and heldout["ppl"] != pytest.approx(report["val_ppl_after"], rel=1e-6)


def test_checkpoint_without_a_data_config_falls_back_to_the_eval_config_and_says_so(trained_run, tmp_path, caplog):
    """Checkpoints written before kiwi saved the data arguments: the eval config's data, with a warning;
    repeating the run's data options then gives its val/ppl."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    del ckpt["datamodule_hyper_parameters"]
    old = tmp_path / "old" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(ckpt, old)
    report = json.loads((trained_run / "perplexity_report.json").read_text())
    heldout, used = _evaluate([f"checkpoints=[{old}]", "data=corpus", "data.seq_len=128", "data.batch_size=2",
                               "data.val_documents=4", "data.num_workers=0"], tmp_path / "eval")
    assert used.startswith("the eval config's data (data= on the command line)")
    assert heldout["ppl"] == report["val_ppl_after"]
    from kiwi.eval.heldout import heldout_definitions
    from kiwi.eval.run import model_specs

    caplog.clear()
    cfg = compose("eval", [*EVAL, f"checkpoints=[{old}]", "data.val_documents=4"], output_dir=tmp_path / "e2")
    (held,) = heldout_definitions(cfg, model_specs(cfg, "cpu")).values()
    assert held.origin == "the eval config's data (no training checkpoint carries one)"
    assert "source=hub wikimedia/wikipedia" in held.describe() and "val_documents=4" in held.describe()
    assert f"checkpoint {old} carries no data config" in caplog.text
