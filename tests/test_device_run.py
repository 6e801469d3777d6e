"""bench/device_run.sh --dry-run on CPU: every command of the real GPU job composes (Hydra ``--cfg job``) or
parses (``--help``), with the sizes the job is meant to measure. Run as a real process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT

STEPS = ("make_base", "train_fast_gpu", "train_deepspeed", "export", "export_check", "evaluate_32k")


def _dry_run(out, **env):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "RUNS": str(out / "runs"), **env}
    proc = subprocess.Popen(["bash", "bench/device_run.sh", "--dry-run"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stdout


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_dry")
    rc, stdout = _dry_run(out)
    return out, rc, stdout


def _job(out, name):
    return yaml.safe_load((out / f"{name}.dry").read_text())


def test_dry_run_checks_every_command(dry):
    out, rc, stdout = dry
    assert rc == 0, stdout
    assert [line.removeprefix("dry-run ok: ") for line in stdout.splitlines() if line.startswith("dry-run")] == \
        list(STEPS)
    assert not (out / "runs" / "fast_gpu").exists()  # nothing ran


def test_dry_run_composes_the_full_size_job(dry):
    out, _, _ = dry
    fast, ds = _job(out, "train_fast_gpu"), _job(out, "train_deepspeed")
    for job in (fast, ds):
        assert job["data"]["seq_len"] == 32768 and job["model"]["layer_selection"]["n_target"] == 38
        assert job["model"]["base"].endswith("qwen2.5-0.5b-random") and job["trainer"]["max_steps"] == 30
    assert fast["trainer"]["precision"] == "bf16-true" and fast["model"]["compile"] is True
    assert ds["trainer"]["strategy"]["_target_"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    ev = _job(out, "evaluate_32k")
    assert ev["run_tasks"] == ["long_ppl", "passkey"] and ev["tasks"]["long_ppl"]["max_length"] == 32768
    assert max(ev["tasks"]["passkey"]["lengths"]) == 32768 and ev["checkpoints"] == [str(out / "runs" / "export")]
    assert "usage: export.py" in (out / "export.dry").read_text()
    assert "export_check.py" in (out / "export_check.dry").read_text()


def test_dry_run_fails_on_a_command_that_does_not_compose(tmp_path):
    rc, stdout = _dry_run(tmp_path, KIWI_DATA="a]b[")  # a broken data.source.files override
    assert rc != 0 and "dry-run FAILED: train_fast_gpu" in stdout and "dry-run ok: export" in stdout
