"""bench/long_context_demo.py end to end at its own sizes (at 40 steps neither model has learned the word
distribution yet, so nothing separates; measured): ``long_ppl`` separates a model trained on rows
shorter than the document from one trained on whole documents (the short one's ppl rises past its training
length; the long one's stays flat). Fails if that effect disappears."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.helpers import ROOT, run_in_group


@pytest.mark.slow
def test_long_ppl_separates_a_short_context_model_from_a_long_one(tmp_path, kiwi_cache):
    env = {**os.environ, "KIWI_CACHE": str(kiwi_cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = run_in_group([sys.executable, "bench/long_context_demo.py", "--out", str(tmp_path), "--trials", "2"],
                        1800, cwd=ROOT, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    short, long = results["seq64"]["long_ppl"], results["seq512"]["long_ppl"]
    assert short["documents"] == long["documents"] == 32 and short["concatenated"] == 0
    assert short["ppl@320-384"] > 1.5 * short["ppl@0-64"], short  # past its 64-token rows: worse and worse
    assert long["ppl@320-384"] < 1.15 * long["ppl@0-64"], long  # trained on whole documents: flat
    assert short["ppl@320-384"] > 1.5 * long["ppl@320-384"]
    assert (tmp_path / "eval" / "long_ppl.png").stat().st_size and (tmp_path / "eval" / "passkey.png").stat().st_size
