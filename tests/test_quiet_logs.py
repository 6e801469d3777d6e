"""The quickstart, run as the README says, prints each log line once and no warning that asks for no action."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from kiwi.cli import ROOT_DIR

HYDRA_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\]\[[\w.]+\]\[[A-Z]+\] - (.*)")  # Hydra's job_logging format
LIBRARY_LINE = re.compile(r"^(?:INFO|WARNING|ERROR): (.*)")                     # lightning's own handler format
ACTIONLESS = ("module(s) in eval mode", "litlogger", "anonymous setting", "LeafSpec")


def log_messages(output: str) -> list[str]:
    """The message of every log line, whichever handler printed it (progress bars share lines via \\r)."""
    messages = []
    for line in re.split(r"[\r\n]", output):
        match = HYDRA_LINE.search(line) or LIBRARY_LINE.match(line)
        if match:
            messages.append(match.group(1).strip())
    return messages


@pytest.mark.slow
def test_quickstart_prints_each_line_once_and_no_actionless_warning(tmp_path, kiwi_cache):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT")}
    env.update(KIWI_CACHE=str(kiwi_cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "train.py", "experiment=quickstart", "trainer.max_steps=2",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT_DIR, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    messages = log_messages(out)
    assert any("Seed set to 1234" in m for m in messages) and any("GPU available" in m for m in messages)
    repeated = {m: n for m, n in Counter(messages).items() if n > 1}
    assert not repeated, repeated
    for text in ACTIONLESS:
        assert text not in out, text
    python_warnings = re.findall(r"^.*\b\w*Warning: .*$", out, flags=re.M)  # warnings.warn's format
    assert not python_warnings, python_warnings


@pytest.mark.slow
def test_a_piped_run_prints_plain_bounded_lines_without_bars_or_wandb_summary(tmp_path, kiwi_cache):
    """stdout a pipe (a log file, SLURM): no \\r redraws, no line over 300 characters, plain progress lines,
    no W&B run summary, no transformers "Loading weights" / "Writing model shards" bars."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT")}
    env.update(KIWI_CACHE=str(kiwi_cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "train.py", "experiment=quickstart", "trainer.max_steps=4",
                           "data.seq_len=128", "data.val_tokens=1024", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT_DIR, env=env, capture_output=True, timeout=600)
    stdout = proc.stdout.decode()  # bytes: text=True would turn each \r into a newline
    out = stdout + proc.stderr.decode()
    assert proc.returncode == 0, out[-3000:]
    assert "\r" not in out
    assert max(map(len, out.split("\n"))) <= 300, max(out.split("\n"), key=len)[:500]
    plain = [line for line in stdout.split("\n") if line.startswith("Epoch 0: step ")]
    assert [line.split(",")[0] for line in plain] == [f"Epoch 0: step {s}/4 ({25 * s}%)" for s in (1, 2, 3, 4)]
    assert "train/loss=" in plain[-1]
    for noise in ("Run summary", "Run history", "Loading weights", "Writing model shards"):
        assert noise not in out, noise
    assert (tmp_path / "run" / "hf_model" / "model.safetensors").exists()
