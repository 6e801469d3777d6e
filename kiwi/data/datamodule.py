"""``PackedDataModule``: the Lightning side of the packed stream (train + held-out validation).

Built by ``hydra.utils.instantiate(cfg.data, tokenizer=tokenizer)``. The first ``val_documents`` records
of the source are the validation set: never trained on, packed the same way, not shuffled, and every rank
evaluates all of it (so validation metrics agree across ranks and no rank waits on another). ``val_tokens``
cuts it at that many tokens in total, so its cost does not depend on document length; it is read by one
stream in the main process, so its rows do not depend on ``num_workers`` either.

The constructor arguments (all but the tokenizer) are saved as hyperparameters, so every Lightning
checkpoint carries the run's data definition under ``datamodule_hyper_parameters``; evaluating a checkpoint's
held-out set rebuilds it from there.

Training batches also carry ``group_label_tokens`` (label tokens of the batch's gradient-accumulation group
on this rank, for a token-weighted loss; ``kiwi.data.accumulation``).

Exact resume: training rows carry a ``stream_state`` tag; ``on_before_batch_transfer`` (called by Lightning
for each batch right before the training step, after prefetching) removes it from the batch and records
it, so the saved position is that of the last batch actually trained on. Lightning keeps only rank 0's
checkpoint, so ``state_dict`` gathers every rank's positions, and each rank picks its own on load.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from kiwi.data.accumulation import AccumulationGroups
from kiwi.data.document_check import check_documents
from kiwi.data.long_docs import LongDocPlan
from kiwi.data.packed_dataset import STATE_KEY, PackedDataset, dist_rank_world
from kiwi.data.partitions import check_layout, check_partitions, merge_positions
from kiwi.data.sources import build_source
from kiwi.errors import ConfigError

log = logging.getLogger(__name__)


class PackedDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer: Any,
        source: dict[str, Any],
        seq_len: int = 32768,
        batch_size: int = 1,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
        val_documents: int = 0,
        val_tokens: int | None = None,
        val_seq_len: int | None = None,
        val_batch_size: int | None = None,
        text_field: str = "text",
        on_error: str = "raise",
        max_documents: int | None = None,
        repeat: bool = True,
        tokenize_batch: int = 64,
        pin_memory: bool = False,
        encoder: str = "tokenizer",
        document_mask: bool = True,
        long_docs: dict[str, Any] | None = None,
        partitions: int | None = None,
        reorder_on_resume: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        if tokenizer is None:
            raise ConfigError("data: pass tokenizer=... to instantiate the datamodule")
        if batch_size < 1 or num_workers < 0 or val_documents < 0:
            raise ConfigError(
                f"data: need batch_size >= 1, num_workers >= 0, val_documents >= 0 "
                f"(got {batch_size}, {num_workers}, {val_documents})"
            )
        if val_tokens is not None and val_tokens < 1:
            raise ConfigError(f"data.val_tokens must be >= 1 or null (no token bound), got {val_tokens}")
        if max_documents is not None and max_documents <= val_documents:
            raise ConfigError(f"data.max_documents={max_documents} leaves nothing after val_documents={val_documents}")
        if encoder not in ("tokenizer", "tiktoken"):
            raise ConfigError(f"data.encoder: {encoder!r}; choose tokenizer or tiktoken (Qwen2.5's vocabulary only)")
        if encoder == "tiktoken":  # same ids as Qwen2.5's tokenizer, faster (kiwi.data.qwen_tokenizer)
            from kiwi.data.qwen_tokenizer import TiktokenEncoder

            tokenizer = TiktokenEncoder(tokenizer)
        self.tokenizer = tokenizer
        self.source = build_source(text_field=text_field, on_error=on_error, **dict(source))
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.num_workers = num_workers
        self.val_documents = val_documents
        self.val_tokens = val_tokens
        self.val_seq_len = val_seq_len or seq_len
        self.val_batch_size = val_batch_size or batch_size
        self.max_documents = max_documents
        self.repeat = repeat
        self.tokenize_batch = tokenize_batch
        self.pin_memory = pin_memory
        if not isinstance(document_mask, bool):
            raise ConfigError(f"data.document_mask must be true or false, got {document_mask!r}")
        self.document_mask = document_mask
        self.long_docs = LongDocPlan.check(long_docs)  # the plan itself is measured on the data in _build
        self.partitions = check_partitions(partitions, repeat)  # None: the per-stream order (layout-dependent)
        if not isinstance(reorder_on_resume, bool):
            raise ConfigError(f"data.reorder_on_resume must be true or false, got {reorder_on_resume!r}")
        self.reorder_on_resume = reorder_on_resume
        self.train_dataset: PackedDataset | None = None
        self.val_dataset: PackedDataset | None = None
        self._pending_state: dict[str, Any] | None = None
        self._checked: str | None = None  # "held_out" or "train": how much of the source check_documents saw

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return dist_rank_world()

    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self._build()
        self._check(train=stage in (None, "fit"))

    def _check(self, train: bool) -> None:
        """Fail fast on empty or exhausted data (see ``check_documents``), once per kind; the same answer on
        every rank, so all ranks stop together. Evaluation (``validate``) only needs the held-out set."""
        if self._checked == "train" or (self._checked == "held_out" and not train):
            return
        _, world = self._rank_world()
        if train and self.partitions is not None:
            check_layout(self.partitions, world, self.num_workers)
        if train and not self.repeat and world > 1:
            raise ConfigError(
                f"data.repeat=false with {world} training processes: each rank's pass ends when its own "
                "documents run out, at different steps, and the others would wait for it forever. Use "
                "data.repeat=true (the default; the token budget or trainer.max_steps ends the run) or one process."
            )
        check_documents(
            self.source, self.val_documents, self.max_documents, n_streams=world * max(1, self.num_workers),
            world_size=world, train=train, partitions=self.partitions,
        )
        self._checked = "train" if train else "held_out"

    def _build(self) -> None:
        self.source.prepare()
        rank, world = self._rank_world()
        common = {"source": self.source, "tokenizer": self.tokenizer, "tokenize_batch": self.tokenize_batch,
                  "document_mask": self.document_mask}
        self.train_dataset = PackedDataset(
            seq_len=self.seq_len,
            rank=rank,
            world_size=world,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            first_document=self.val_documents,
            end_document=self.max_documents,
            repeat=self.repeat,
            emit_state=True,
            partitions=self.partitions,
            batch_rows=self.batch_size,
            **common,
        )
        if self.long_docs is not None:
            lengths = self.train_dataset.document_lengths(self.long_docs["sample_documents"])
            self.train_dataset.long_docs = LongDocPlan.measure(lengths, self.long_docs)
        if self.val_documents:
            self.val_dataset = PackedDataset(
                seq_len=self.val_seq_len, rank=0, world_size=1, end_document=self.val_documents, resume=False,
                max_tokens=self.val_tokens, **common,
            )
        if self._pending_state is not None:
            self._load_into_dataset(self._pending_state)
            self._pending_state = None

    def _loader(self, dataset: PackedDataset, batch_size: int, num_workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )

    def train_dataloader(self) -> AccumulationGroups:
        """Training batches, each with ``group_label_tokens`` (see ``kiwi.data.accumulation``)."""
        self.setup("fit")
        return AccumulationGroups(self._loader(self.train_dataset, self.batch_size, self.num_workers),
                                  self._accumulate_grad_batches)

    def _accumulate_grad_batches(self) -> int:
        trainer = self.trainer
        return int(trainer.accumulate_grad_batches) if trainer is not None else 1

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.val_batch_size, num_workers=0)  # one stream: see the docstring

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record where the consumed training rows came from and drop the tag from the batch."""
        if isinstance(batch, dict) and STATE_KEY in batch:
            batch = dict(batch)
            tags = batch.pop(STATE_KEY)
            if self.train_dataset is not None:
                self.train_dataset.record(tags)
        return batch

    def _rows_per_step(self) -> int:
        """The global batch in rows (micro-batch x processes x accumulation): part of the elastic order."""
        _, world = self._rank_world()
        return self.batch_size * world * self._accumulate_grad_batches()

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream positions (collective when distributed: all ranks must call it, as
        Lightning's checkpoint dump does)."""
        if self.train_dataset is None:
            return dict(self._pending_state or {})
        local = self.train_dataset.state_dict()
        _, world = self._rank_world()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * world
            torch.distributed.all_gather_object(states, local)
        else:
            states = [local]
        if self.partitions is not None:  # each rank advanced the partitions it trained on
            positions, next_batch = merge_positions(states)
            return {**local, "positions": {p: list(v) for p, v in positions.items()}, "next_batch": next_batch,
                    "rows_per_step": self._rows_per_step(), "accumulate": self._accumulate_grad_batches()}
        merged = dict(local)
        merged["positions"], merged["last_stream"] = {}, {}
        n_streams = next((s["n_streams"] for s in states if s["n_streams"] is not None), None)
        merged["n_streams"] = n_streams
        per_rank = (n_streams // world) if n_streams else None
        for owner, state in enumerate(states):
            for stream, pos in state["positions"].items():
                if per_rank is None or stream // per_rank == owner or len(states) == 1:
                    merged["positions"][stream] = pos
            if owner in state["last_stream"]:
                merged["last_stream"][owner] = state["last_stream"][owner]
        for state in states:  # positions of ranks that did not report (e.g. restored but not yet stepped)
            for stream, pos in state["positions"].items():
                merged["positions"].setdefault(stream, pos)
            for owner, last in state["last_stream"].items():
                merged["last_stream"].setdefault(owner, last)
        return merged

    def _load_into_dataset(self, state: dict[str, Any]) -> None:
        if self.partitions is not None and state.get("partitions") == self.partitions:
            state = self._same_global_batch(state)
        self.train_dataset.load_state_dict(state)

    def _same_global_batch(self, state: dict[str, Any]) -> dict[str, Any]:
        """The elastic order resumes on any layout only with the checkpoint's global batch and micro-batch
        (steps are cut from the micro-batch sequence by them); ``data.reorder_on_resume`` keeps every
        partition's position (each document still once per epoch) and re-deals the micro-batches from there."""
        rows = self._rows_per_step()
        saved_rows = state.get("rows_per_step", rows)
        saved_batch = state.get("batch_rows")
        if rows == saved_rows and saved_batch == self.batch_size:
            if state.get("next_batch", 0) % (rows // self.batch_size):
                raise ConfigError(f"data state: the checkpoint is at micro-batch {state['next_batch']}, not at an "
                                  f"optimizer step of {rows // self.batch_size} micro-batches; resume from a step "
                                  "checkpoint (ModelCheckpoint or a signal's save)")
            return state
        if not self.reorder_on_resume:
            _, world = self._rank_world()
            need = saved_rows / (self.batch_size * world)
            fix = (f"trainer.accumulate_grad_batches={int(need)}" if need == int(need) and saved_batch ==
                   self.batch_size else f"data.batch_size={saved_batch} and a matching trainer.accumulate_grad_batches")
            raise ConfigError(
                f"data state: the checkpoint trained {saved_rows} rows per step in micro-batches of {saved_batch}, "
                f"this run has {rows} in micro-batches of {self.batch_size} ({self.batch_size} x {world} processes x "
                f"{self._accumulate_grad_batches()} accumulation); set {fix} to resume exactly, or "
                "data.reorder_on_resume=true to go on with another order (every document still once per epoch)")
        log.warning("data.reorder_on_resume: the checkpoint's global batch was %s rows in micro-batches of %s, now "
                    "%s in micro-batches of %s; every partition goes on from its position, the order differs from "
                    "here on", saved_rows, saved_batch, rows, self.batch_size)
        return {**state, "batch_rows": self.batch_size, "next_batch": 0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.train_dataset is None:
            self._pending_state = dict(state_dict)
        else:
            self._load_into_dataset(state_dict)
