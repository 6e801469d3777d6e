"""``check_documents``: refuse empty or exhausted data before anything trains on it.

Reads only records (no tokenizer, no torch), so train.py runs it before any model or logger starts, and
the datamodule runs it again at setup for sources built in code.
"""

from __future__ import annotations

from kiwi.data.sources import DocumentSource, Selection, SourceStats
from kiwi.errors import DataError


def usable(text: str | None) -> bool:
    """A record that becomes a document: not skipped as bad (``None``) and not blank."""
    return text is not None and bool(text.strip())


def check_documents(
    source: DocumentSource,
    held_out: int,
    end: int | None = None,
    n_streams: int = 1,
    world_size: int = 1,
    train: bool = True,
    partitions: int | None = None,
) -> None:
    """Fail fast, naming the source and the reason, instead of training on nothing (an endless loop of
    empty epochs, or a rank that waits forever on the others): an empty source, every record skipped,
    ``data.val_documents`` >= the number of documents, or a stream (rank x worker) with no training document.

    Reads records in order only until every stream has one training document, so on real data it costs
    ``held_out + n_streams`` records; it reads everything only when something is wrong. ``train=False``
    checks just the held-out set (evaluation). With ``partitions`` (the elastic order) every partition needs
    a document, whatever the layout."""
    if not train and not held_out:
        return
    if partitions is not None:
        n_streams = partitions
    stats = SourceStats()
    n_records, n_held_out, covered = 0, 0, set()
    for index, text in source.records(Selection(stop=end), stats):
        n_records = index + 1
        if usable(text):
            if index < held_out:
                n_held_out += 1
            else:
                covered.add(index % n_streams)
        elif text is not None:
            stats.add("empty_documents")
        if (n_held_out or not held_out) and (not train or len(covered) == n_streams):
            return
    what = source.describe()
    skipped = f" (not usable: {dict(stats.counts)})" if stats.counts else ""
    if n_records == 0:
        raise DataError(f"data: {what} holds no documents (empty file?); point data.source at a non-empty corpus")
    if held_out and not n_held_out:
        raise DataError(
            f"data: {what}: none of the {min(n_records, held_out)} held-out records (data.val_documents="
            f"{held_out}) is a usable document{skipped}; fix the data or set data.on_error=raise to see why"
        )
    if not train:
        return
    if n_records <= held_out:
        raise DataError(
            f"data: {what} holds {n_records} documents and data.val_documents={held_out} holds out the first "
            f"{held_out}: nothing is left to train on; lower data.val_documents or add data"
        )
    n_train = n_records - held_out
    if not covered:
        raise DataError(
            f"data: {what}: none of the {n_train} training records is a usable document{skipped}; fix the data "
            "(data.on_error=raise names the first bad record)"
        )
    missing = min(set(range(n_streams)) - covered)
    if partitions is not None:
        raise DataError(
            f"data: {what}: {n_train} training records for data.partitions={partitions}; partition {missing} would "
            f"get no training document{skipped} (partition p trains the documents whose index % data.partitions = p); "
            f"set data.partitions to one that leaves none empty (the training records cover {len(covered)} of "
            f"{partitions} now; a multiple of processes x data.num_workers), or add data")
    workers = n_streams // world_size
    raise DataError(
        f"data: {what}: {n_train} training records for {n_streams} streams ({world_size} ranks x {workers} "
        f"dataloader workers); rank {missing // workers} worker {missing % workers} would get no training "
        f"document{skipped}; use fewer devices or data.num_workers, or more data"
    )
