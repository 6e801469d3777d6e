"""The whole DUS study in one command: per regime the base (step 1), then every variant x seed (step 2),
then the gather. Each step is the `train.py` command a user would type, run as a subprocess; ``--workers``
of them at once (default 2: the most trained base beside the other regime's jobs), each one's output in
``logs/<profile>/<stamp>/study_run/<task>.log``; the sweeps go into that run's own fresh
``logs/<profile>/<stamp>/tpp<k>/seed<s>``, and the gather reads exactly those.

    python -m kiwi.study.run                          # CPU profile, both regimes, seeds 1..3 -> logs/study/<UTC time>
    python -m kiwi.study.run --seeds 1,2 --out docs/study   # refresh the committed tables (an explicit --out)
    python -m kiwi.study.run --profile study_gpu --out bench/results/study_gpu

``--seeds`` is a count (``3``: seeds 1, 2, 3) or a list (``1,2``; ``5,7,9``); the paired intervals need at
least 2. The default ``--out`` is a new git-ignored folder; a folder holding committed files is written
only when named with ``--out``. Reads ../shared's Wikipedia (.jsonl.gz, held out by article) when it is
present, else the offline docstring corpus, and says which (on the terminal and in results.md). Prints each
command before running it and the wall time of the whole study at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kiwi.study.design import DESIGNS, Sweep

ROOT = Path(__file__).resolve().parents[2]
WIKIPEDIA = ROOT.parent / "shared" / "data" / "wikipedia-en-2015"


def resolve_corpus(corpus: str) -> tuple[str, str]:
    """(corpus, a line saying which it is and why): ``auto`` is Wikipedia when ../shared has it."""
    if corpus == "auto":
        corpus = "wikipedia" if any(WIKIPEDIA.glob("*.jsonl.gz")) else "docstrings"
        why = "found" if corpus == "wikipedia" else "not found"
        return corpus, f"corpus: {corpus} (--corpus auto: {WIKIPEDIA} {why})"
    return corpus, f"corpus: {corpus} (--corpus {corpus})"


def data_overrides(corpus: str) -> list[str]:
    corpus = resolve_corpus(corpus)[0]
    if corpus == "wikipedia":
        return ["data=local", "data.source.files=[${paths.shared_dir}/data/wikipedia-en-2015/*.jsonl.gz]"]
    if corpus == "docstrings":
        return []
    raise ValueError(f"--corpus: expected auto, wikipedia or docstrings, got {corpus!r}")


def compose_experiment(experiment: str, overrides: list[str]):
    """train.yaml with ``experiment=<experiment>`` and ``overrides``, as the study's train.py step gets it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", *overrides])


def base_val_every(profile: str, tokens_per_param: float, overrides: list[str]) -> list[str]:
    """~16 validations along the base's training whatever its length: its held-out curve and last doubling.
    Sized from the base's config with the same overrides the base run gets."""
    from transformers import Qwen2Config

    from kiwi.model.build import as_dict
    from kiwi.upscale import count_parameters

    cfg = compose_experiment(f"{profile}_base", overrides)
    tiny = {k: v for k, v in as_dict(cfg.model.tiny).items() if k in Qwen2Config().to_dict()}
    steps = tokens_per_param * count_parameters(Qwen2Config(**tiny)) / (cfg.data.batch_size * cfg.data.seq_len)
    return [f"trainer.val_check_interval={max(1, round(steps / 16))}"]


@dataclass
class Task:
    """One ``train.py`` command of the study; it starts once the task named ``after`` has finished."""

    name: str
    cmd: list[str]
    after: str | None = None


def run_tasks(tasks: list[Task], workers: int, log_dir: Path, dry: bool = False) -> dict[str, float]:
    """Run ``tasks`` on ``workers`` processes at once, each with cpus / workers torch threads, in list order
    as their dependencies allow; each writes its output to ``log_dir/<name>.log``. Returns the wall seconds
    per task; the first failure stops new tasks from starting and raises SystemExit naming its log."""
    names = [t.name for t in tasks]
    unknown = [f"{t.name} (after {t.after!r})" for t in tasks if t.after is not None and t.after not in names]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"study tasks: unknown dependencies {unknown} or repeated names in {names}")
    for t in tasks:
        print("$", " ".join(t.cmd), flush=True)
    if dry:
        return {}
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    pending, done, failed, walls = list(tasks), set(), [], {}
    cond = threading.Condition()

    def next_task() -> Task | None:
        with cond:
            while True:
                if failed:
                    return None
                ready = [t for t in pending if t.after is None or t.after in done]
                if ready:
                    pending.remove(ready[0])
                    return ready[0]
                if not pending:
                    return None
                cond.wait()

    def worker() -> None:
        while (task := next_task()) is not None:
            log_path = log_dir / f"{task.name}.log"
            print(f"kiwi.study.run: start {task.name} (log: {log_path})", flush=True)
            start = time.perf_counter()
            try:
                with log_path.open("w") as out:
                    rc = subprocess.run(task.cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            except OSError as err:  # the command could not start (or its log be written): a failure, not a hang
                rc = f"{type(err).__name__}: {err}"
            with cond:
                walls[task.name] = round(time.perf_counter() - start, 1)
                (failed.append((task, rc, log_path)) if rc else done.add(task.name))
                cond.notify_all()
            print(f"kiwi.study.run: {'FAILED' if rc else 'done'} {task.name} in {walls[task.name]:.0f} s", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, workers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failed:
        task, rc, log_path = failed[0]
        why = f"exit {rc}" if isinstance(rc, int) else rc
        raise SystemExit(f"kiwi.study.run: {task.name} failed ({why}); see {log_path}")
    return walls


def sweep_stamp() -> str:
    """A fresh folder name per study run (UTC time to the microsecond): Hydra never clears a sweep folder, so
    a rerun into the same one would leave the earlier run's jobs beside the new ones for the gather."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")


def continuation_tokens(profile: str, overrides: list[str]) -> int:
    """The profile's continuation budget (budget.total_tokens of step 2) with the study's overrides."""
    return int(compose_experiment(profile, overrides).budget.total_tokens)


def study_tasks(profile: str, regimes: list[str], seeds: int | list[int], variants: str, data: list[str],
                overrides: list[str], stamp: str | None = None, top: tuple[Sweep, ...] = ()
                ) -> tuple[list[Task], dict[str | None, list[str]]]:
    """Per regime the base, then one multirun of every variant per seed (seeds run in parallel when
    workers allow); the most trained base first, as it takes longest, and the ``top`` sweeps (a lever
    search) at that regime after its own. Every sweep goes into ``logs/<profile>/<stamp>/`` (default: a fresh
    ``sweep_stamp``). Returns (tasks, sweep directories per gather: None is the main one)."""
    stamp = stamp or sweep_stamp()
    py = [sys.executable, "train.py"]
    tasks, sweeps = [], {None: []}
    seed_list = list(range(1, seeds + 1)) if isinstance(seeds, int) else seeds
    ordered = sorted(regimes, key=float, reverse=True)
    for tpp in ordered:
        regime = [f"study.base_tokens_per_param={tpp}", *data, *overrides]
        base = f"base-tpp{tpp}"
        tasks.append(Task(base, [*py, f"experiment={profile}_base", *regime,
                                 *base_val_every(profile, float(tpp), regime)]))
        for seed in seed_list:
            sweep = f"logs/{profile}/{stamp}/tpp{tpp}/seed{seed}"
            tasks.append(Task(f"tpp{tpp}-seed{seed}", [*py, "-m", f"experiment={profile}", *regime, f"seed={seed}",
                                                         f"+study={variants}", f"hydra.sweep.dir={sweep}"], after=base))
            sweeps[None].append(sweep)
        if tpp != ordered[0]:
            continue
        for extra in top:
            budget = ([f"budget.total_tokens={round(extra.budget * continuation_tokens(profile, regime))}"]
                      if extra.budget is not None else [])
            for seed in seed_list:
                sweep = f"logs/{profile}/{stamp}/tpp{tpp}/{extra.name}/seed{seed}"
                tasks.append(Task(f"tpp{tpp}-{extra.name}-seed{seed}",
                                  [*py, "-m", f"experiment={profile}", *regime, f"seed={seed}",
                                   f"+study={','.join(extra.variants)}", *extra.overrides, *budget,
                                   f"hydra.sweep.dir={sweep}"], after=base))
                sweeps.setdefault(extra.gather, []).append(sweep)
    return tasks, sweeps


def parse_seeds(text: str) -> list[int]:
    """``3`` is a count (seeds 1, 2, 3); ``1,2`` or ``5,7,9`` a list. Raises ValueError saying what is wrong."""
    try:
        numbers = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"expected a count (3) or a comma-separated list of integers (1,2), got {text!r}") from None
    seeds = list(range(1, numbers[0] + 1)) if len(numbers) == 1 else numbers
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"expected distinct non-negative seeds, got {text!r}")
    if len(seeds) < 2:
        raise ValueError(f"got {len(seeds)} seed ({text!r}); the paired 95% intervals against the controls need "
                         "at least 2 seeds (e.g. --seeds 2 or --seeds 1,2)")
    return seeds


def git_tracked(folder: Path) -> bool:
    """Whether ``folder`` holds files committed to kiwi's git repository (False outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", str(folder)], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def resolve_out(out: str | None) -> Path:
    """``--out`` as given; by default a new git-ignored ``logs/study/<UTC time>`` (never committed files)."""
    if out is not None:
        return Path(out).resolve()
    path = ROOT / "logs" / "study" / time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime())
    if git_tracked(path):
        raise SystemExit(f"kiwi.study.run: --out: {path} holds committed files; name it with --out to overwrite them")
    return path


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any base trains, what would fail or mislead only after it: fewer than 2 seeds, unknown
    or repeated variants, empty, non-positive or repeated regimes, fewer than one worker, an unknown corpus."""
    try:
        args.seeds = parse_seeds(args.seeds)
    except ValueError as err:
        parser.error(f"--seeds: {err}")
    if args.corpus not in ("auto", "wikipedia", "docstrings"):
        parser.error(f"--corpus: expected auto, wikipedia or docstrings, got {args.corpus!r}")
    if args.workers < 1:
        parser.error(f"--workers: expected 1 or more, got {args.workers}")
    try:
        regimes = [float(r) for r in args.regimes.split(",")]
    except ValueError:
        parser.error(f"--regimes: expected comma-separated tokens-per-parameter numbers, got {args.regimes!r}")
    if min(regimes) <= 0 or len(set(regimes)) != len(regimes):
        parser.error(f"--regimes: expected distinct positive numbers, got {args.regimes!r}")
    check_variants(parser, args.variants.split(","), "--variants")


def check_variants(parser: argparse.ArgumentParser, variants, what: str) -> None:
    known = sorted(p.stem for p in (ROOT / "conf" / "study").glob("*.yaml"))
    if unknown := [v for v in variants if v not in known]:
        parser.error(f"{what}: unknown {unknown}; conf/study/ has {known}")
    if len(set(variants)) != len(variants):
        parser.error(f"{what}: a variant is repeated in {','.join(variants)!r}")


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="study_cpu", help="experiment pair <profile>_base / <profile>")
    p.add_argument("--design", default="v2", choices=sorted(DESIGNS),
                   help="a named design (kiwi.study.design): its regimes, seeds, settings and lever search "
                        "(default v2, docs/study); --regimes/--seeds/--variants given here win")
    p.add_argument("--regimes", default=None, help="base tokens per parameter, comma-separated (default: the design's)")
    p.add_argument("--seeds", default=None, help="a count (3: seeds 1..3) or a list (1,2); at least 2 (default: the "
                   "design's)")
    p.add_argument("--variants", default=None, help="settings of conf/study/, comma-separated (default: the design's)")
    p.add_argument("--corpus", default="auto", help="auto | wikipedia | docstrings")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="train.py processes at once (each gets cpus / workers threads)")
    p.add_argument("--out", default=None, help="where the gather writes its tables and plot (default: a new "
                   "logs/study/<UTC time>; committed folders such as docs/study only when named here)")
    p.add_argument("--wandb", default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("overrides", nargs="*", help="extra train.py overrides for both steps")
    args = p.parse_args(argv)
    design = DESIGNS[args.design]
    args.regimes = ",".join(f"{r:g}" for r in design.regimes) if args.regimes is None else args.regimes
    args.seeds = str(design.seeds) if args.seeds is None else args.seeds
    args.variants = ",".join(design.variants) if args.variants is None else args.variants
    check_arguments(p, args)
    for extra in design.top:
        check_variants(p, extra.variants, f"--design {args.design} ({extra.name})")
    out = resolve_out(args.out)
    corpus, corpus_line = resolve_corpus(args.corpus)
    print(f"kiwi.study.run: {corpus_line}; results in {out}", flush=True)
    stamp = sweep_stamp()
    tasks, sweeps = study_tasks(args.profile, args.regimes.split(","), args.seeds, args.variants,
                                data_overrides(corpus), args.overrides, stamp, design.top)
    start = time.perf_counter()
    walls = run_tasks(tasks, args.workers, ROOT / "logs" / args.profile / stamp / "study_run", args.dry_run)
    wall = time.perf_counter() - start
    outs = {name: out if name is None else out / name for name in sweeps}
    for name, dirs in sweeps.items():
        gather_cmd = [sys.executable, "-m", "kiwi.study.gather", *dirs, "--out", str(outs[name]), "--wandb",
                      args.wandb]
        print("$", " ".join(gather_cmd), flush=True)
        if not args.dry_run:
            subprocess.run(gather_cmd, cwd=ROOT, check=True)
            with (outs[name] / "results.md").open("a") as fh:
                fh.write(f"\nStudy data: {corpus_line}.\n")
    if not args.dry_run:
        if design.top:
            from kiwi.study.lever_search import write_lever_search

            top = f"{max(float(r) for r in args.regimes.split(',')):g} tokens/param"
            write_lever_search(outs, top, out / "lever_search.md")
        (out / "wall_time.json").write_text(json.dumps(
            {"study_wall_s": round(wall, 1), "regimes": args.regimes, "seeds": args.seeds, "corpus": corpus,
             "variants": args.variants, "design": args.design,
             "workers": args.workers, "cpus": os.cpu_count(), "task_wall_s": walls,
             "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}, indent=2) + "\n")
        print(f"kiwi.study.run: whole study (bases + jobs) {wall / 60:.1f} min wall on {args.workers} workers")
    return wall


if __name__ == "__main__":
    main()
