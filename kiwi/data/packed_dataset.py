"""``PackedDataset``: a document stream split across ranks and workers, shuffled, tokenized and packed.

Two orders. With ``partitions`` (``data.partitions``, the default config) the rows are the elastic order of
``kiwi.data.partitions``: each partition is packed like one stream below, and the layout only decides which
reader reads which partitions. With ``partitions=None`` the order is the per-stream one described here,
a function of the layout.

Splitting: with ``W`` dataloader workers and ``world_size`` ranks there are ``world_size * W`` streams;
stream ``rank * W + local`` gets the records whose global index is congruent to it (see
``kiwi.data.sources``), so every document is read, tokenized and yielded exactly once per epoch.

Resume: a stream's position is ``(epoch, doc, offset)``: the next row starts at token ``offset`` of
document ``doc`` of that epoch's shuffled order. The shuffle order is a function of the seed and the
record count only, so a restore replays reading and shuffling (no tokenization) up to ``doc``. Rows are
yielded by workers, so the process that consumes them learns positions from the rows themselves:
with ``emit_state=True`` every row carries ``stream_state = [stream, n_streams, epoch, doc, offset]``
(the position after that row), which the consumer passes to ``record``. Without it, positions are
tracked where the iteration runs (fine for ``num_workers=0``).

A ``DataLoader`` with ``W`` workers hands out batches from workers 0, 1, ..., W-1 in turn. A restored
dataset rotates the worker-to-stream mapping so the stream after the last consumed one comes first,
which makes the resumed batch sequence identical to the uninterrupted one.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kiwi.data.document_check import usable
from kiwi.data.long_docs import LongDocPlan
from kiwi.data.packing import buffer_shuffle, pack_documents
from kiwi.data.partitions import EpochDemux, PartitionEncoder, check_layout, check_partitions, reader_class
from kiwi.data.sources import DocumentSource, FileSource, Selection, SourceStats
from kiwi.errors import ConfigError, DataError, worker_message

log = logging.getLogger(__name__)

STATE_KEY = "stream_state"
# An epoch that data.long_docs subsampling empties is skipped (a small partition can lose every short
# document at random); this many in a row mean the plan keeps (almost) nothing, which is an error.
MAX_EMPTIED_EPOCHS = 100
# Epochs between a reader's slowest and fastest partition past which it says that memory grows with them.
DRIFT_WARNING_EPOCHS = 8


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def as_source(source: Any) -> DocumentSource:
    """Accept a ready source, or a file path / glob / list of them (read as ``FileSource``). In-memory
    texts go through ``TextListSource`` explicitly, so a list of strings is never ambiguous."""
    if isinstance(source, DocumentSource):
        return source
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        return FileSource(str(source))
    if isinstance(source, list | tuple) and all(isinstance(s, str) or hasattr(s, "__fspath__") for s in source):
        return FileSource([str(s) for s in source])
    raise TypeError(f"PackedDataset: cannot read documents from a {type(source).__name__}")


def unwrap_worker_error(error: DataError) -> DataError:
    """The original error of a dataloader worker: torch re-raises it in the main process with the worker's
    whole traceback as its message, which would bury the one line that names the file and line."""
    message = worker_message(error)
    return error if message is None else DataError(message)


def cut_tokens(docs: Iterator[np.ndarray], max_tokens: int) -> Iterator[np.ndarray]:
    """The documents' tokens up to ``max_tokens`` in total: the document that crosses the limit is cut
    there, later ones are not read (so the cost of a held-out set does not depend on document length)."""
    left = max_tokens
    for tokens in docs:
        if left <= 0:
            return
        yield tokens[:left]
        left -= len(tokens)


def _counted(pairs: Iterator, read: list[int]) -> Iterator:
    """``pairs`` unchanged, counting them into ``read[0]`` (what an epoch read, whether or not it packed)."""
    for pair in pairs:
        read[0] += 1
        yield pair


class PackedDataset(IterableDataset):
    """Packed rows of ``seq_len`` tokens: dicts of 1-D LongTensors ``input_ids``, ``position_ids``, ``labels``
    (conventions in ``kiwi.data.packing``).

    Records with global index in ``[first_document, end_document)`` are used (the datamodule holds out
    the first ``val_documents`` this way). ``repeat=True`` cycles epochs forever (reshuffled per epoch);
    otherwise one iteration is one epoch, continuing from the current position. ``max_tokens`` cuts each
    pass after that many document tokens (a held-out set bounded in tokens; needs ``resume=False``).
    A stream with no document in a whole epoch raises ``DataError`` rather than yield empty epochs forever.
    """

    def __init__(
        self,
        source: Any,
        tokenizer: Any,
        seq_len: int = 32768,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        first_document: int = 0,
        end_document: int | None = None,
        repeat: bool = False,
        resume: bool = True,
        emit_state: bool = False,
        tokenize_batch: int = 64,
        max_tokens: int | None = None,
        document_mask: bool = True,
        long_docs: LongDocPlan | None = None,
        partitions: int | None = None,
        batch_rows: int = 1,
    ) -> None:
        super().__init__()
        dist_rank, dist_world = dist_rank_world()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"PackedDataset: rank {self.rank} is not in [0, world_size={self.world_size})")
        if seq_len < 1:
            raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("PackedDataset: the tokenizer has no eos_token_id (needed to separate documents)")
        self.source = as_source(source)
        self.tokenizer = tokenizer
        self.eos_id = int(eos)
        self.seq_len = int(seq_len)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.first_document = int(first_document)
        self.end_document = end_document
        self.repeat = repeat
        # False: every pass starts at the first row (a held-out set scored the same way each time).
        self.resume = resume
        self.emit_state = emit_state
        self.tokenize_batch = int(tokenize_batch)
        if max_tokens is not None and (max_tokens < 1 or resume or repeat):
            raise ValueError(
                f"PackedDataset: max_tokens={max_tokens} needs max_tokens >= 1, resume=False and repeat=False "
                "(it bounds a held-out set, which is read from its start each time)"
            )
        self.max_tokens = max_tokens
        self.document_mask = bool(document_mask)  # False: one causal sequence per row (kiwi.data.packing)
        self.long_docs = long_docs  # None: every document once per epoch (kiwi.data.long_docs)
        # None: the per-stream order (a function of the layout); else the elastic order of kiwi.data.partitions,
        # whose micro-batches are ``batch_rows`` rows of one partition.
        self.partitions = check_partitions(partitions, repeat)
        self.batch_rows = int(batch_rows)
        if self.batch_rows < 1:
            raise ValueError(f"PackedDataset: batch_rows={batch_rows} must be >= 1 (the rows of one micro-batch)")
        self.next_batch = 0  # elastic order: the global micro-batch the next consumed one is
        self.stats = SourceStats()
        self.upsampled: Counter = Counter()  # long_doc_copies, short_docs_dropped (this process's streams)
        # Resume state (see module docstring); positions are keyed by global stream id.
        self.n_streams: int | None = None
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.last_stream: dict[int, int] = {}

    # ----------------------------------------------------------------------------------------- state

    def record(self, stream_state: torch.Tensor) -> None:
        """Note the position after rows that were actually consumed (``[B, 5]`` or ``[5]`` tags; ``[B, 6]``
        in the elastic order: ``[partition, partitions, epoch, doc, offset, micro-batch]``)."""
        if self.partitions is not None:
            for part, parts, epoch, doc, offset, batch in stream_state.reshape(-1, 6).tolist():
                if parts != self.partitions:
                    raise RuntimeError(f"PackedDataset.record: rows of {parts} partitions, expected {self.partitions}")
                self.positions[part] = (epoch, doc, offset)
                self.next_batch = max(self.next_batch, batch + 1)
            return
        tags = stream_state.reshape(-1, 5).tolist()
        for stream, n_streams, epoch, doc, offset in tags:
            if self.n_streams not in (None, n_streams):
                raise RuntimeError(f"PackedDataset.record: rows from {n_streams} streams, expected {self.n_streams}")
            self.n_streams = n_streams
            self.positions[stream] = (epoch, doc, offset)
            self.last_stream[stream * self.world_size // n_streams] = stream

    def state_dict(self) -> dict[str, Any]:
        common = {"seq_len": self.seq_len, "seed": self.seed, "shuffle_buffer": self.shuffle_buffer,
                  "long_docs": None if self.long_docs is None else self.long_docs.as_dict(),
                  "positions": {int(k): list(v) for k, v in self.positions.items()}}
        if self.partitions is not None:  # no layout in it: any layout that fits resumes it
            return {**common, "partitions": self.partitions, "batch_rows": self.batch_rows,
                    "next_batch": self.next_batch}
        return {**common, "world_size": self.world_size, "n_streams": self.n_streams,
                "last_stream": {int(k): int(v) for k, v in self.last_stream.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("partitions")
        if saved != self.partitions:
            if saved is None:
                raise ConfigError(
                    f"data state: the checkpoint has the per-stream data order of kiwi before data.partitions "
                    f"({state.get('world_size')} processes, {state.get('n_streams')} streams); resume it with "
                    "data.partitions=null on that layout")
            raise ConfigError(
                f"data state: the checkpoint has data.partitions={saved}, this run has {self.partitions}; the "
                f"stream cannot be resumed exactly (use data.partitions={saved})")
        keys = ("seq_len", "seed", "shuffle_buffer") + (("batch_rows",) if saved else ("world_size",))
        names = {"batch_rows": "batch_size", "world_size": "world size"}
        for key in keys:
            if state.get(key) != getattr(self, key):
                raise ConfigError(
                    f"data state: checkpoint has {names.get(key, key)}={state.get(key)}, this run has "
                    f"{getattr(self, key)}; the stream cannot be resumed exactly (use the same data settings"
                    + (")" if saved else " and world size)"))
        plan = None if self.long_docs is None else self.long_docs.as_dict()
        if state.get("long_docs") != plan:
            raise ConfigError(
                f"data state: checkpoint has data.long_docs plan {state.get('long_docs')}, this run has {plan}; "
                "the stream cannot be resumed exactly (use the checkpoint's data.long_docs and training data)"
            )
        self.positions = {int(k): tuple(v) for k, v in state.get("positions", {}).items()}
        if saved:
            self.next_batch = int(state.get("next_batch", 0))
            return
        self.n_streams = state.get("n_streams")
        self.last_stream = {int(k): int(v) for k, v in state.get("last_stream", {}).items()}
    # ------------------------------------------------------------------------------------- iteration

    def _stream_of_this_worker(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        n_streams = self.world_size * workers
        if self.n_streams is not None and self.n_streams != n_streams:
            raise ValueError(
                f"data state: saved with {self.n_streams} streams (world_size x num_workers), this run has "
                f"{n_streams} ({self.world_size} x {workers}); use the same num_workers to resume"
            )
        last = self.last_stream.get(self.rank)
        rotation = 0 if last is None else (last - self.rank * workers + 1) % workers
        return self.rank * workers + (worker + rotation) % workers, n_streams

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        eos = [self.eos_id]
        return [np.array(x + eos, dtype=np.int64) for x in ids]

    def _documents(self, selection: Selection) -> Iterator[tuple[int, str]]:
        """(global index, text) of the selection's usable documents, in source order."""
        for index, text in self.source.records(selection, self.stats):
            if text is None:
                continue  # a bad record skipped under on_error=skip (already counted)
            if not usable(text):
                self.stats.add("empty_documents")
                continue
            yield index, text

    def _selection(self, stream: int, n_streams: int) -> Selection:
        return Selection(stream, n_streams, start=self.first_document, stop=self.end_document)

    def document_lengths(self, limit: int) -> list[int]:
        """Token counts (EOS included) of the first ``limit`` usable documents of the whole selection, in
        source order: the same on every rank and worker (the sample ``data.long_docs`` is measured on)."""
        stats, self.stats = self.stats, SourceStats()  # a sample, not training: skips are counted when trained
        try:
            texts = (text for _, text in itertools.islice(self._documents(self._selection(0, 1)), limit))
            return [len(tokens) for tokens in self._tokenized(texts)]
        finally:
            self.stats = stats

    def _tokenized(self, texts: Iterator[str]) -> Iterator[np.ndarray]:
        while batch := list(itertools.islice(texts, self.tokenize_batch)):
            yield from self._encode(batch)

    def _upsampled(self, pairs: Iterator[tuple[int, str]], stream: int, epoch: int, buffer: int,
                   tokenize) -> Iterator[np.ndarray]:
        """Each document as many times as the plan gives it, shuffled again so copies are spread apart."""
        def expanded():
            indexed, texts = itertools.tee(pairs)
            for (index, _), tokens in zip(indexed, tokenize(text for _, text in texts), strict=True):
                copies = self.long_docs.copies(len(tokens), self.seed, epoch, index)
                if copies != 1:
                    self.upsampled["long_doc_copies" if copies > 1 else "short_docs_dropped"] += abs(copies - 1)
                yield from [tokens] * copies

        rng = random.Random(f"kiwi-long-docs:{self.seed}:{epoch}:{stream}")
        return buffer_shuffle(expanded(), buffer, rng)

    def _epoch_rows(self, stream: int, epoch: int, doc: int, offset: int, documents: Iterator[tuple[int, str]],
                    buffer: int, tokenize):
        """Rows of one epoch of one stream (or partition): its ``documents`` shuffled by its own seeded rng,
        packed from ``(doc, offset)`` on; ``tokenize`` maps texts to token arrays."""
        rng = random.Random(f"kiwi-data:{self.seed}:{epoch}:{stream}")
        pairs = buffer_shuffle(documents, buffer, rng)
        if self.long_docs is None:
            texts = itertools.islice((text for _, text in pairs), doc, None)  # replay: no tokenization
            docs = tokenize(texts)
        else:  # copies depend on lengths, so a replay tokenizes the documents it skips
            docs = itertools.islice(self._upsampled(pairs, stream, epoch, buffer, tokenize), doc, None)
        if self.max_tokens is not None:
            docs = cut_tokens(docs, self.max_tokens)
        yield from pack_documents(docs, self.seq_len, self.eos_id, doc=doc, offset=offset,
                                  document_mask=self.document_mask)

    def _rows_with_positions(self, stream: int, epoch: int, doc: int, offset: int,
                             documents: Iterator[tuple[int, str]], buffer: int, tokenize):
        """Rows of one epoch with the position after each; the last row points at the next epoch (one row
        of lookahead), so a finished epoch is never replayed."""
        pending = None
        for row, next_doc, next_offset in self._epoch_rows(stream, epoch, doc, offset, documents, buffer, tokenize):
            if pending is not None:
                yield pending
            pending = (row, (epoch, next_doc, next_offset))
        if pending is not None:
            yield pending[0], (epoch + 1, 0, 0)

    def _pass_epoch(self, n_streams: int) -> int:
        """The data epoch of the pass (one iteration) now starting, with ``repeat=False``: the earliest epoch
        among this rank's streams. A stream already past it finished this pass before a checkpoint and must
        stay silent until the next pass, as it would have without the interruption."""
        per_rank = n_streams // self.world_size
        own = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        return min(self.positions.get(s, (0, 0, 0))[0] for s in own)

    def _no_documents(self, stream: int, n_streams: int, emptied: int = 0) -> DataError:
        skipped = f" (skipped: {dict(self.stats.counts)})" if self.stats.counts else ""
        if emptied:
            what = (f"partition {stream} of data.partitions={n_streams}" if self.partitions is not None
                    else f"stream {stream} of {n_streams}")
            return DataError(
                f"data: {self.source.describe()}: data.long_docs dropped every document of {what} in {emptied} "
                f"epochs in a row (so far: {dict(self.upsampled)}); lower data.long_docs.target_share, or use fewer "
                "data.partitions")
        if self.partitions is not None:
            return DataError(
                f"data: {self.source.describe()}: partition {stream} of data.partitions={n_streams} has no "
                f"documents{skipped}; check the source is not empty, that data.val_documents leaves documents "
                "to train on, and use fewer data.partitions than training documents")
        workers = n_streams // self.world_size
        return DataError(
            f"data: {self.source.describe()}: stream {stream} of {n_streams} (rank {stream // workers}, worker "
            f"{stream % workers}) has no documents{skipped}; check the source is not empty, that "
            "data.val_documents leaves documents to train on, and use fewer devices or data.num_workers"
        )

    def _log_epoch(self, stream: int, n_streams: int, epoch: int) -> None:
        if self.stats.counts:
            log.info("data stream %d/%d: skipped %s", stream, n_streams, dict(self.stats.counts))
        if self.long_docs is not None:
            log.info("data stream %d/%d after epoch %d: data.long_docs so far %s", stream, n_streams, epoch,
                     dict(self.upsampled))

    def _stream_epochs(self, stream: int, n_streams: int, documents, buffer: int, tokenize=None):
        """(row, position after it) of one stream or partition from its saved position on, epoch after
        epoch (one epoch unless ``repeat``); ``documents(epoch)`` gives the epoch's (index, text) pairs."""
        tokenize = tokenize or self._tokenized
        epoch, doc, offset = self.positions.get(stream, (0, 0, 0))
        emptied = 0  # epochs in a row that data.long_docs subsampling left without a document
        while True:
            fresh, produced, read = doc == 0 and offset == 0, 0, [0]
            pairs = _counted(documents(epoch), read)
            if self.partitions is None:
                rows = self._rows_with_positions(stream, epoch, doc, offset, pairs, buffer, tokenize)
            else:  # no row of lookahead: it would pack a row ahead in every partition a reader holds
                rows = ((row, (epoch, d, o)) for row, d, o in
                        self._epoch_rows(stream, epoch, doc, offset, pairs, buffer, tokenize))
            for row, position in rows:
                produced += 1
                yield row, position
            if fresh and produced == 0:  # an empty epoch would repeat forever (or end every pass at once)
                dropped_all = read[0] > 0 and self.long_docs is not None  # the plan emptied it, not the data
                emptied = emptied + 1 if dropped_all else MAX_EMPTIED_EPOCHS
                if emptied >= MAX_EMPTIED_EPOCHS:
                    raise self._no_documents(stream, n_streams, emptied if dropped_all else 0)
            else:
                emptied = 0
            self._log_epoch(stream, n_streams, epoch)
            epoch, doc, offset = epoch + 1, 0, 0
            if not self.repeat:
                return

    def _sample(self, row: dict[str, np.ndarray], tag: list[int] | None) -> dict[str, torch.Tensor]:
        sample = {k: torch.from_numpy(v) for k, v in row.items()}
        if tag is not None:
            sample[STATE_KEY] = torch.tensor(tag, dtype=torch.long)
        return sample

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.partitions is not None:
            yield from self._partitioned()
            return
        stream, n_streams = self._stream_of_this_worker()
        if not self.resume:
            self.positions.clear()
            self.last_stream.clear()
        if self.max_tokens is not None and n_streams > 1:
            raise ValueError(
                f"PackedDataset: max_tokens is a bound on the whole set, read by one stream; this one has {n_streams} "
                "(load it with num_workers=0 and world_size=1)"
            )
        epoch = self.positions.get(stream, (0, 0, 0))[0]
        if not self.repeat and epoch > self._pass_epoch(n_streams):
            return
        selection = self._selection(stream, n_streams)
        rows = self._stream_epochs(stream, n_streams, lambda _: self._documents(selection), self.shuffle_buffer)
        for row, position in rows:
            if self.emit_state:
                yield self._sample(row, [stream, n_streams, *position])
                continue
            self.n_streams = n_streams
            self.positions[stream] = position
            yield self._sample(row, None)

    def _partitioned(self) -> Iterator[dict[str, torch.Tensor]]:
        """This reader's micro-batches of the elastic order (kiwi.data.partitions): global micro-batch ``u``
        is the next ``batch_rows`` rows of partition ``u % partitions``, and this reader (rank + world x
        worker) takes every ``readers``-th one from the saved ``next_batch`` on."""
        if not self.resume:
            self.positions.clear()
            self.next_batch = 0
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (0, 0)
        parts = self.partitions
        readers = check_layout(parts, self.world_size, workers)
        slot = self.rank + self.world_size * worker
        owned = list(range(reader_class(self.next_batch, slot, readers), parts, readers))
        selection = self._selection(owned[0], readers)  # its documents: index % partitions in owned
        buffer = -(-self.shuffle_buffer // parts)  # data.shuffle_buffer documents in total over the partitions
        demuxes: dict[int, EpochDemux] = {}
        current = {p: self.positions.get(p, (0, 0, 0))[0] for p in owned}

        def documents(part: int):
            def of_epoch(epoch: int):
                current[part] = epoch
                for old in [e for e in demuxes if e < min(current.values())]:
                    del demuxes[old]  # every partition of this reader is past that epoch
                if epoch not in demuxes:
                    demuxes[epoch] = EpochDemux(self._documents(selection), parts, owned)
                    if len(demuxes) == DRIFT_WARNING_EPOCHS:
                        log.warning("data.partitions=%d: this reader's partitions are %d epochs apart (they get "
                                    "equal micro-batches but hold unequal tokens), and it holds the documents "
                                    "read ahead for each; on a corpus this small use fewer data.partitions",
                                    parts, len(demuxes))
                return demuxes[epoch].documents(part)
            return of_epoch

        encoder = PartitionEncoder(self._encode, self.tokenize_batch, owned, self.batch_rows * self.seq_len)
        streams = {p: self._stream_epochs(p, parts, documents(p), buffer, partial(encoder.tokenized, p))
                   for p in owned}
        batch = self.next_batch + slot
        while True:
            part = batch % parts
            encoder.visit(part)
            for _ in range(self.batch_rows):
                row, position = next(streams[part])
                if self.emit_state:
                    yield self._sample(row, [part, parts, *position, batch])
                    continue
                self.positions[part] = position
                yield self._sample(row, None)
            if not self.emit_state:
                self.next_batch = batch + 1
            batch += readers
