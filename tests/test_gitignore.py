"""Every folder the README tells a user to write into (runs, exports, W&B) is git-ignored, so that a
quickstart or an export leaves ``git status`` clean."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIRS = ["logs", "out", "outputs", "wandb"]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("folder", OUTPUT_DIRS)
def test_output_folder_is_git_ignored(folder):
    probe = f"{folder}/hf_dir/model.safetensors"
    result = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT)
    assert result.returncode == 0, f"{probe} is not git-ignored"
