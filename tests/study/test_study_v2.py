"""The v2 study end to end on a tiny real sweep (study_cpu_base, then study_cpu with every lever and both
controls x 2 seeds, through train.py): seed pairing, the FLOPs of each lever, and the gather's report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from hydra.utils import instantiate

from kiwi.study.gather import gather, log_to_wandb
from kiwi.study.jobs import load_jobs
from tests.helpers import compose

pytestmark = pytest.mark.slow


def _by(sweep):
    return {(j.variant, j.seed): j for j in load_jobs(sweep)[0]}


def _first_batches(job_dir, base_dir, n: int = 3) -> list[torch.Tensor]:
    """The training batches this job saw first, rebuilt from its own overrides."""
    from transformers import AutoTokenizer

    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    cfg = compose("train", overrides)
    dm = instantiate(cfg.data, tokenizer=AutoTokenizer.from_pretrained(base_dir))
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return [next(it)["input_ids"] for _ in range(n)]


def test_same_seed_same_data_order_for_controls_and_variants(v2_sweep, v2_base_dir):
    jobs = _by(v2_sweep)
    a = _first_batches(jobs[("control_tokens", 1)].path, v2_base_dir)
    b = _first_batches(jobs[("interleave_id_2phase", 1)].path, v2_base_dir)
    c = _first_batches(jobs[("control_tokens", 2)].path, v2_base_dir)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # paired: the same batches
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))  # another seed, another order


def test_flops_of_each_lever_and_of_the_controls(v2_sweep, v2_base_dir):
    from transformers import AutoConfig

    from kiwi.train.budget import forward_flops, training_flops

    jobs = _by(v2_sweep)
    base = AutoConfig.from_pretrained(v2_base_dir)
    for seed in (1, 2):
        plain = jobs[("interleave_id", seed)]
        assert plain.teacher_flops == 0
        for lever in ("interleave_id_2phase", "interleave_id_lrcopy", "interleave_id_norewarm"):
            # these change which weights move and how fast, not the work: same tokens, same FLOPs
            assert jobs[(lever, seed)].tokens == plain.tokens == 512
            assert jobs[(lever, seed)].train_flops == plain.train_flops
        # distillation: the base's forward on every token is counted, and (flops_matched) it trains on fewer
        # tokens so that the total is the plain variant's, to within one step of tokens
        distill = jobs[("interleave_id_distill", seed)]
        assert distill.teacher_flops > 0
        assert distill.teacher_flops == pytest.approx(forward_flops(base, distill.tokens, 64))
        assert distill.tokens <= plain.tokens  # fewer tokens, rounded up to whole steps
        step_flops = plain.train_flops / plain.steps
        assert abs(distill.train_flops - plain.train_flops) <= step_flops
        assert distill.train_flops - distill.teacher_flops == pytest.approx(
            plain.train_flops * distill.tokens / plain.tokens)
        # both levers at once: the copied-layer lr costs nothing, so it is the distillation run's work
        both = jobs[("interleave_id_lrcopy_distill", seed)]
        assert (both.tokens, both.train_flops, both.teacher_flops) == (
            distill.tokens, distill.train_flops, distill.teacher_flops)
        # grown in two steps: 3 layers for the first half of the steps, 4 after
        grow = jobs[("interleave_id_grow2", seed)]
        three = AutoConfig.from_pretrained(v2_base_dir, num_hidden_layers=3)
        four = AutoConfig.from_pretrained(v2_base_dir, num_hidden_layers=4)
        half = grow.tokens // 2
        assert grow.train_flops == pytest.approx(training_flops(three, half, 64) + training_flops(four, half, 64))
        assert grow.train_flops < plain.train_flops and grow.tokens == plain.tokens
        ctrl_t, ctrl_f = jobs[("control_tokens", seed)], jobs[("control_flops", seed)]
        assert ctrl_t.tokens == 512 and ctrl_t.train_flops < plain.train_flops
        assert ctrl_f.train_flops >= plain.train_flops > ctrl_f.train_flops * ctrl_t.tokens / ctrl_f.tokens


@pytest.mark.parametrize("variant", ["interleave_id_lrcopy", "interleave_id_lrcopy_distill"])
def test_copied_lr_reaches_the_optimizer(v2_sweep, variant):
    job = _by(v2_sweep)[(variant, 1)]
    state = torch.load(job.path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    lrs = sorted({g["initial_lr"] for g in state["optimizer_states"][0]["param_groups"]})
    assert lrs == [pytest.approx(job.lr * 0.1), pytest.approx(job.lr)]


def test_gather_two_seeds_report(v2_sweep, tmp_path):
    g = gather([v2_sweep], tmp_path / "study")
    assert not g.incomplete and len(g.jobs) == 18
    (regime,) = g.bases
    assert regime == "0.05 tokens/param"
    base = g.bases[regime]
    assert base.report is not None and base.tokens_per_param == pytest.approx(base.tokens / base.n_params)
    assert base.tokens_per_param >= 0.05 and base.last_doubling is not None
    rows = {r["variant"]: r for r in g.summary}
    assert set(rows) == {"control_tokens", "control_flops", "interleave_id", "interleave_id_2phase",
                         "interleave_id_lrcopy", "interleave_id_distill", "interleave_id_grow2",
                         "interleave_id_norewarm", "interleave_id_lrcopy_distill"}
    jobs = _by(v2_sweep)
    for variant, row in rows.items():
        assert row["seeds"] == 2
        if variant.startswith("control"):
            continue
        diffs = [100 * (jobs[(variant, s)].ppl_end / jobs[("control_tokens", s)].ppl_end - 1) for s in (1, 2)]
        assert row["vs_tokens_mean"] == pytest.approx(sum(diffs) / 2)
        half = 12.706 * abs(diffs[0] - diffs[1]) / 2 ** 0.5 / 2 ** 0.5  # t_{0.975,1} sd / sqrt(2)
        assert row["vs_tokens_high"] - row["vs_tokens_low"] == pytest.approx(2 * half)
    md = g.files["markdown"].read_text()
    assert "tokens/parameter" in md and "last doubling" in md and "Established (95% interval" in md
    assert "all start at the base" in md and "NOT all" not in md
    assert g.files["plot"].stat().st_size > 10_000
    assert g.files["base_curves"].read_text().count("\n") == 1 + len(base.curve)
    assert json.loads(base.report.read_text())["val_curve"]
    log_to_wandb(g, mode="offline")
    assert list((tmp_path / "study" / "wandb").glob("offline-run-*"))


def test_a_distillation_run_resumes_from_its_checkpoint(v2_sweep, kiwi_cache, tmp_path):
    """Lightning loads checkpoints with weights_only: the distill hyper-parameters must be plain data."""
    from .conftest import train

    job = _by(v2_sweep)[("interleave_id_distill", 1)]
    overrides = yaml.safe_load((job.path / ".hydra" / "overrides.yaml").read_text())
    state = torch.load(job.path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["distill"] == {"alpha": 0.5, "temperature": 1.0, "flops_matched": True}
    proc = train([*overrides, f"ckpt_path={job.path / 'checkpoints' / 'last.ckpt'}",
                  f"hydra.run.dir={tmp_path / 'resumed'}"], kiwi_cache)
    assert "held-out perplexity" in proc.stdout
