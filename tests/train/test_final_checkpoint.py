"""last.ckpt is the final state of a run (issue 10), the export equals it, and the outputs are what they say."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from tests.train.test_training_run import _cfg

POISON = "tests.train.callbacks_for_tests.PoisonLossAtBatch"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


def test_last_ckpt_is_the_final_state_and_equals_the_export(tmp_path, kiwi_cache):
    """max_steps=7 with a checkpoint every 5 steps: last.ckpt is step 7, bit-identical to the in-run export."""
    from safetensors.torch import load_file

    from kiwi.train.run import run

    result = run(_cfg(tmp_path, ["trainer.max_steps=7", "callbacks.model_checkpoint.every_n_train_steps=5",
                                 "export_hf=true"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 7 == result["steps"]
    exported = load_file(Path(result["hf_dir"]) / "model.safetensors")
    ckpt = _weights(last)
    assert exported, "the export has weights"
    for name, value in exported.items():
        assert torch.equal(value, ckpt[name]), name


def test_export_names_the_final_directory_and_keeps_the_umask(tmp_path, kiwi_cache, caplog):
    """The export log names the final directory (not the temporary one it is built in), its files get the
    user's umask (safetensors alone writes 0600), and nothing temporary is left beside it."""
    from kiwi.train.run import run

    old_umask = os.umask(0o022)
    try:
        with caplog.at_level(logging.INFO, logger="kiwi.model.io"):
            result = run(_cfg(tmp_path, ["trainer.max_steps=1", "export_hf=true"]))
    finally:
        os.umask(old_umask)
    hf_dir = Path(result["hf_dir"])
    lines = [r.getMessage() for r in caplog.records if "exported Hugging Face model" in r.getMessage()]
    assert lines == [f"exported Hugging Face model to {hf_dir}"]
    assert (hf_dir / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert not list(hf_dir.parent.glob("hf_model.*")), "no temporary or old export left behind"


def test_export_command_keeps_the_checkpoint_dtype(tmp_path, kiwi_cache, capsys):
    """`python -m kiwi.train.export` writes an fp32 checkpoint as fp32 (exact), unless --dtype says otherwise."""
    from safetensors.torch import load_file

    from kiwi.train.export import main as export_main
    from kiwi.train.run import run

    run(_cfg(tmp_path, ["trainer.max_steps=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    export_main([str(last), str(tmp_path / "kept")])
    kept = load_file(tmp_path / "kept" / "model.safetensors")
    ckpt = _weights(last)
    assert {v.dtype for v in kept.values()} == {torch.float32}
    assert all(torch.equal(v, ckpt[k]) for k, v in kept.items())
    export_main([str(last), str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    assert {v.dtype for v in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    with pytest.raises(SystemExit):
        export_main(["--help"])
    assert "default: keep the checkpoint's dtype" in " ".join(capsys.readouterr().out.split())


def test_nonfinite_stop_mid_accumulation_leaves_the_last_good_state(tmp_path, kiwi_cache):
    """Accumulation 2, the 2nd micro-batch of step 4 is non-finite: last.ckpt is step 3 (no periodic checkpoint
    was due), finite, and resuming from it reproduces an uninterrupted run exactly (same data position)."""
    from kiwi.train.module import NonFiniteLossError
    from kiwi.train.run import run

    common = ["trainer.accumulate_grad_batches=2", "trainer.max_steps=5", "trainer.log_every_n_steps=1",
              "callbacks.model_checkpoint.every_n_train_steps=100"]
    straight = tmp_path / "straight"
    run(_cfg(straight, common))

    stopped = tmp_path / "stopped"
    with pytest.raises(NonFiniteLossError):
        run(_cfg(stopped, common, {"poison": {"_target_": POISON, "batch": 7}}))
    last = stopped / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())

    resumed = tmp_path / "resumed"
    run(_cfg(resumed, [*common, f"ckpt_path={last}"]))
    ref, got = _weights(straight / "checkpoints" / "last.ckpt"), _weights(resumed / "checkpoints" / "last.ckpt")
    for name, value in ref.items():
        assert torch.equal(value, got[name]), name


def test_outputs_show_only_values_that_exist(tmp_path, kiwi_cache, capsys):
    """A resumed run reports the step-0 perplexity of the run it continues (carried in the checkpoint) and
    the whole validation curve, never `None`; a run without any (debug=fdr) prints no perplexity line."""
    import json

    from kiwi.train.run import run

    first = run(_cfg(tmp_path / "a", ["trainer.max_steps=2", "validate_before=true"]))
    capsys.readouterr()
    run(_cfg(tmp_path / "b", ["trainer.max_steps=3", f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"]))
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "b" / "perplexity_report.json").read_text())
    assert report["val_ppl_before"] == first["val/ppl_before"] is not None
    # the curve as the checkpoint knew it (step 0; step 2's final validation came after its save), then step 3
    assert [p["step"] for p in report["val_curve"]] == [0, 3]
    assert f"before {first['val/ppl_before']:.3f} -> after " in out and "None" not in out
    run(_cfg(tmp_path / "c", ["debug=fdr"]))
    out = capsys.readouterr().out
    assert "None" not in out and "held-out perplexity" not in out


def test_last_ckpt_is_a_link_to_the_step_checkpoint_and_resumes_exactly(tmp_path, kiwi_cache):
    """At a step with a periodic checkpoint, last.ckpt is a second name of stepNNNNNNN.ckpt (one copy on disk,
    not two); rotating the old periodic file out keeps it whole, and a resume from it is exact."""
    from kiwi.train.callbacks import RunInterrupted
    from kiwi.train.run import run
    from tests.train.test_training_run import _train_losses

    common = ["trainer.max_steps=6", "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=2"]
    straight = tmp_path / "straight"
    run(_cfg(straight, common))
    folder = straight / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step0000006.ckpt"]  # 2 and 4 rotated out
    assert (folder / "last.ckpt").samefile(folder / "step0000006.ckpt")
    assert (folder / "last.ckpt").stat().st_nlink == 2

    part = tmp_path / "part"  # stopped by SIGTERM at step 4, where a periodic checkpoint is due
    with pytest.raises(RunInterrupted):
        run(_cfg(part, common, {"kill": {"_target_": "tests.train.callbacks_for_tests.SignalAtStep", "step": 4}}))
    last = part / "checkpoints" / "last.ckpt"
    assert last.samefile(part / "checkpoints" / "step0000004.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4

    resumed = tmp_path / "resumed"
    run(_cfg(resumed, [*common, f"ckpt_path={last}"]))
    ref, got = _train_losses(straight), {**_train_losses(part), **_train_losses(resumed)}
    assert sorted(got) == sorted(ref) == list(range(6))
    for step in ref:
        assert got[step] == ref[step], f"step {step}"
    assert not (resumed / "checkpoints" / "last.ckpt").samefile(last)  # the resumed run's own files
    for name, value in _weights(straight / "checkpoints" / "last.ckpt").items():
        assert torch.equal(value, _weights(resumed / "checkpoints" / "last.ckpt")[name]), name


def test_rewriting_a_linked_last_ckpt_leaves_the_step_checkpoint_alone(tmp_path):
    """A full write of last.ckpt (a final step between periodic checkpoints) first drops the shared name,
    so a writer that copies into the file in place cannot change stepNNNNNNN.ckpt."""
    from kiwi.train.checkpoint import link_checkpoint, unshare

    step, last = tmp_path / "step0000002.ckpt", tmp_path / "last.ckpt"
    step.write_bytes(b"step 2")
    link_checkpoint(step, last)
    assert last.samefile(step) and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    unshare(last)
    with last.open("wb") as fh:  # what shutil.move's cross-filesystem copy does to an existing name
        fh.write(b"step 3")
    assert step.read_bytes() == b"step 2" and last.read_bytes() == b"step 3"
    unshare(last)  # a file of its own is left in place
    assert last.read_bytes() == b"step 3"
