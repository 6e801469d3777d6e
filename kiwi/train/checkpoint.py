"""Checkpoints written whole: directory-writing strategies save under a temporary name, renamed in when done.

Loading a checkpoint back into an HF model is model I/O (``kiwi.model.io``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from kiwi.atomic import publish_dir, remove
from kiwi.errors import CheckpointError

log = logging.getLogger(__name__)
TMP_SUFFIX = re.compile(r"\.tmp(\d+)$")  # StreamingCheckpointIO's temporary file: <name>.tmp<pid>


def match_accumulation(checkpoint: dict, saved: int, accumulate: int) -> None:
    """Re-count a mid-epoch checkpoint's batches for another ``accumulate_grad_batches`` (a resume on another
    layout with the same global batch: kiwi.data.partitions). Lightning places optimizer steps by the epoch's
    batch count, which is per rank: unchanged, the resumed run would step after the wrong micro-batch. Every
    counter moves by the same amount, so the lag Lightning keeps between them (a save inside a batch's hooks)
    stays as it was."""
    if saved == accumulate:
        return
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress:
        return
    for scope in ("total", "current"):
        counts = progress[scope]
        if counts["ready"] % saved:
            raise CheckpointError(f"checkpoint: saved after {counts['ready']} micro-batches, not at an optimizer "
                                  f"step of {saved}; resume from a step checkpoint")
        shift = counts["ready"] // saved * accumulate - counts["ready"]
        progress[scope] = {k: v + shift for k, v in counts.items()}


def alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp_files(folder: Path) -> list[Path]:
    """Delete the temporary files of saves whose process died (``kill -9``, OOM): nothing else ever would, and
    at full size each is ~8 GB. A file whose writer is still alive is left alone."""
    stale = [p for p in folder.glob("*.tmp*") if p.is_file() and (m := TMP_SUFFIX.search(p.name))
             and not alive(int(m.group(1)))]
    for path in stale:
        path.unlink(missing_ok=True)
        log.warning("removed %s, the temporary file of a save that died", path)
    return stale


def link_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a second name (a hard link) of the checkpoint file ``src``: the bytes are stored once.

    Swapped in by rename, so ``dst`` is at every moment a whole checkpoint (the old one or ``src``); a
    filesystem without hard links gets a copy. Deleting either name (``save_top_k`` rotation) keeps the other.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")  # the name remove_stale_tmp_files knows
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def unshare(path: str | Path) -> None:
    """Drop the name ``path`` if it shares its file with another (a hard link or a symlink) before the file
    is rewritten: a writer that copies into it (Lightning's, when its temporary file is on another
    filesystem) would otherwise change the other name's checkpoint too. That one keeps the same bytes."""
    path = Path(path)
    if path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1):
        path.unlink()


def writes_directories(strategy) -> bool:
    """Whether ``strategy.save_checkpoint`` writes a directory of files (DeepSpeed; FSDP sharded)."""
    return isinstance(strategy, DeepSpeedStrategy) or (
        isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "") == "sharded")


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


class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that streams ``torch.save`` to a temporary file, then renames it into place.

    Lightning's default (``TorchCheckpointIO``) serialises the whole checkpoint into memory before writing
    it, so saving needs the checkpoint's size again in RAM: at full size (702.8M params, fp32 + AdamW,
    8.4 GB) that killed a CPU run on a 24 GiB machine. This keeps the atomic rename without the copy.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp_files(path.parent)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
