"""Checkpoints written whole: directory-writing strategies save under a temporary name, renamed in when done.

Loading a checkpoint back into an HF model is model I/O (``kiwi.model.io``).
"""

from __future__ import annotations

from pathlib import Path

from kiwi.atomic import publish_dir, remove


def writes_directories(strategy) -> bool:
    """Whether ``strategy.save_checkpoint`` writes a directory of files (DeepSpeed; FSDP sharded)."""
    name = type(strategy).__name__
    return "DeepSpeed" in name or ("FSDP" in name and getattr(strategy, "_state_dict_type", "") == "sharded")


def publish_checkpoint_dirs(strategy, force: bool = False) -> None:
    """Make ``strategy`` write each checkpoint under a temporary name (the same on every rank) and rename
    it over the target once every rank has finished, so a crash mid-save leaves the previous checkpoint
    whole (``kiwi.atomic.publish_dir``). Only for strategies that write directories (Lightning's own file
    writes are already atomic), or with ``force``."""
    if not (force or writes_directories(strategy)):
        return
    save = strategy.save_checkpoint

    def save_atomically(checkpoint, filepath, storage_options=None):
        out = Path(strategy.broadcast(str(filepath)))
        tmp = out.with_name(f"{out.name}.tmp-step{checkpoint.get('global_step', 0)}")
        if strategy.is_global_zero:
            remove(tmp)
        strategy.barrier()
        if storage_options is None:
            save(checkpoint, str(tmp))
        else:
            save(checkpoint, str(tmp), storage_options)
        strategy.barrier()  # every rank's shard is in tmp
        if strategy.is_global_zero:
            publish_dir(tmp, out, replace=True)
        strategy.barrier()

    strategy.save_checkpoint = save_atomically
