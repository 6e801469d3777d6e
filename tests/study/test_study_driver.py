"""kiwi.study.run's driver: the commands it plans (one base, then one multirun per seed, per regime) and its
scheduler, on real processes: dependencies respected, two at once, a failure named with its log."""

from __future__ import annotations

import re
import sys
import time

import pytest

from kiwi.study.run import ROOT, Task, main, run_tasks, study_tasks


def _stamp(path, name: str, sleep: float = 0.0, rc: int = 0) -> list[str]:
    code = (f"import time, pathlib; p = pathlib.Path({str(path)!r}); "
            f"p.open('a').write('start {name} %f\\n' % time.time()); time.sleep({sleep}); "
            f"p.open('a').write('end {name} %f\\n' % time.time()); raise SystemExit({rc})")
    return [sys.executable, "-c", code]


def _events(path) -> dict[str, float]:
    return {f"{kind} {name}": float(t) for kind, name, t in (line.split() for line in path.read_text().splitlines())}


def test_tasks_wait_for_their_base_and_run_two_at_once(tmp_path):
    stamps = tmp_path / "stamps"
    tasks = [Task("base-long", _stamp(stamps, "base-long", 1.0)),
             Task("long-1", _stamp(stamps, "long-1"), after="base-long"),
             Task("base-short", _stamp(stamps, "base-short", 0.2)),
             Task("short-1", _stamp(stamps, "short-1", 0.2), after="base-short")]
    walls = run_tasks(tasks, workers=2, log_dir=tmp_path / "logs")
    ev = _events(stamps)
    assert set(walls) == {t.name for t in tasks} and all(w >= 0 for w in walls.values())
    assert ev["start long-1"] >= ev["end base-long"] and ev["start short-1"] >= ev["end base-short"]
    assert ev["start base-short"] < ev["end base-long"]  # the other worker did not wait for the long base
    assert ev["end short-1"] < ev["end base-long"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(f"{t.name}.log" for t in tasks)


def test_a_failed_task_stops_its_dependents_and_is_named(tmp_path):
    stamps = tmp_path / "stamps"
    tasks = [Task("base", _stamp(stamps, "base", rc=3)), Task("seed1", _stamp(stamps, "seed1"), after="base")]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=r"base failed \(exit 3\); see .*base\.log"):
        run_tasks(tasks, workers=2, log_dir=tmp_path / "logs")
    assert time.perf_counter() - start < 30
    assert "start seed1" not in stamps.read_text()


def test_the_plan_is_one_base_then_one_multirun_per_seed_most_trained_first(capsys):
    tasks, sweeps = study_tasks("study_cpu", ["2", "512"], 3, "control_tokens,interleave_id", [],
                                ["trainer.log_every_n_steps=1"], stamp="20261206-120000-000000")
    assert [t.name for t in tasks] == ["base-tpp512", "tpp512-seed1", "tpp512-seed2", "tpp512-seed3",
                                       "base-tpp2", "tpp2-seed1", "tpp2-seed2", "tpp2-seed3"]
    assert all(t.after == f"base-tpp{t.name[3:].split('-')[0]}" for t in tasks if "seed" in t.name)
    seed2 = tasks[2].cmd
    assert "seed=2" in seed2 and "+study=control_tokens,interleave_id" in seed2
    assert "trainer.log_every_n_steps=1" in seed2
    sweep2 = "logs/study_cpu/20261206-120000-000000/tpp512/seed2"  # this run's own folder, never an earlier run's
    assert f"hydra.sweep.dir={sweep2}" in seed2 and sweeps[None][1] == sweep2
    main(["--dry-run", "--regimes", "4,8", "--seeds", "2", "--corpus", "docstrings"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(printed) == 2 * 3 + 1 and printed[-1].startswith(f"$ {sys.executable} -m kiwi.study.gather")
    with pytest.raises(SystemExit):
        main(["--dry-run", "--seeds", "1"])


def test_a_command_that_cannot_start_fails_fast_instead_of_hanging(tmp_path):
    tasks = [Task("base", [str(tmp_path / "no-such-python")]), Task("seed1", ["true"], after="base")]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=r"base failed \(FileNotFoundError: .*no-such-python"):
        run_tasks(tasks, workers=2, log_dir=tmp_path / "logs")
    assert time.perf_counter() - start < 30


def test_unknown_dependencies_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_tasks([Task("seed1", ["true"], after="base")], workers=1, log_dir=tmp_path / "logs")
    assert not (tmp_path / "logs").exists()


def test_the_base_validation_interval_follows_the_overridden_base():
    """The base is validated ~16 times whatever its size, counted on the config it is really trained with
    (the regime's and the user's overrides), not on the profile's defaults."""

    def interval(*overrides: str) -> int:
        base = study_tasks("study_cpu", ["64"], 2, "control_tokens", [], list(overrides))[0][0]
        return int(next(a for a in base.cmd if a.startswith("trainer.val_check_interval=")).split("=")[1])

    from kiwi.upscale import count_parameters
    from tests.helpers import compose

    wide = compose("train", ["experiment=study_cpu_base", "model.tiny.hidden_size=32"])
    from transformers import Qwen2Config

    tiny = {k: v for k, v in wide.model.tiny.items() if k in Qwen2Config().to_dict()}
    steps = 64 * count_parameters(Qwen2Config(**tiny)) / (wide.data.batch_size * wide.data.seq_len)
    assert interval("model.tiny.hidden_size=32") == max(1, round(steps / 16)) != interval()


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers: expected 1 or more"),
    (["--regimes", ""], "--regimes: expected comma-separated"),
    (["--regimes", "4,x"], "--regimes: expected comma-separated"),
    (["--regimes", "4,4.0"], "--regimes: expected distinct positive"),
    (["--regimes", "0,4"], "--regimes: expected distinct positive"),
    (["--variants", "control_tokens,nosuch"], r"--variants: unknown \['nosuch'\]"),
    (["--variants", "control_tokens,control_tokens"], "--variants: a variant is repeated"),
])
def test_bad_arguments_are_refused_before_anything_runs(args, message, capsys):
    """Each would otherwise fail (or train every job twice) only after a base had trained."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr()
    assert re.search(message, err.err) and "$ " not in err.out


def _dry(capsys, *args: str) -> list[str]:
    main(["--dry-run", "--regimes", "4", *args])
    return capsys.readouterr().out.splitlines()


def test_seeds_take_a_list_or_a_count(capsys):
    """``--seeds 1,2`` and ``--seeds 5,7`` are lists, ``--seeds 3`` the count 1..3."""
    for given, seeds in (("1,2", [1, 2]), ("5,7", [5, 7]), ("3", [1, 2, 3])):
        printed = [line for line in _dry(capsys, "--seeds", given, "--corpus", "docstrings") if " -m " in line]
        assert [int(re.search(r" seed=(\d+) ", line).group(1)) for line in printed[:-1]] == seeds, given


@pytest.mark.parametrize(("seeds", "says"), [("1", "need at least 2 seeds"), ("4,4", "distinct"),
                                             ("a,b", "comma-separated list of integers")])
def test_bad_seeds_are_refused_in_one_line_saying_why(seeds, says, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--dry-run", "--seeds", seeds])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "--seeds" in err[0] and says in err[0], err


def test_the_default_out_is_a_new_ignored_folder_and_the_corpus_is_named(capsys):
    """Run as documented, the results go to a git-ignored logs/study/<time> (not the committed docs/study),
    and the corpus used is said, auto saying whether ../shared's Wikipedia was found."""
    import subprocess

    printed = _dry(capsys, "--seeds", "2")
    (line,) = [x for x in printed if x.startswith("kiwi.study.run: corpus: ")]
    assert re.search(r"corpus: (wikipedia|docstrings) \(--corpus auto: .*wikipedia-en-2015 (found|not found)\)", line)
    out = line.split("; results in ")[1]
    assert out.startswith(str(ROOT / "logs" / "study")) and f"--out {out} " in printed[-1]
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", out]).returncode == 0
    explicit = _dry(capsys, "--seeds", "2", "--corpus", "docstrings", "--out", "docs/study")
    assert "corpus: docstrings (--corpus docstrings); results in " in explicit[0]
    assert explicit[0].endswith(str(ROOT / "docs" / "study")) or "docs/study" in explicit[-1]


def _train_commands(capsys, *args: str) -> list[list[str]]:
    main(["--dry-run", "--corpus", "docstrings", *args])
    printed = [line[2:].split() for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    return [cmd[2:] for cmd in printed if cmd[1] == "train.py"]


def test_the_v3_design_plans_every_regime_setting_seed_and_the_lever_search(capsys):
    from kiwi.study.design import DESIGNS

    v3 = DESIGNS["v3"]
    cmds = _train_commands(capsys, "--profile", "study_cpu_v3", "--design", "v3")
    bases = [c for c in cmds if "-m" not in c]
    assert sorted(float(c[1].split("=")[1]) for c in bases) == sorted(v3.regimes)
    sweeps = [c for c in cmds if "-m" in c]
    core = [c for c in sweeps if f"+study={','.join(v3.variants)}" in c]
    assert len(core) == len(v3.regimes) * v3.seeds == 40
    top = [c for c in sweeps if c not in core]
    assert len(top) == len(v3.top) * v3.seeds and all("study.base_tokens_per_param=8192" in c for c in top)
    budgets = sorted({a for c in top for a in c if a.startswith("budget.total_tokens=")})
    assert budgets == ["budget.total_tokens=163840"]  # 0.5x of the v3 profile's 327,680
    assert any("optimizer.copied_lr_scale=0.03,0.3" in c for c in top)
    assert any("module.distill.alpha=0.25,0.75" in c for c in top)


def test_the_gpu_v3_dry_run_composes_every_command_it_plans(capsys):
    """Every train.py command of ``--profile study_gpu_v3 --design v3`` composes (one seed; a swept value
    as each of its values): what runs on a lent GPU is checked here first."""
    from hydra import compose, initialize_config_dir

    cmds = _train_commands(capsys, "--profile", "study_gpu_v3", "--design", "v3", "--seeds", "2")
    assert len(cmds) == 5 + 5 * 2 + 3 * 2
    checked = 0
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for cmd in cmds:
            args = [a for a in cmd if a != "-m" and not a.startswith(("hydra.", "seed="))]
            if any(a.startswith("seed=") and a != "seed=1" for a in cmd):
                continue
            swept = [(i, a.split("=", 1)) for i, a in enumerate(args) if "," in a.split("=", 1)[1]
                     and not a.startswith("data.source.files")]
            combos = [args]
            for i, (key, values) in swept:
                combos = [[*c[:i], f"{key}={v}", *c[i + 1:]] for c in combos for v in values.split(",")]
            for overrides in combos:
                cfg = compose("train", overrides=overrides)
                assert cfg.trainer.accelerator == "gpu" and cfg.data.partitions == 64
                checked += 1
    assert checked == 5 + 5 * 7 + 2 + 2 + 3
