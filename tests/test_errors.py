"""Every anticipated error ends in one clear line from the entry points; unexpected ones keep their traceback.

The messages are checked on real `train.py` / `evaluate.py` processes, offline as the conftest sets it, and
with a hub endpoint that refuses connections (no network, offline mode not forced).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from kiwi.cli import ROOT_DIR, error_line, report_errors
from kiwi.errors import ConfigError, DataError, DeviceError, KiwiError
from tests.helpers import run_in_group

ERROR = "kiwi: error: "


def _run(script: str, args: list[str], kiwi_cache: Path, tmp_path: Path, timeout: int = 180, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_API_KEY", "WANDB_MODE")}
    env.update({"KIWI_CACHE": str(kiwi_cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", **env_extra})
    env = {k: v for k, v in env.items() if v is not None}  # None: unset it
    run_dir = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if "-m" in args else [f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.monotonic()
    proc = run_in_group([sys.executable, script, *args, *run_dir], timeout, cwd=ROOT_DIR, env=env)
    return proc, time.monotonic() - start


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one error line, and it names what it should."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out and 'File "' not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, out[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_hub_model_offline_is_one_line(tmp_path, kiwi_cache):
    proc, _ = _run("train.py", ["trainer=cpu", "logger=none"], kiwi_cache, tmp_path)
    assert_one_line(proc, "model.base", "Qwen/Qwen2.5-0.5B", "HF_HUB_OFFLINE", "experiment=quickstart",
                    "model.base=/path")


@pytest.mark.slow
def test_unreachable_hub_is_one_attempt_and_one_line(tmp_path, kiwi_cache):
    """Offline mode not forced, but nothing answers at the hub endpoint (a closed local port): no retries."""
    proc, seconds = _run("train.py", ["trainer=cpu", "logger=none"], kiwi_cache, tmp_path,
                         HF_HUB_OFFLINE=None, HF_DATASETS_OFFLINE=None, HF_ENDPOINT="http://127.0.0.1:9",
                         HTTPS_PROXY=None, https_proxy=None, ALL_PROXY=None, all_proxy=None)
    assert_one_line(proc, "Qwen/Qwen2.5-0.5B", "unreachable", "experiment=quickstart")
    assert "Retry" not in proc.stdout + proc.stderr
    assert seconds < 60  # huggingface_hub's own backoff alone is 23 s, plus transformers' second try


@pytest.mark.slow
def test_evaluate_hub_model_offline_is_one_line(tmp_path, kiwi_cache):
    proc, _ = _run("evaluate.py", ["data=corpus", "run_tasks=[heldout]"], kiwi_cache, tmp_path)
    assert_one_line(proc, "Qwen/Qwen2.5-0.5B", "model=tiny")


@pytest.mark.slow
def test_hub_dataset_offline_is_one_line_from_a_dataloader_worker(tmp_path, kiwi_cache):
    """The stream is opened inside the worker; torch re-raises its error wrapped in the worker's traceback."""
    proc, _ = _run("train.py", ["experiment=quickstart", "data=wikipedia", "data.num_workers=1", "logger=none"],
                   kiwi_cache, tmp_path)
    line = assert_one_line(proc, "wikimedia/wikipedia", "data=local", "data=corpus")
    assert "Caught" not in line and "worker" not in line


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("override", ["trainer=deepspeed_a100", "trainer=fsdp", "experiment=fast_gpu"])
def test_gpu_trainer_on_cpu_suggests_trainer_cpu(tmp_path, kiwi_cache, override):
    proc, _ = _run("train.py", [override, "logger=none"], kiwi_cache, tmp_path)
    assert_one_line(proc, "GPU", "trainer=cpu")
    assert "Layer plan" not in proc.stdout  # refused before any model is built


@pytest.mark.slow
def test_bad_trainer_value_fails_before_the_model_is_built(tmp_path, kiwi_cache):
    proc, seconds = _run("train.py", ["experiment=quickstart", "trainer.max_steps=-5", "logger=none"],
                         kiwi_cache, tmp_path)
    assert_one_line(proc, "trainer.max_steps", "-5")
    assert "Layer plan" not in proc.stdout and seconds < 60
    assert "trainer.max_steps" in (tmp_path / "run" / "quickstart.log").read_text()  # the job log keeps it


@pytest.mark.slow
def test_multirun_error_is_one_line(tmp_path, kiwi_cache):
    proc, _ = _run("train.py", ["-m", "experiment=quickstart", "trainer.max_steps=-5,-6", "logger=none"],
                   kiwi_cache, tmp_path)
    assert_one_line(proc, "trainer.max_steps", "-5")


@pytest.mark.slow
def test_full_traceback_on_request(tmp_path, kiwi_cache):
    proc, _ = _run("train.py", ["experiment=quickstart", "trainer.max_steps=-5", "logger=none"], kiwi_cache,
                   tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "kiwi.errors.ConfigError: trainer.max_steps" in proc.stderr


@pytest.mark.parametrize(("override", "option"), [
    ("trainer.max_steps=-5", "trainer.max_steps"), ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
    ("trainer.devices=0", "trainer.devices"), ("trainer.num_nodes=0", "trainer.num_nodes"),
    ("trainer.val_check_interval=-1", "trainer.val_check_interval"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
    ("trainer.gradient_clip_val=-1.0", "trainer.gradient_clip_val"),
])
def test_validate_early_rejects_bad_trainer_values(compose_cfg, override, option):
    from kiwi.train.run import validate_early

    with pytest.raises(ConfigError, match=rf"^{option}: "):
        validate_early(compose_cfg("train", ["experiment=quickstart", override]))


def test_validate_early_accepts_the_shipped_cpu_configs(compose_cfg):
    from kiwi.train.run import validate_early

    for overrides in (["experiment=quickstart"], ["experiment=tiny_base"], ["experiment=quickstart", "trainer=gpu"]):
        if "trainer=gpu" in overrides and not torch.cuda.is_available():
            with pytest.raises(DeviceError, match="trainer=cpu"):
                validate_early(compose_cfg("train", overrides))
        else:
            validate_early(compose_cfg("train", overrides))


class _BadRows(torch.utils.data.IterableDataset):
    def __iter__(self):
        raise DataError("data.source.files: corpus.jsonl:3: record has no field 'text'")


def test_error_from_a_dataloader_worker_is_its_own_message():
    """torch re-raises a worker's error with the worker's whole traceback as the message."""
    loader = torch.utils.data.DataLoader(_BadRows(), num_workers=1, batch_size=None)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)
    assert error_line(info.value) == "data.source.files: corpus.jsonl:3: record has no field 'text'"


def test_report_errors_prints_one_line_and_keeps_unexpected_tracebacks(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @report_errors
    def anticipated():
        raise KiwiError("trainer.max_steps: expected an integer >= 1,\n got -5")

    @report_errors
    def unexpected():
        raise ZeroDivisionError("a bug")

    with pytest.raises(SystemExit) as info:
        anticipated()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{ERROR}trainer.max_steps: expected an integer >= 1, got -5")
    with pytest.raises(ZeroDivisionError):
        unexpected()


# ------------------------------------------------------------------------------------------------------------
# Options checked before any model, data or logger starts (issue 21): one line, in seconds, nothing built.


def _truncated_checkpoint(path: Path) -> Path:
    """A real torch checkpoint (the zip archive Lightning writes) cut in half, as a full disk or an
    interrupted copy leaves it."""
    whole = path.with_name("whole.ckpt")
    torch.save({"state_dict": {"w": torch.arange(4096.0)}, "global_step": 3}, whole)
    assert zipfile.is_zipfile(whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path


def _empty_jsonl(path: Path) -> Path:
    path.write_text("")
    return path


EARLY_ERRORS = {  # id: (script, overrides given tmp_path, what the line must name)
    "n_target_below_base": ("train.py", lambda t: ["experiment=quickstart", "model.layer_selection.n_target=4"],
                            ["model.layer_selection", "n_target=4 < n_source=6"]),
    "missing_data_file": ("train.py", lambda t: ["experiment=quickstart", "data=local",
                                                  f"data.source.files=[{t / 'nope.jsonl'}]"],
                          ["data.source.files", "file not found", "nope.jsonl"]),
    "empty_jsonl": ("train.py", lambda t: ["experiment=quickstart", "data=local",
                                            f"data.source.files=[{_empty_jsonl(t / 'empty.jsonl')}]"],
                    ["empty.jsonl", "holds no documents"]),
    "corrupt_resume_checkpoint": ("train.py", lambda t: ["experiment=quickstart",
                                                          f"ckpt_path={_truncated_checkpoint(t / 'cut.ckpt')}"],
                                  ["ckpt_path", "cut.ckpt", "truncated or corrupt"]),
    "evaluate_corrupt_checkpoint": ("evaluate.py", lambda t: ["model=tiny", "run_tasks=[heldout]", "data=corpus",
                                                              f"checkpoints=[{_truncated_checkpoint(t / 'cut.ckpt')}]"],
                                    ["checkpoints[0]", "cut.ckpt", "truncated or corrupt"]),
    "partitions_layout": ("train.py", lambda t: ["experiment=quickstart", "data.num_workers=3"],
                          ["data.partitions=64", "1 process x 3 dataloader workers = 3 readers", "(1, 2, 4, 8, 16"]),
    "evaluate_n_target_below_base": ("evaluate.py", lambda t: ["model=tiny", "model.layer_selection.n_target=4",
                                                               "run_tasks=[heldout]", "data=corpus"],
                                     ["model.layer_selection", "n_target=4 < n_source=6"]),
}


@pytest.mark.parametrize("case", list(EARLY_ERRORS))
def test_option_error_is_one_line_before_anything_starts(tmp_path, kiwi_cache, case):
    """The whole output is the one error line, within 5 s, with the default W&B logger configured; the run dir
    holds the log and a FAILED file with that line, and nothing a model, the data or a logger would have
    written (layer plan, checkpoints, W&B).

    The 5 s is the process's CPU time (about 1 s: torch is not even imported), so the suite's own load on a
    2-core machine cannot fail it; wall time (5.8 s once under ``-n 2``) gets a loose bound against a hang."""
    script, overrides, needles = EARLY_ERRORS[case]
    cpu_before = _children_cpu_s()
    proc, seconds = _run(script, overrides(tmp_path), kiwi_cache, tmp_path)
    cpu_s = _children_cpu_s() - cpu_before
    line = assert_one_line(proc, *needles)
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr.splitlines() == [line]
    assert cpu_s < 5, f"{cpu_s:.1f} s of CPU"
    assert seconds < 30, f"{seconds:.1f} s wall"
    run_dir = tmp_path / "run"
    assert (run_dir / "FAILED").read_text() == line.removesuffix("  (HYDRA_FULL_ERROR=1 shows the traceback)") + "\n"
    left = sorted(p.name for p in run_dir.iterdir())
    assert not {"checkpoints", "wandb", "csv", "layer_plan.json", "hf_model"} & set(left), left


def test_option_error_full_traceback_on_request(tmp_path, kiwi_cache):
    proc, _ = _run("train.py", ["experiment=quickstart", "model.layer_selection.n_target=4"], kiwi_cache,
                   tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "kiwi.errors.ConfigError: model.layer_selection" in proc.stderr


@pytest.mark.slow
def test_unexpected_exception_marks_the_run_failed(tmp_path, kiwi_cache):
    """A bug (not a KiwiError) keeps its traceback, and the run dir says the run failed and why."""
    proc, _ = _run("train.py", ["experiment=quickstart", "logger=none", "validate_before=false", "export_hf=false",
                                "data.seq_len=128", "data.batch_size=2", "data.val_documents=2",
                                "+callbacks.boom._target_=tests.train.callbacks_for_tests.RaiseAtStep",
                                "+callbacks.boom.step=1"], kiwi_cache, tmp_path, PYTHONPATH=str(ROOT_DIR))
    assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "run" / "FAILED").read_text() == "ZeroDivisionError: a bug at step 1\n"
