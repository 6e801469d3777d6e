"""Atomic publishing (issue 10): a new directory is complete before the old one goes away."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(text)
    (root / "sub" / "b.txt").write_text(text * 2)
    return root


def test_publish_dir_replace_keeps_the_old_one_until_the_new_one_is_in(tmp_path, monkeypatch):
    """If renaming the new directory in fails, the previous one is still there, whole; on success only the
    new one is left."""
    from kiwi.atomic import publish_dir

    out = _make(tmp_path / "model", "old")
    old = _tree(out)
    new = _make(tmp_path / "model.tmp1", "new")
    real_replace = Path.replace

    def failing(self, target):
        if self == new:
            raise OSError("crash while renaming in (simulated)")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with pytest.raises(OSError, match="simulated"):
        publish_dir(new, out, replace=True)
    monkeypatch.undo()
    assert _tree(out) == old

    publish_dir(new, out, replace=True)
    assert _tree(out)["a.txt"] == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_checkpoint_directory_write_is_published_by_rename(tmp_path, kiwi_cache, monkeypatch):
    """The directory-checkpoint path (DeepSpeed, FSDP sharded) on a real Trainer: each save goes to a
    temporary name and is renamed in; a save that dies half-way leaves the previous checkpoint whole."""
    from kiwi.train.checkpoint import publish_checkpoint_dirs
    from kiwi.train.run import run
    from tests.train.test_training_run import _cfg

    run(_cfg(tmp_path, ["trainer.max_steps=2"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=False)

    import lightning as L

    from kiwi.train.module import KiwiLM

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    seen = []
    real_save = trainer.strategy.save_checkpoint

    def save_dir(checkpoint, filepath, storage_options=None):
        """Write a directory of files, as DeepSpeed does, and die half-way the second time."""
        seen.append(Path(filepath))
        Path(filepath).mkdir(parents=True)
        real_save(checkpoint, Path(filepath) / "model_states.pt")
        if len(seen) == 2:
            raise OSError("killed half-way through the directory (simulated)")
        real_save(checkpoint, Path(filepath) / "optim_states.pt")

    trainer.strategy.save_checkpoint = save_dir
    publish_checkpoint_dirs(trainer.strategy, force=True)
    module = KiwiLM.load_from_checkpoint(last, map_location="cpu")
    trainer.strategy.connect(module)
    target = tmp_path / "checkpoints" / "dir.ckpt"
    trainer.save_checkpoint(target)
    assert seen[0] != target and sorted(p.name for p in target.iterdir()) == ["model_states.pt", "optim_states.pt"]
    first = _tree(target)
    with pytest.raises(OSError, match="simulated"):
        trainer.save_checkpoint(target)
    assert _tree(target) == first  # the previous directory checkpoint is untouched
    assert before["global_step"] == torch.load(last, map_location="cpu", weights_only=False)["global_step"]
