"""The gatherer's tables on hand-written job directories (the files train.py writes per job), with
numbers chosen so every delta and every paired interval can be checked by hand; plus the held-out restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from kiwi.study.gather import gather
from kiwi.study.jobs import load_jobs, variant_label
from kiwi.study.table import summary_rows


def _job(root: Path, num: int, strategy: str, identity: bool, lr: float, before: float, after: float,
         tokens: int = 4096, trainable: str = "all", match_flops: int | None = None, seed: int = 1,
         norewarm: bool = False, budget_tokens: int | None = None, extra: dict | None = None) -> None:
    """One finished job; ``budget_tokens`` is its config's budget.total_tokens when it trains on other
    ``tokens`` (the equal-FLOPs control trains on more tokens than the budget it matches); ``extra`` is
    merged into its config (e.g. the regime: study.base_tokens_per_param and model.base)."""
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "optimizer": {"lr": lr},
           "model": {"layer_selection": {"strategy": strategy, "identity_init": identity, "trainable": trainable}},
           "budget": {"total_tokens": budget_tokens or tokens, "match_flops_layers": match_flops},
           "logger": {"wandb": {"group": "g", "project": "p"}}}
    if norewarm:  # the no-re-warming lever: a constant lr without warmup
        cfg["scheduler"], cfg["budget"]["warmup_fraction"] = {"_target_": "kiwi.train.schedule.warmup_constant"}, 0.0
    if extra:
        cfg = OmegaConf.to_container(OmegaConf.merge(cfg, extra))
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    curve = [{"step": 0, "tokens": 0, "ppl": before}, {"step": tokens // 1024, "tokens": tokens, "ppl": after}]
    (d / "perplexity_report.json").write_text(json.dumps({
        "val_ppl_before": before, "val_ppl_after": after, "steps": tokens // 1024, "tokens": tokens,
        "tokens_per_step": 1024, "train_flops": 1e9 * tokens, "fit_wall_s": 3.0, "val_curve": curve}))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    _job(root, 0, "interleave", True, 1e-3, 100.0, 90.0)
    _job(root, 1, "interleave", True, 3e-3, 100.0, 95.0)
    _job(root, 2, "solar", False, 1e-3, 400.0, 99.0)
    _job(root, 3, "none", False, 1e-3, 100.0, 92.0)
    _job(root, 4, "none", False, 3e-3, 100.0, 91.0)
    _job(root, 5, "none", False, 1e-3, 100.0, 88.0, tokens=6144, match_flops=8, budget_tokens=4096)
    (root / "6" / ".hydra").mkdir(parents=True)  # a job that never finished
    return root


def _label(strategy: str, identity: bool, trainable: str, match_flops: bool, **extra) -> str:
    cfg = {"model": {"layer_selection": {"strategy": strategy, "identity_init": identity, "trainable": trainable}},
           "budget": {"match_flops_layers": 8 if match_flops else None}, **extra}
    return variant_label(OmegaConf.create(cfg))


def test_variant_labels_come_from_the_resolved_settings():
    assert _label("solar", True, "all", False) == "solar_id"
    assert _label("llama_pro", True, "new", False) == "llama_pro"
    assert _label("llama_pro", True, "all", False) == "llama_pro_all"
    assert _label("llama_pro", False, "all", False) == "llama_pro_noid"
    assert _label("solar", True, "new", False) == "solar_id_new"
    assert _label("none", False, "all", False) == "control_tokens"
    assert _label("none", False, "all", True) == "control_flops"
    assert _label("interleave", True, "all", False, module={"distill": {"alpha": 0.5}}) == "interleave_id_distill"
    assert _label("none", False, "all", False, module={"distill": {"alpha": 0.5}}) == "control_tokens"


def test_rows_deltas_and_files(sweep, tmp_path):
    g = gather(sweep, tmp_path / "out")
    assert [p.name for p in g.incomplete] == ["6"]
    by = {(r["variant"], r["lr"]): r for r in g.rows}
    assert list(by)[:3] == [("control_tokens", 1e-3), ("control_tokens", 3e-3), ("control_flops", 1e-3)]
    r = by[("interleave_id", 1e-3)]
    assert r["delta_vs_tokens_ctrl_pct"] == pytest.approx(100 * (90 / 92 - 1))
    assert r["delta_vs_flops_ctrl_pct"] == pytest.approx(100 * (90 / 88 - 1))
    assert r["step0_vs_base"] == 0 and r["regime"] == "base"
    assert by[("interleave_id", 3e-3)]["delta_vs_tokens_ctrl_pct"] == pytest.approx(100 * (95 / 91 - 1))
    assert by[("interleave_id", 3e-3)]["delta_vs_flops_ctrl_pct"] is None  # no flops control at 3e-3
    assert by[("solar", 1e-3)]["step0_vs_base"] == pytest.approx(3.0)
    md = g.files["markdown"].read_text()
    assert "| base | interleave_id | 1 | 0.001 | 100.000 | 0 | 90.000 | -2.17% | +2.27% |" in md
    assert "NOT all start" not in md and "Unfinished jobs" in md and "curves.png" in md
    assert g.files["csv"].read_text().count("\n") == 1 + 6
    assert g.files["plot"].exists() and g.files["summary_csv"].exists()


def test_summary_pairs_seeds_and_marks_intervals(sweep, tmp_path):
    # two more seeds of interleave_id and the equal-token control at lr 1e-3: diffs -2.17%, -1%, -3%
    _job(sweep, 7, "interleave", True, 1e-3, 100.0, 99.0, seed=2)
    _job(sweep, 8, "none", False, 1e-3, 100.0, 100.0, seed=2)
    _job(sweep, 9, "interleave", True, 1e-3, 100.0, 97.0, seed=3)
    _job(sweep, 10, "none", False, 1e-3, 100.0, 100.0, seed=3)
    g = gather(sweep, tmp_path / "out")
    row = next(r for r in g.summary if (r["variant"], r["lr"]) == ("interleave_id", 1e-3))
    diffs = [100 * (90 / 92 - 1), -1.0, -3.0]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    half = 4.303 * sd / 3 ** 0.5
    assert row["seeds"] == 3 and row["ppl_end_mean"] == pytest.approx((90 + 99 + 97) / 3)
    assert (row["vs_tokens_mean"], row["vs_tokens_low"], row["vs_tokens_high"]) == (
        pytest.approx(mean), pytest.approx(mean - half), pytest.approx(mean + half))
    assert row["vs_tokens_excludes_zero"] is (mean + half < 0)
    assert row["vs_flops_mean"] == pytest.approx(100 * (90 / 88 - 1))  # one seed has a flops control
    assert row["vs_flops_low"] is None and "(1 seed)" in row["vs_flops_ctrl"]
    md = g.files["markdown"].read_text()
    assert f"{mean:+.2f}% [{mean - half:+.2f}, {mean + half:+.2f}]" in md
    assert "Not established (interval includes zero): " in md


def test_identity_variant_off_the_base_is_flagged(sweep, tmp_path):
    _job(sweep, 7, "stack", True, 1e-3, 100.5, 93.0)
    md = gather(sweep, tmp_path / "out").files["markdown"].read_text()
    assert "NOT all start at the base" in md


def test_a_diverged_run_keeps_its_row_without_a_mean(sweep):
    _job(sweep, 7, "stack", False, 1e-3, 300.0, float("inf"))
    jobs, _ = load_jobs(sweep)
    row = next(r for r in summary_rows(jobs) if r["variant"] == "stack")
    assert row["seeds"] == "1 (1 diverged)" and row["ppl_end_mean"] is None and row["vs_tokens_mean"] is None


def _seeds(root: Path, start: int, strategy: str, identity: bool, ends: list[float]) -> None:
    """One job per seed (1, 2, ...) of a setting at lr 1e-3, ending at ``ends``."""
    for seed, end in enumerate(ends, start=1):
        _job(root, start + seed, strategy, identity, 1e-3, 100.0, end, seed=seed)


def test_a_nan_seed_is_listed_and_its_variant_gets_no_mean_no_interval_no_star(tmp_path):
    """On the three survivors interleave_id is established better (-2.2%, -2%, -2.3%); with the fourth seed
    diverged it must say so instead of showing the survivors' `*`."""
    root = tmp_path / "sweep"
    _seeds(root, 0, "none", False, [92.0, 100.0, 100.0, 100.0])
    _seeds(root, 10, "interleave", True, [90.0, 98.0, 97.7, float("nan")])
    g = gather(root, tmp_path / "out")
    row = next(r for r in g.summary if r["variant"] == "interleave_id")
    assert row["seeds"] == "4 (1 diverged)" and row["diverged_seeds"] == [4]
    assert row["ppl_end_mean"] is None and row["ppl_end_std"] is None
    assert row["vs_tokens_mean"] is None and row["vs_tokens_low"] is None and not row["vs_tokens_excludes_zero"]
    assert "*" not in row["vs_tokens_ctrl"] and row["vs_tokens_ctrl"] == "n/a (diverged)"
    md = g.files["markdown"].read_text()
    assert "| interleave_id | 0.001 | 4 (1 diverged) | n/a | n/a | n/a (diverged) |" in md
    assert "Diverged (NaN/inf perplexity; no mean, no interval, nothing paired with it): interleave_id" in md
    assert "Established (95% interval excludes zero): nothing." in md
    summary_csv = g.files["summary_csv"].read_text().splitlines()
    assert next(line for line in summary_csv if ",interleave_id," in line).startswith(
        "base,interleave_id,0.001,4 (1 diverged),,,")
    assert sum(",nan," in line for line in g.files["csv"].read_text().splitlines()) == 1  # the per-job row


def test_an_all_nan_variant_still_has_its_summary_row(tmp_path):
    root = tmp_path / "sweep"
    _seeds(root, 0, "none", False, [92.0, 93.0])
    _seeds(root, 10, "solar", False, [float("nan"), float("nan")])
    g = gather(root, tmp_path / "out")
    row = next(r for r in g.summary if r["variant"] == "solar")
    assert row["seeds"] == "2 (2 diverged)" and row["ppl_end_mean"] is None
    assert "| solar | 0.001 | 2 (2 diverged) | n/a | n/a | n/a (diverged) |" in g.files["markdown"].read_text()
    assert any(line.startswith("base,solar,0.001,2 (2 diverged),,,")
               for line in g.files["summary_csv"].read_text().splitlines())


def test_an_infinite_point_in_a_curve_is_marked_not_a_crash(tmp_path):
    """Seed 2 blew up mid-run (inf at 2,048 tokens) and recovered: the gather finishes, the curve CSV marks
    that point `inf` with no std, the plot skips it, and the seed counts as diverged."""
    root = tmp_path / "sweep"
    _seeds(root, 0, "none", False, [92.0, 93.0])
    _seeds(root, 10, "interleave", True, [90.0, 91.0])
    for num in (11, 12):
        report_path = root / str(num) / "perplexity_report.json"
        report = json.loads(report_path.read_text())
        mid = float("inf") if num == 12 else 95.0
        report["val_curve"].insert(1, {"step": 2, "tokens": 2048, "ppl": mid})
        report_path.write_text(json.dumps(report))
    g = gather(root, tmp_path / "out")
    curves = g.files["job_curves"].read_text().splitlines()
    assert "base,interleave_id,0.001,2,2048,inf," in curves
    assert "base,interleave_id,0.001,2,4096,90.5,0.7071067811865476" in curves
    assert g.files["plot"].stat().st_size > 0 and g.files["differences_plot"].stat().st_size > 0
    row = next(r for r in g.summary if r["variant"] == "interleave_id")
    assert row["seeds"] == "2 (1 diverged)" and row["ppl_end_mean"] is None


def test_empty_or_missing_multirun_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jobs(tmp_path / "nope")
    (tmp_path / "empty" / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(ValueError, match="no finished train.py jobs"):
        load_jobs(tmp_path / "empty")


def test_csv_curve_for_reports_without_val_curve(tmp_path):
    """Older reports have no val_curve: the CSV logger's rows are used, shifted as Lightning logs them
    (validation before fit at step 0, validations inside fit at optimizer step - 1)."""
    import math

    from kiwi.study.jobs import load_job

    _job(tmp_path, 0, "interleave", True, 1e-3, 100.0, 80.0, tokens=4096)
    job_dir = tmp_path / "0"
    report = json.loads((job_dir / "perplexity_report.json").read_text())
    del report["val_curve"]
    (job_dir / "perplexity_report.json").write_text(json.dumps(report))
    (job_dir / "csv").mkdir()
    rows = [(0, math.log(100.0)), (1, math.log(90.0)), (3, math.log(80.0))]  # vals after steps 0, 2, 4
    (job_dir / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n" + "".join(f"0,{s},,{v}\n" for s, v in rows) + "0,2,4.5,\n")
    job = load_job(job_dir)
    assert [t for t, _ in job.curve] == [0, 2048, 4096]
    assert job.curve[1][1] == pytest.approx(90.0) and job.curve[-1][1] == 80.0


def test_a_lever_at_its_own_lr_pairs_with_the_controls_only_lr(tmp_path):
    """No re-warming runs at the base's final lr: it is paired with the study's controls (one lr)."""
    root = tmp_path / "sweep"
    for seed, (ctrl, lever) in enumerate(((92.0, 90.0), (94.0, 93.0)), start=1):
        _job(root, 2 * seed, "none", False, 3e-3, 100.0, ctrl, seed=seed)
        _job(root, 2 * seed + 1, "interleave", True, 1e-3, 100.0, lever, seed=seed, norewarm=True)
        _job(root, 2 * seed + 10, "interleave", True, 1e-3, 100.0, lever, seed=seed)  # an lr sweep point
    rows = {r["variant"]: r for r in summary_rows(load_jobs(root)[0])}
    want = (100 * (90 / 92 - 1) + 100 * (93 / 94 - 1)) / 2
    assert rows["interleave_id_norewarm"]["vs_tokens_mean"] == pytest.approx(want)
    assert rows["interleave_id"]["vs_tokens_ctrl"] == "n/a"  # a plain variant at another lr has no pair


def test_a_diverged_control_at_the_variants_lr_is_not_replaced_by_another_lr(tmp_path):
    root = tmp_path / "sweep"
    for seed in (1, 2):
        _job(root, 10 * seed, "none", False, 1e-3, 100.0, 92.0 + seed, seed=seed)
        _job(root, 10 * seed + 1, "none", False, 1e-2, 100.0, float("inf"), seed=seed)
        _job(root, 10 * seed + 2, "interleave", True, 1e-2, 100.0, 80.0 + seed, seed=seed)
    rows = {(r["variant"], r["lr"]): r for r in summary_rows(load_jobs(root)[0])}
    assert rows[("interleave_id", 1e-2)]["vs_tokens_ctrl"] == "n/a"  # not "-13% *" against the 1e-3 control


def test_two_jobs_of_one_setting_and_seed_are_an_error_not_an_average(tmp_path):
    root = tmp_path / "sweep"
    _job(root, 0, "interleave", True, 1e-3, 100.0, 90.0)
    _job(root, 1, "interleave", True, 1e-3, 100.0, 80.0)
    with pytest.raises(ValueError, match="two jobs for interleave_id .*seed 1"):
        summary_rows(load_jobs(root)[0])


def test_only_no_rewarming_pairs_across_lrs(tmp_path):
    """Distillation run at another lr than the controls has no pair (its lr is not part of the lever)."""
    root = tmp_path / "sweep"
    for seed in (1, 2):
        _job(root, 10 * seed, "none", False, 3e-3, 100.0, 92.0 + seed, seed=seed)
        d = root / str(10 * seed + 1)
        _job(root, 10 * seed + 1, "interleave", True, 1e-3, 100.0, 80.0 + seed, seed=seed)
        cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
        cfg["module"] = {"distill": {"alpha": 0.5}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = {r["variant"]: r for r in summary_rows(load_jobs(root)[0])}
    assert rows["interleave_id_distill"]["vs_tokens_ctrl"] == "n/a"


def test_a_directory_given_twice_is_gathered_once(sweep, tmp_path):
    once = gather(sweep, tmp_path / "once")
    twice = gather([sweep, sweep / ".." / sweep.name], tmp_path / "twice")
    assert len(twice.jobs) == len(once.jobs) and twice.summary == once.summary
    assert twice.files["job_curves"].read_text() == once.files["job_curves"].read_text()


def _continuing(root: Path, num: int, base: Path, seed: int) -> None:
    """A job of regime 0.05 tokens/param that continued ``base``."""
    _job(root, num, "interleave", True, 1e-3, 100.0, 90.0 + seed, seed=seed)
    path = root / str(num) / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["base"], cfg["study"] = str(base), {"base_tokens_per_param": 0.05}
    path.write_text(yaml.safe_dump(cfg))


def test_sweeps_of_two_bases_with_one_regime_label_are_not_pooled(tmp_path):
    _continuing(tmp_path / "a", 0, tmp_path / "base_a", seed=1)
    _continuing(tmp_path / "b", 0, tmp_path / "base_b", seed=2)
    with pytest.raises(ValueError, match=r"different bases share a regime label.*base_a.*base_b"):
        gather([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gather_of_an_empty_directory_is_one_line_and_writes_nothing(tmp_path, capsys):
    from kiwi.study.gather import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^kiwi.study.gather: error: .*empty: no finished train.py jobs"):
        main([str(tmp_path / "empty"), "--wandb", "disabled"])
    assert list((tmp_path / "empty").iterdir()) == []


def _launch(root: Path, task: list[str], jobs: list[tuple[int, str, bool]]) -> None:
    """What one `train.py -m ... hydra.sweep.dir=root` launch leaves: its multirun.yaml (the swept overrides)
    and, per job, the job folder and the job's own overrides (`+study=<variant>`, `seed=1`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    for num, strategy, identity in jobs:
        if (root / str(num)).exists():  # Hydra reuses job number num: its folder is rewritten
            import shutil
            shutil.rmtree(root / str(num))
        _job(root, num, strategy, identity, 1e-3, 100.0, 90.0 + num)
        variant = _label(strategy, identity, "all", False)
        (root / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+study={variant}", "seed=1"]))


def test_a_rerun_with_fewer_variants_into_the_same_folder_is_refused(tmp_path, capsys):
    """The first launch swept three variants, the rerun two: job 2 (stack_id) is the first launch's, and
    gathering it beside the rerun's controls would pair jobs of two runs."""
    from kiwi.study.gather import main

    root = tmp_path / "sweep"
    _launch(root, ["+study=control_tokens,interleave_id,stack_id", "seed=1"],
            [(0, "none", False), (1, "interleave", True), (2, "stack", True)])
    assert {j.variant for j in load_jobs(root)[0]} == {"control_tokens", "interleave_id", "stack_id"}  # one launch
    _launch(root, ["+study=control_tokens,interleave_id", "seed=1"], [(0, "none", False), (1, "interleave", True)])
    with pytest.raises(ValueError, match=r"sweep/2: left by an earlier launch .*more than one sweep"):
        gather(root, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"^kiwi.study.gather: error: .*sweep/2: left by an earlier launch[^\n]*$"):
        main([str(root), "--out", str(tmp_path / "out"), "--wandb", "disabled"])
    assert not (tmp_path / "out").exists()
    # the same number of jobs, other values: job 1 is interleave_id from the first launch, not stack_id
    _launch(root, ["+study=control_tokens,stack_id", "seed=1"], [(0, "none", False)])
    with pytest.raises(ValueError, match=r"sweep/1: left by an earlier launch into the same folder "
                                         r"\(\+study=interleave_id is not"):
        gather(root, tmp_path / "out")


def test_every_study_run_writes_fresh_sweep_folders():
    """python -m kiwi.study.run never reruns into a folder an earlier run wrote (Hydra would keep its jobs)."""
    from kiwi.study.run import study_tasks

    first = study_tasks("study_cpu", ["64"], 2, "control_tokens", [], [])[1][None]
    second = study_tasks("study_cpu", ["64"], 2, "control_tokens", [], [])[1][None]
    assert len(first) == len(second) == 2 and not set(first) & set(second)


def _regime(root: Path, ends: dict[str, list[float]], tokens: dict[str, list[int]]) -> None:
    """Both seeds (or more) of the equal-token control and interleave_id, each seed at its own token budget."""
    settings = {"control_tokens": ("none", False), "interleave_id": ("interleave", True)}
    num = 0
    for variant, (strategy, identity) in settings.items():
        for seed, (end, t) in enumerate(zip(ends[variant], tokens[variant], strict=True), start=1):
            _job(root, num, strategy, identity, 1e-3, 100.0, end, tokens=t, seed=seed)
            num += 1


def test_jobs_of_one_setting_at_different_budgets_are_refused_unless_allowed(tmp_path, capsys):
    """Seeds 1-2 at 4,096 tokens and seed 3 at 8,192 would be averaged into one row labelled 4,096."""
    from kiwi.study.gather import main

    root = tmp_path / "sweep"
    _regime(root, {"control_tokens": [92.0, 93.0, 80.0], "interleave_id": [90.0, 91.0, 79.0]},
            {"control_tokens": [4096, 4096, 8192], "interleave_id": [4096, 4096, 8192]})
    with pytest.raises(ValueError, match=r"sweep/2: its training definition differs from .*sweep/0 \(same variant "
                                         r"control_tokens, lr 0.001\) in budget.total_tokens=8192 vs 4096"):
        gather(root, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"^kiwi.study.gather: error: .*--allow-mixed budget.total_tokens[^\n]*$"):
        main([str(root), "--out", str(tmp_path / "out"), "--wandb", "disabled"])
    assert not (tmp_path / "out").exists()
    g = gather(root, tmp_path / "out", allow_mixed=["budget.total_tokens"])
    row = next(r for r in g.summary if r["variant"] == "interleave_id")
    assert row["seeds"] == 3 and row["budget.total_tokens"] == "4096 / 8192"
    md = g.files["markdown"].read_text()
    assert "| budget.total_tokens |" in md and "(--allow-mixed): budget.total_tokens" in md
    assert g.files["summary_csv"].read_text().splitlines()[0].endswith(",budget.total_tokens")


def test_a_variant_at_twice_the_tokens_is_not_paired_with_1x_controls(tmp_path):
    root = tmp_path / "sweep"
    _regime(root, {"control_tokens": [92.0, 93.0], "interleave_id": [85.0, 86.0]},
            {"control_tokens": [4096, 4096], "interleave_id": [8192, 8192]})
    with pytest.raises(ValueError, match=r"sweep/2: its training definition differs from .*sweep/0 \(its pair in "
                                         r"regime base\) in budget.total_tokens=8192 vs 4096"):
        gather(root, tmp_path / "out")


@pytest.mark.parametrize("key, value", [("data.num_workers", 2), ("data.seq_len", 128), ("model.tiny.hidden_size", 64),
                                        ("data.tokenizer", "tiktoken")])
def test_any_other_training_difference_within_a_regime_is_refused(tmp_path, key, value):
    root = tmp_path / "sweep"
    _regime(root, {"control_tokens": [92.0, 93.0], "interleave_id": [90.0, 91.0]},
            {"control_tokens": [4096, 4096], "interleave_id": [4096, 4096]})
    path = root / "3" / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path)
    OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, path)
    with pytest.raises(ValueError, match=rf"sweep/3: its training definition differs .* in {key}={value!r} vs "):
        gather(root, tmp_path / "out")


def test_run_local_keys_do_not_split_a_group(tmp_path):
    """Output paths and the logger are where a run is recorded, not what it trains; data.seed is the seed."""
    root = tmp_path / "sweep"
    _regime(root, {"control_tokens": [92.0, 93.0], "interleave_id": [90.0, 91.0]},
            {"control_tokens": [4096, 4096], "interleave_id": [4096, 4096]})
    for num in range(4):
        path = root / str(num) / ".hydra" / "config.yaml"
        cfg = OmegaConf.load(path)
        cfg.paths = {"output_dir": "${hydra:runtime.output_dir}", "log_dir": f"/somewhere/{num}"}
        cfg.logger.wandb.name = f"run-{num}"
        cfg.trainer = {"default_root_dir": "${paths.output_dir}"}
        cfg.data = {"seed": "${seed}"}  # follows the seed, which differs by design
        OmegaConf.save(cfg, path)
    assert len(gather(root, tmp_path / "out").summary) == 2


def _set_flops(root: Path, num: int, flops: float) -> None:
    path = root / str(num) / "perplexity_report.json"
    report = json.loads(path.read_text())
    report["train_flops"] = flops
    path.write_text(json.dumps(report))


def test_an_equal_flops_comparison_with_unequal_flops_is_marked(tmp_path, caplog):
    """Distillation at equal FLOPs whose whole-step rounding gave +23.7% FLOPs over the equal-FLOPs control is
    marked in the table and the reading, naming both FLOPs, and warned about; a 1% gap is within the 2%."""
    root = tmp_path / "sweep"
    for seed in (1, 2):
        _job(root, 10 * seed, "none", False, 1e-3, 100.0, 92.0 + seed, seed=seed)
        _job(root, 10 * seed + 1, "none", False, 1e-3, 100.0, 90.0 + seed, tokens=6144, match_flops=8,
             budget_tokens=4096, seed=seed)
        _job(root, 10 * seed + 2, "interleave", True, 1e-3, 100.0, 88.0 + seed, seed=seed)
        _job(root, 10 * seed + 3, "interleave", True, 1e-3, 100.0, 87.0 + seed, seed=seed)
        d = root / str(10 * seed + 3) / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(d.read_text())
        cfg["module"] = {"distill": {"alpha": 0.5, "temperature": 1.0, "flops_matched": True}}
        d.write_text(yaml.safe_dump(cfg))
        _set_flops(root, 10 * seed + 1, 1.0e12)
        _set_flops(root, 10 * seed + 2, 0.99e12)
        _set_flops(root, 10 * seed + 3, 1.237e12)
    caplog.set_level("WARNING")
    g = gather(root, tmp_path / "out")
    rows = {r["variant"]: r for r in g.summary}
    assert rows["interleave_id"]["flops_mismatch"] is None and "unequal" not in rows["interleave_id"]["vs_flops_ctrl"]
    assert rows["interleave_id"]["flops_vs_flops_ctrl_pct"] == pytest.approx(-1.0)
    distill = rows["interleave_id_distill"]
    assert distill["flops_mismatch"] == (pytest.approx(1.237e12), pytest.approx(1.0e12))
    assert distill["vs_flops_ctrl"].endswith("(unequal FLOPs: 1.237e+12 vs control 1e+12, +23.7%)")
    md = g.files["markdown"].read_text()
    assert "(unequal FLOPs: 1.237e+12 vs control 1e+12, +23.7%) |" in md
    assert "Not equal compute (train FLOPs differ from the equal-FLOPs control's by more than the tolerance; " in md
    assert "interleave_id_distill (lr 0.001): 1.237e+12 vs control_flops 1e+12 (+23.7%)" in md
    assert any("interleave_id_distill" in r.message and "not equal compute" in r.message for r in caplog.records)
    assert "interleave_id," not in [line for line in md.splitlines() if "unequal" in line][0]
    loose = gather(root, tmp_path / "loose", flops_tolerance=0.3)
    assert all(r["flops_mismatch"] is None for r in loose.summary)
