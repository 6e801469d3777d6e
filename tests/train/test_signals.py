"""A real SIGTERM/SIGINT stops a real `train.py` in every state, exits non-zero with a one-line reason and
keeps the last completed step (issue 14); a kill -9 during a save leaves the previous checkpoint usable
(issue 10). Epochs without data are an error, not an endless loop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, kill_group

CB = "tests.train.callbacks_for_tests"
QUICK = ["experiment=quickstart", "logger=none", "data.seq_len=128", "data.batch_size=2", "data.val_documents=2",
         "export_hf=false"]


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_started():
    """Every train.py a test starts leads its own process group, killed (with its workers) at teardown."""
    yield
    while _STARTED:
        kill_group(_STARTED.pop())


def _start(tmp_path: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "KIWI_CACHE": os.environ["KIWI_CACHE"]}
    args = [sys.executable, str(ROOT / "train.py"), *QUICK, f"paths.output_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}", *overrides]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _STARTED.append(proc)
    return proc


def _wait_for(proc: subprocess.Popen, marker: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"train.py ended (rc {proc.returncode}) before reaching the state:\n{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("train.py did not reach the state in time")
        time.sleep(0.1)


def _signal_and_finish(proc: subprocess.Popen, signum: int, timeout: float = 60.0) -> tuple[int, str]:
    rc, _, err = _signal_and_read(proc, signum, timeout)
    return rc, err


def _signal_and_read(proc: subprocess.Popen, signum: int, timeout: float = 60.0) -> tuple[int, str, str]:
    """Send ``signum`` (to train.py alone, as a scheduler or kill does) and wait: (exit code, stdout, stderr)."""
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"train.py ignored signal {signum} for {timeout} s")
    return proc.returncode, out, err


def _reason(err: str) -> str:
    """The one error line the entry point prints (``kiwi: error: ...``); exactly one is expected."""
    lines = [ln for ln in err.splitlines() if ln.startswith("kiwi: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
def test_sigterm_during_validate_before_stops_before_the_first_step(tmp_path, kiwi_cache):
    marker = tmp_path / "in_state"
    proc = _start(tmp_path, ["validate_before=true", f"+callbacks.wait._target_={CB}.MarkAndWait",
                             "+callbacks.wait.hook=validation", f"+callbacks.wait.marker={marker}"])
    _wait_for(proc, marker)
    rc, err = _signal_and_finish(proc, signal.SIGTERM)
    assert rc != 0
    assert "interrupted by SIGTERM at step 0" in _reason(err)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # nothing trained, nothing worth saving


@pytest.mark.slow
def test_sigint_during_validation_saves_the_last_step(tmp_path, kiwi_cache):
    """Validation at step 3 (no periodic checkpoint due): SIGINT there writes last.ckpt at step 3."""
    marker = tmp_path / "in_state"
    proc = _start(tmp_path, ["validate_before=false", "trainer.val_check_interval=3", "trainer.max_steps=50",
                             f"+callbacks.wait._target_={CB}.MarkAndWait", "+callbacks.wait.hook=validation",
                             "+callbacks.wait.step=3", f"+callbacks.wait.marker={marker}"])
    _wait_for(proc, marker)
    rc, err = _signal_and_finish(proc, signal.SIGINT)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert rc == 130  # 128 + SIGINT, as a shell reports a child stopped by it
    assert f"interrupted by SIGINT at step 3; last checkpoint {last}" in _reason(err)
    assert _step(last) == 3


@pytest.mark.slow
def test_sigterm_while_data_loading_stalls(tmp_path, kiwi_cache):
    """The training stream stalls after 6 rows (3 batches of 2; Lightning fetches one batch ahead, so the
    stall comes after step 2): SIGTERM stops the run and keeps step 2 with its data position."""
    marker = tmp_path / "in_state"
    proc = _start(tmp_path, ["validate_before=false", "trainer.max_steps=50",
                             f"data._target_={CB}.slow_data_module", "+data.slow_after_rows=6",
                             f"+data.marker={marker}"])
    _wait_for(proc, marker)
    rc, err = _signal_and_finish(proc, signal.SIGTERM)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert rc == 143  # 128 + SIGTERM
    assert "interrupted by SIGTERM at step 2" in _reason(err)
    assert _step(last) == 2


@pytest.mark.slow
def test_second_signal_stops_immediately(tmp_path, kiwi_cache):
    """A first SIGTERM inside a step waits for the step; a second one does not wait."""
    marker = tmp_path / "in_state"
    proc = _start(tmp_path, ["validate_before=false", "trainer.max_steps=50",
                             f"+callbacks.wait._target_={CB}.MarkAndWait", "+callbacks.wait.hook=after_step",
                             "+callbacks.wait.step=2", "+callbacks.wait.seconds=600",
                             f"+callbacks.wait.marker={marker}"])
    _wait_for(proc, marker)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None, "the first signal waits for the step in flight"
    rc, err = _signal_and_finish(proc, signal.SIGTERM)
    assert rc != 0
    assert "interrupted by SIGTERM" in _reason(err)


_BAR = re.compile(r"\d+(?:/\d+|/\?) \[")  # a tqdm progress line: "24/40 [00:46<..." or "24/? [..."


@pytest.mark.slow
def test_sigint_in_a_step_exits_130_with_no_bar_after_its_message_and_the_resumed_bar_continues_the_epoch(
        tmp_path, kiwi_cache):
    """SIGINT while step 2 runs: the step finishes, last.ckpt holds it, the process exits 130, no progress
    line follows the "received SIGINT" message, and the run dir says INTERRUPTED with the reason. Resumed,
    the bar reads ``Epoch 0: 3/6`` (the epoch and its total), not ``Training: 3/?``."""
    marker = tmp_path / "in_state"
    proc = _start(tmp_path / "a", ["validate_before=false", "trainer.max_steps=6",
                                   f"+callbacks.wait._target_={CB}.MarkAndWait", "+callbacks.wait.hook=after_step",
                                   "+callbacks.wait.step=2", "+callbacks.wait.seconds=3",
                                   f"+callbacks.wait.marker={marker}", "callbacks.progress_bar.plain=false"])
    _wait_for(proc, marker)
    rc, out, err = _signal_and_read(proc, signal.SIGINT)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert rc == 130, err[-3000:]
    reason = _reason(err)
    assert f"interrupted by SIGINT at step 2; last checkpoint {last}" in reason
    assert _step(last) == 2
    after = out.split("received SIGINT", 1)[1]  # the log and the bars share stdout
    assert not _BAR.search(after.replace("\r", "\n")), after[-3000:]
    assert (tmp_path / "a" / "INTERRUPTED").read_text() == reason.split("  (HYDRA_FULL_ERROR")[0] + "\n"
    assert not (tmp_path / "a" / "FAILED").exists()

    proc = _start(tmp_path / "b", ["validate_before=false", "trainer.max_steps=6", f"ckpt_path={last}",
                                   "callbacks.progress_bar.plain=false"])  # the terminal bar, though piped
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = (out + err).replace("\r", "\n").splitlines()
    resumed = [ln for ln in lines if _BAR.search(ln) and ("Epoch" in ln or "Training" in ln)]
    assert any(ln.startswith("Epoch 0:") and " 3/6 [" in ln for ln in resumed), resumed
    assert not [ln for ln in resumed if re.search(r"\b[1-9]\d*/\? \[", ln)], resumed
    assert not (tmp_path / "b" / "INTERRUPTED").exists() and not (tmp_path / "b" / "FAILED").exists()


@pytest.mark.slow
def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path, kiwi_cache):
    """A save that hangs half-way at step 4 is killed with SIGKILL: last.ckpt is still step 2, loads, and a
    run resumes from it to the end."""
    marker = tmp_path / "in_save"
    proc = _start(tmp_path / "a", ["validate_before=false", "trainer.max_steps=6",
                                   "callbacks.model_checkpoint.every_n_train_steps=2",
                                   f"+callbacks.block._target_={CB}.BlockInSave", "+callbacks.block.step=4",
                                   f"+callbacks.block.marker={marker}"])
    _wait_for(proc, marker)
    proc.kill()
    proc.wait(timeout=30)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert _step(last) == 2
    proc = _start(tmp_path / "b", ["validate_before=false", "trainer.max_steps=4", f"ckpt_path={last}"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert _step(tmp_path / "b" / "checkpoints" / "last.ckpt") == 4


def test_epochs_without_a_batch_are_an_error(tmp_path):
    """A real Trainer over a stream that yields nothing stops at the second empty epoch with a DataError
    naming the source, instead of looping through empty epochs."""
    import lightning as L
    from torch.utils.data import DataLoader, IterableDataset

    from kiwi.errors import DataError
    from kiwi.train.callbacks import EmptyEpochGuard

    class Empty(IterableDataset):
        def __iter__(self):
            return iter(())

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(accelerator="cpu", max_steps=10, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[EmptyEpochGuard("data source files=['empty.jsonl']")], default_root_dir=tmp_path)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"files=\['empty.jsonl'\]: training epochs 0 and 1 yielded no batch"):
        trainer.fit(Model(), train_dataloaders=DataLoader(Empty(), batch_size=1))
    assert time.monotonic() - start < 10
