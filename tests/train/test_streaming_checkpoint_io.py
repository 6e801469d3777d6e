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
