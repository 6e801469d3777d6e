"""kiwi.study.sweeps on folders a real Hydra multirun wrote (not hand-made YAML): which jobs the latest
launch into a folder produced."""

import sys
import textwrap
from pathlib import Path

import pytest

from kiwi.study.sweeps import check_one_launch
from tests.helpers import run_in_group

APP = textwrap.dedent("""
    import hydra

    @hydra.main(version_base="1.3", config_path=None, config_name=None)
    def main(cfg):
        pass

    main()
""")


def _launch(tmp_path: Path, root: Path, *overrides: str) -> list[Path]:
    app = tmp_path / "app.py"
    app.write_text(APP)
    done = run_in_group([sys.executable, str(app), "-m", f"hydra.sweep.dir={root}", *overrides], timeout=120,
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def test_a_launch_with_an_interpolating_override_is_one_launch(tmp_path):
    """The study's Wikipedia runs pass data.source.files=[${paths.shared_dir}/...]. Hydra writes it into
    multirun.yaml as typed but escaped ($\\{...\\}) into each job's overrides.yaml; reading the launch's
    overrides resolved the interpolation, so every job of one launch was refused as an earlier launch's."""
    root = tmp_path / "sweep"
    jobs = _launch(tmp_path, root, "+shared=/data", "+files=[${shared}/wiki/*.jsonl.gz]", "+v=a,b,c")
    assert len(jobs) == 3
    check_one_launch(root, jobs)  # raised before the fix: "+files=[...] is not a point of the latest launch"


def test_a_rerun_with_fewer_points_is_still_refused(tmp_path):
    root = tmp_path / "sweep"
    _launch(tmp_path, root, "+shared=/data", "+files=[${shared}/wiki/*.jsonl.gz]", "+v=a,b,c")
    jobs = _launch(tmp_path, root, "+shared=/data", "+files=[${shared}/wiki/*.jsonl.gz]", "+v=a,b")
    with pytest.raises(ValueError, match=r"sweep/2: left by an earlier launch into the same folder "
                                         r"\(job number 2 is past the 2 jobs"):
        check_one_launch(root, jobs)
    other = _launch(tmp_path, tmp_path / "other", "+shared=/data", "+files=[${shared}/a,${shared}/b]")
    check_one_launch(tmp_path / "other", other)  # a swept interpolating override: both points are the launch's
