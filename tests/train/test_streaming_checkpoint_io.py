"""Saving a checkpoint must not hold a second, serialised copy of it in memory (full size: 8.4 GB)."""

from __future__ import annotations

import tracemalloc

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from kiwi.train.checkpoint import StreamingCheckpointIO


def _peak_save_bytes(io, path) -> int:
    checkpoint = {"state_dict": {"w": torch.ones(8 * 2**20 // 4)}}  # 8 MiB of tensor data
    tracemalloc.start()
    try:
        io.save_checkpoint(checkpoint, path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_default_checkpoint_io_buffers_the_whole_checkpoint(tmp_path):
    """Why kiwi replaces it: Lightning's default serialises into a BytesIO first."""
    assert _peak_save_bytes(TorchCheckpointIO(), tmp_path / "a.ckpt") > 8 * 2**20


def test_streaming_checkpoint_io_writes_without_the_copy(tmp_path):
    path = tmp_path / "sub" / "b.ckpt"
    assert _peak_save_bytes(StreamingCheckpointIO(), path) < 2**20
    assert torch.equal(StreamingCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.ones(2**21))
    assert [p.name for p in path.parent.iterdir()] == ["b.ckpt"]  # no temporary file left behind


def test_plugin_is_accepted_by_a_trainer_override(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["experiment=quickstart",
                                "+trainer.plugins=[{_target_:kiwi.train.checkpoint.StreamingCheckpointIO}]"])
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer.strategy.checkpoint_io, StreamingCheckpointIO)


_SAVE_FOREVER = """
import sys, torch
from kiwi.train.checkpoint import StreamingCheckpointIO
big = {"state_dict": {f"w{i}": torch.ones(2**22) for i in range(64)}}  # 1 GiB: the save outlives the kill
StreamingCheckpointIO().save_checkpoint(big, sys.argv[1])
"""


def test_a_save_killed_by_sigkill_leaves_a_tmp_file_that_the_next_save_removes(tmp_path, caplog):
    """A real process is ``kill -9``-ed mid-save; the next save in that folder removes its temporary file and
    says so, and keeps the temporary file of a writer that is still alive."""
    import os
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(target)], start_new_session=True)
    try:
        dead_tmp = tmp_path / f"last.ckpt.tmp{proc.pid}"
        deadline = time.monotonic() + 120
        while not (dead_tmp.exists() and dead_tmp.stat().st_size > 2**20) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dead_tmp.exists(), "the saving process never started writing"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert dead_tmp.exists() and not target.exists()  # what a kill -9 leaves: a half-written tmp, no checkpoint
    live_tmp = tmp_path / f"step1.ckpt.tmp{os.getpid()}"  # a save in progress in this very process
    live_tmp.write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="kiwi.train.checkpoint"):
        StreamingCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, tmp_path / "step2.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step1.ckpt" + live_tmp.suffix, "step2.ckpt"]
    assert f"removed {dead_tmp}" in caplog.text
