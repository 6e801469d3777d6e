"""Every PNG kiwi writes keeps every data point visible: each writer's Figure, built from the writer's real
input (a real evaluate run on the tiny model, real layer plans, a sweep dir in the callback's format), passes
tests/figcheck.figure_problems, and the PNG it saves opens and is not blank."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from omegaconf import OmegaConf

from kiwi.eval.long_ppl import bucket_keys, long_ppl_figure
from kiwi.eval.passkey import passkey_figure
from kiwi.eval.report import results_figure
from kiwi.plotting import pyplot, save_figure
from kiwi.train.sweep_summary import summary_figure, sweep_rows
from kiwi.upscale import duplicated_sources, make_plan
from kiwi.upscale.plots import importance_figure, plan_figure
from tests.eval.conftest import _TRAIN_TEXT, FIXTURES, compose_eval
from tests.figcheck import figure_problems


def check_and_save(fig, path):
    """figure_problems of ``fig``, after saving it and reopening the PNG (non-empty, not one flat colour)."""
    problems = figure_problems(fig)
    save_figure(fig, path)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 50 and image.shape[1] > 50, path
    assert np.ptp(image[..., :3]) > 0.1, f"{path} is blank"
    return problems


@pytest.fixture(scope="module")
def eval_results(tmp_path_factory, kiwi_cache):
    """results.json of a real evaluate run: the tiny base and its step-0 up-scale on two choice tasks,
    wikitext, long_ppl and passkey."""
    from kiwi.eval.run import run

    out = tmp_path_factory.mktemp("eval-plots")
    words = " ".join(_TRAIN_TEXT).split() * 10
    docs = out / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": " ".join(words[i:i + 400])}) + "\n" for i in (0, 200)))
    run(compose_eval([
        "model=tiny", "compare_base=true", "logger=none", "progress=false", "limit=4", "max_length=64",
        "run_tasks=[hellaswag,arc_challenge,wikitext,long_ppl,passkey]",
        *(f"tasks.{t}.data_files={FIXTURES / (t + '.jsonl')}" for t in ("hellaswag", "arc_challenge", "wikitext")),
        "tasks.long_ppl.max_length=128", "tasks.long_ppl.documents=2", "tasks.long_ppl.buckets=[32,64]",
        f"tasks.long_ppl.data_files=[{docs}]", "tasks.passkey.lengths=[128,256]", "tasks.passkey.depths=[0,50,100]",
    ], out / "run"))
    return json.loads((out / "run" / "results.json").read_text())["results"]


def test_results_png(eval_results, tmp_path):
    """Also: every bar carries its value (a panel of zeros reads "0") and accuracies their stderr bars."""
    assert len(eval_results) == 2
    assert eval_results["base"]["arc_challenge"]["acc_norm"] == 0.0  # the all-zero panel this run gives
    fig = results_figure(eval_results)
    for ax in fig.axes:
        if ax.patches:
            assert len(ax.texts) == len(ax.patches), ax.get_title()
            if ax.get_title().startswith("hellaswag\nacc"):  # stderr > 0 there; arc_challenge: all 0, stderr 0
                assert [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"], ax.get_title()
    assert check_and_save(fig, tmp_path / "results.png") == []


def test_long_ppl_png(eval_results, tmp_path):
    fig = long_ppl_figure(eval_results, list(eval_results), bucket_keys(eval_results, "long_ppl"))
    assert check_and_save(fig, tmp_path / "long_ppl.png") == []


def test_passkey_png(eval_results, tmp_path):
    assert check_and_save(passkey_figure(eval_results, list(eval_results)), tmp_path / "passkey.png") == []


@pytest.mark.parametrize("strategy,identity", [("interleave", False), ("solar", True), ("llama_pro", True)])
def test_layer_plan_png(tmp_path, strategy, identity):
    plan = make_plan(strategy, 24, 38, identity_init=identity)
    assert check_and_save(plan_figure(plan), tmp_path / "layer_plan.png") == []


def test_layer_importance_png(tmp_path):
    scores = [0.3, 0.05, 0.12, 0.2, 0.08, 0.15, 0.02, 0.4]
    sim = [[1.0 - abs(i - j) / 8 for j in range(8)] for i in range(8)]
    chosen = duplicated_sources(make_plan("importance", 8, 10, scores=scores))
    fig = importance_figure(scores, similarity=sim, chosen=chosen, metric="angular distance")
    assert check_and_save(fig, tmp_path / "layer_importance.png") == []


def test_sweep_summary_png(tmp_path):
    """A sweep dir as the Hydra callback reads it: two finished jobs and a failed one."""
    for job, lr, ppl in (("0", "1e-3", 41.7), ("1", "3e-3", 39.2), ("2", "1e-2", None)):
        d = tmp_path / "sweep" / job
        (d / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"optim.lr={lr}", "trainer.max_steps=40"]), d / ".hydra" / "overrides.yaml")
        if ppl is None:
            (d / "FAILED").write_text("kiwi: error: loss is NaN at step 12\n")
        else:
            (d / "perplexity_report.json").write_text(json.dumps(
                {"val_ppl_after": ppl, "tokens": 40960, "train_flops": 1.2e12, "fit_wall_s": 31.0}))
    differing, rows = sweep_rows(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    assert check_and_save(summary_figure(rows, differing), tmp_path / "summary.png") == []


def test_the_checker_catches_a_clipped_point_a_covered_point_and_overlapping_ticks():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2, 3], [0, 1, 2, 3], marker="o", label="four points")
    ax.set_ylim(-0.5, 3.5)
    ax.legend(loc="upper left")
    assert figure_problems(fig) == [], "nothing is wrong yet"
    ax.plot([3], [10], "o", label="above the limits")
    ax.plot([1.5], [1.5], "s", label="under the legend")
    ax.set_ylim(-0.5, 3.5)
    ax.legend(loc="center")
    ax.set_xticks([0, 0.02], ["a very long tick label", "another long one"])
    problems = figure_problems(fig)
    plt.close(fig)
    assert any("outside the view limits" in p and "above the limits" in p for p in problems), problems
    assert any("legend covers" in p and "under the legend" in p for p in problems), problems
    assert any("tick labels" in p and "overlap" in p for p in problems), problems
    assert not any("outside the figure" in p for p in problems), problems


def test_study_curves_and_differences_png(tmp_path):
    """A study sweep in the driver's job format (two seeds of two strategies and both controls), gathered by
    kiwi.study.gather as the driver does; both of its figures are checked."""
    from kiwi.study.gather import gather
    from kiwi.study.plot import curves_figure, differences_figure
    from tests.study.test_gather_tables import _job

    root = tmp_path / "sweep"
    settings = [("interleave", True, {}, (90.0, 91.5)), ("solar", False, {}, (99.0, 97.0)),
                ("none", False, {}, (92.0, 92.8)),
                ("none", False, dict(tokens=6144, match_flops=8, budget_tokens=4096), (88.0, 89.1))]
    num = 0
    for strategy, identity, extra, ends in settings:
        for seed, after in zip((1, 2), ends, strict=True):
            _job(root, num, strategy, identity, 1e-3, 100.0, after, seed=seed, **extra)
            num += 1
    g = gather(root, tmp_path / "study")
    assert any(r["diffs"] for r in g.summary)
    for name, fig in (("curves.png", curves_figure(g.jobs)), ("differences.png", differences_figure(g.summary))):
        assert check_and_save(fig, tmp_path / name) == [], name


def test_bench_throughput_png(tmp_path):
    """bench/plot_throughput.py on the committed H100 tables (its docstring's command), figure and PNG."""
    import importlib.util

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("plot_throughput", ROOT / "bench" / "plot_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.read_rows(sorted((ROOT / "bench/results/h100-2026-11-27").glob("train_throughput*.md")))
    assert check_and_save(bench.throughput_figure(rows, 60_000), tmp_path / "train_throughput.png") == []


def test_long_ppl_png_keeps_close_buckets_apart(tmp_path):
    """Buckets of very different widths (bench/long_context_demo.py's 0-64 ... 256-320, 320-384): on a
    position axis the last two labels overlapped (seen in its PNG); buckets are evenly spaced categories."""
    keys = ["ppl@0-64", "ppl@64-128", "ppl@128-256", "ppl@256-320", "ppl@320-384"]
    results = {"seq512": {"long_ppl": dict(zip(keys, [6.3, 5.45, 5.57, 5.57, 5.4], strict=True))},
               "seq64": {"long_ppl": dict(zip(keys, [5.8, 7.79, 14.88, 14.66, 19.6], strict=True))}}
    assert check_and_save(long_ppl_figure(results, list(results), keys), tmp_path / "long_ppl.png") == []
