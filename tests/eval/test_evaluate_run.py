"""evaluate.py end to end: config composition, model loading, every task, results on disk."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

from .conftest import FIXTURES, compose_eval, make_tiny_qwen2

TASK_FILES = {
    "hellaswag": FIXTURES / "hellaswag.jsonl",
    "arc_challenge": FIXTURES / "arc_challenge.jsonl",
    "openbookqa": FIXTURES / "openbookqa.jsonl",
    "wikitext": FIXTURES / "wikitext.jsonl",
}


def _task_overrides(files=TASK_FILES) -> list[str]:
    return [f"tasks.{name}.data_files={path}" for name, path in files.items()]


@pytest.fixture(scope="module")
def two_hf_models(tmp_path_factory, eval_tokenizer):
    """Two saved HF model directories (different random weights, same tokenizer)."""
    out = tmp_path_factory.mktemp("hf-models")
    dirs = []
    for seed in (0, 1):
        d = out / f"model-seed{seed}"
        make_tiny_qwen2(len(eval_tokenizer), seed=seed).save_pretrained(d)
        eval_tokenizer.save_pretrained(d)
        dirs.append(d)
    return dirs


def test_run_checkpoints_writes_results_tables_chart_and_samples(tmp_path, kiwi_cache, two_hf_models):
    from kiwi.eval.run import run

    a, b = two_hf_models
    cfg = compose_eval([
        "model=tiny", "compare_base=false", "evaluate_model=false", "logger=csv",
        f"checkpoints=[{a},{{name: seed1, path: '{b}'}}]",
        "run_tasks=[hellaswag,arc_challenge,openbookqa,wikitext]", "log_samples=true", "progress=false",
        "max_length=64", *_task_overrides(),
    ], tmp_path / "out")
    results = run(cfg)
    out = tmp_path / "out"
    assert list(results) == ["model-seed0", "seed1"]
    saved = json.loads((out / "results.json").read_text())["results"]
    for model in ("model-seed0", "seed1"):
        for task in ("hellaswag", "arc_challenge", "openbookqa"):
            m = saved[model][task]
            assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["acc_norm"] <= 1.0 and m["n"] == 3
            assert m["ppl_gold"] > 1 and m["ppl_text"] > 1 and m["ppl_gold_mean"] > 1
        assert saved[model]["wikitext"]["word_perplexity"] > saved[model]["wikitext"]["byte_perplexity"] > 1
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["model-seed0", "seed1"]
    assert float(rows[0]["hellaswag/acc_delta"]) == 0.0
    delta = float(rows[1]["wikitext/word_perplexity_delta"])
    assert delta == pytest.approx(saved["seed1"]["wikitext"]["word_perplexity"]
                                  - saved["model-seed0"]["wikitext"]["word_perplexity"])
    md = (out / "results.md").read_text()
    assert "| seed1 |" in md and "hellaswag acc_norm" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    samples = [json.loads(x) for x in (out / "samples" / "seed1__arc_challenge.jsonl").read_text().splitlines()]
    assert [s["gold"] for s in samples] == [1, 2, 0] and len(samples[1]["loglikelihoods"]) == 5
    wiki = [json.loads(x) for x in (out / "samples" / "seed1__wikitext.jsonl").read_text().splitlines()]
    assert wiki[1]["words"] == 23 and wiki[1]["tokens"] > 0
    assert list((out / "csv").rglob("metrics.csv"))  # the CSV logger got the flat metrics


def test_bad_configs_fail_clearly(tmp_path, kiwi_cache, two_hf_models):
    from kiwi.eval.run import run

    base = ["model=tiny", "compare_base=false", "evaluate_model=false", "progress=false", *_task_overrides()]
    cases = [
        (["run_tasks=[]", f"checkpoints=[{two_hf_models[0]}]"], "run_tasks is empty"),
        (["run_tasks=[mmlu]", f"checkpoints=[{two_hf_models[0]}]"], "unknown task 'mmlu'"),
        (["run_tasks=[hellaswag]"], "nothing to evaluate"),
        (["run_tasks=[hellaswag]", f"checkpoints=[{tmp_path}/missing-model]"], "model 'missing-model'"),
        (["run_tasks=[arc_challenge]", f"checkpoints=[{two_hf_models[0]}]",
          f"tasks.arc_challenge.data_files={tmp_path}/none.jsonl"], "task 'arc_challenge': data file"),
        (["run_tasks=[hellaswag]", "strategies=[solr]"],
         r"strategies: model/layer_selection: unknown option 'solr'; available: \[.*'solar'"),
    ]
    for overrides, message in cases:
        cfg = compose_eval(base + overrides, tmp_path / "out")
        with pytest.raises((ValueError, RuntimeError), match=message):
            run(cfg)


@pytest.mark.slow
def test_evaluate_py_base_vs_two_strategies_with_heldout(tmp_path, kiwi_cache):
    """The real entry point on the offline tiny base: base, interleave and solar at step 0, every task."""
    from tests.helpers import SHARED

    files = dict(TASK_FILES)
    bench = SHARED / "data" / "benchmarks"
    if bench.exists():  # the real rows when the development data is present
        files.update({n: bench / f"{n}_{s}_sample.jsonl" for n, s in
                      (("hellaswag", "validation"), ("arc_challenge", "test"), ("openbookqa", "test"))})
    out = tmp_path / "run"
    cmd = [sys.executable, "evaluate.py", "model=tiny", "model.layer_selection=interleave", "strategies=[solar]",
           "data=corpus", "data.val_documents=4", "data.seq_len=256", "data.num_workers=0", "limit=8",
           "max_length=128", "progress=false", f"hydra.run.dir={out}", *_task_overrides(files)]
    env = {**os.environ, "KIWI_CACHE": str(kiwi_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())["results"]
    assert list(saved) == ["base", "interleave@step0", "solar@step0"]
    for model in saved.values():
        assert set(model) == {"hellaswag", "arc_challenge", "openbookqa", "wikitext", "heldout"}
        assert model["hellaswag"]["n"] == 8 if bench.exists() else 3
        assert model["heldout"]["ppl"] > 1 and model["heldout"]["tokens"] > 0
    assert (out / "results.md").exists() and (out / "results.csv").exists() and (out / "results.png").exists()
    assert "solar@step0" in proc.stdout


def test_checkpoint_names_get_the_shortest_distinguishing_path_suffix():
    from kiwi.eval.run import checkpoint_names

    def names(paths, reserved=()):
        return checkpoint_names([(None, p) for p in paths], reserved=reserved)

    assert names(["/x/runA/hf_model", "/x/runB/hf_model", "/x/runB/other"]) == [
        "runA/hf_model", "runB/hf_model", "other"]
    sweep = "/logs/multirun/{}/{}/checkpoints/last.ckpt"
    assert names([sweep.format("day1", 0), sweep.format("day2", 0), sweep.format("day2", 1)]) == [
        "day1/0/last", "day2/0/last", "1/last"]
    assert names(["/a/x/m", "/b/x/m", "/c/y/m"]) == ["a/x/m", "b/x/m", "y/m"]
    assert names(["/r/base"], reserved={"base"}) == ["r/base"]  # never overwrites the base row
    assert checkpoint_names([("m", "/a/x"), (None, "/b/m")]) == ["m", "b/m"]
    assert checkpoint_names([("Qwen base", "Qwen/Qwen2.5-0.5B"), (None, "/runs/r1/hf_model")]) == [
        "Qwen base", "hf_model"]


@pytest.mark.parametrize("entries,message", [
    ([("same", "/a/m1"), ("same", "/b/m2")], "name 'same' is given to both '/b/m2' and checkpoint '/a/m1'"),
    ([("base", "/a/m1")], "name 'base' is given to both '/a/m1' and a step-0 model"),
    ([(None, "/a/m1"), (None, "/a/m1")], "'/a/m1' is listed more than once"),
    ([(None, "/base")], "'/base' would be named like another model"),
])
def test_checkpoint_name_clashes_are_config_errors(entries, message):
    from kiwi.errors import ConfigError
    from kiwi.eval.run import checkpoint_names

    with pytest.raises(ConfigError, match=re.escape(message)):
        checkpoint_names(entries, reserved={"base"})


def test_two_exports_with_the_same_basename_both_get_rows(tmp_path, kiwi_cache, eval_tokenizer):
    """Two runs' exports are both called hf_model: both are evaluated and reported under distinct names,
    in results.json, the tables and the samples; duplicate explicit names fail before any model loads."""
    from kiwi.errors import ConfigError
    from kiwi.eval.run import run

    dirs = []
    for seed, run_dir in enumerate(("runA", "runB")):
        d = tmp_path / run_dir / "hf_model"
        make_tiny_qwen2(len(eval_tokenizer), seed=seed).save_pretrained(d)
        eval_tokenizer.save_pretrained(d)
        dirs.append(d)
    base = ["model=tiny", "compare_base=false", "evaluate_model=false", "run_tasks=[arc_challenge]",
            "log_samples=true", "progress=false", "max_length=64", *_task_overrides()]
    out = tmp_path / "out"
    results = run(compose_eval([*base, f"checkpoints=[{dirs[0]},{dirs[1]}]"], out))
    assert list(results) == ["runA/hf_model", "runB/hf_model"]
    assert results["runA/hf_model"]["arc_challenge"] != results["runB/hf_model"]["arc_challenge"]
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["results"]) == ["runA/hf_model", "runB/hf_model"]
    assert saved["meta"]["models"] == {"runA/hf_model": str(dirs[0]), "runB/hf_model": str(dirs[1])}
    with (out / "results.csv").open() as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["runA/hf_model", "runB/hf_model"]
    md = (out / "results.md").read_text()
    assert "| runA/hf_model |" in md and "| runB/hf_model |" in md
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "runA_hf_model__arc_challenge.jsonl", "runB_hf_model__arc_challenge.jsonl"]

    missing = tmp_path / "never-loaded"
    cfg = compose_eval([*base, f"checkpoints=[{{name: m, path: '{missing}/1'}},{{name: m, path: '{missing}/2'}}]"],
                       tmp_path / "out2")
    with pytest.raises(ConfigError, match="checkpoints: name 'm' is given to both"):
        run(cfg)


def test_two_different_strategies_with_one_name_fail_and_named_ones_get_rows(tmp_path, kiwi_cache):
    from kiwi.errors import ConfigError
    from kiwi.eval.run import model_specs

    base = ["model=tiny", "compare_base=true", "model.layer_selection=solar"]
    same = compose_eval([*base, "strategies=[solar]"], tmp_path)
    assert [s.name for s in model_specs(same, "cpu")] == ["base", "solar@step0"]  # one model, one row
    clash = compose_eval([*base, "strategies=[{strategy: solar, n_target: 8, m: 2}]"], tmp_path)
    with pytest.raises(ConfigError, match="two different models are both named 'solar@step0'"):
        model_specs(clash, "cpu")
    named = compose_eval([*base, "strategies=[{name: solar8, strategy: solar, n_target: 8, m: 2}]"], tmp_path)
    specs = model_specs(named, "cpu")
    assert [s.name for s in specs] == ["base", "solar@step0", "solar8"]
    assert "'n_target': 8" in specs[2].source and "name" not in specs[2].source


def test_step0_strategies_are_composed_by_hydra_sized_like_the_model_and_named_by_their_setting(tmp_path, kiwi_cache):
    """A strategy name is the model/layer_selection option as Hydra composes it, with model.layer_selection's
    size; rows are named by kiwi.cli.setting_name, so identity variants of one strategy get distinct rows."""
    from kiwi.cli import compose_option
    from kiwi.eval.run import model_specs

    strategies = "strategies=[solar, {strategy: solar, n_target: 10, identity_init: true}, llama_pro]"
    cfg = compose_eval(["model=tiny", "compare_base=false", "model.layer_selection.n_target=10", strategies], tmp_path)
    specs = model_specs(cfg, "cpu")
    assert [s.name for s in specs] == ["interleave@step0", "solar@step0", "solar_id@step0", "llama_pro@step0"]
    solar = compose_option("model/layer_selection", "solar", ["model.layer_selection.n_target=10"])
    assert specs[1].source.endswith(str(dict(solar))) and "'n_target': 10" in specs[1].source
    assert "'n_target': 10" in specs[3].source and "'trainable': 'new'" in specs[3].source


def test_eval_never_imports_train():
    """The import graph flows one way: kiwi.eval and the modules it shares with train.py (kiwi.cli,
    kiwi.loggers) import nothing from kiwi.train."""
    import ast

    shared = [ROOT / "kiwi" / "cli.py", ROOT / "kiwi" / "loggers.py"]
    for path in [*sorted((ROOT / "kiwi" / "eval").glob("*.py")), *shared]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n == "kiwi.train" or n.startswith("kiwi.train.")], path


def test_wandb_gets_the_table_and_its_run_is_finished(tmp_path, kiwi_cache, two_hf_models):
    """logger=wandb (offline): the results table and chart reach W&B, and the task wrapper finishes the run."""
    import wandb

    from kiwi.eval.run import run

    cfg = compose_eval(["model=tiny", "compare_base=false", "evaluate_model=false", "logger=wandb",
                        f"checkpoints=[{two_hf_models[0]}]", "run_tasks=[hellaswag]", "progress=false",
                        "max_length=64", *_task_overrides()], tmp_path / "out")
    run(cfg)
    assert wandb.run is None
    (run_dir,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    assert list((run_dir / "files" / "media" / "table" / "eval").glob("results_*.table.json"))
    assert list((run_dir / "files" / "media" / "images" / "eval").glob("chart_*.png"))
