"""Where documents come from: local files, the offline docstring corpus, or a Hugging Face hub stream.

Every source numbers its records in one fixed global order and hands each (rank, worker) stream the
records whose index is congruent to the stream id. That keeps "every document exactly once" true for any
world size and worker count, whatever the number of files or hub shards (``split_dataset_by_node`` only
splits by shard when the shard count divides the world size). Each stream only parses its own records,
so a bad record is reported once, by the stream that owns it, with its file and line or row (1-based,
as an editor shows them).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import logging
import lzma
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kiwi.data.wikitext import wikitext_page_lines
from kiwi.errors import DataError

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
FORMATS = ("jsonl", "json", "txt", "parquet")
SAMPLE_BY = ("line", "paragraph", "document", "wikitext")


@dataclass
class Selection:
    """Which records of the global order one stream keeps: ``index % n_streams == stream`` and
    ``start <= index < stop``."""

    stream: int = 0
    n_streams: int = 1
    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.stream < self.n_streams:
            raise ValueError(f"stream {self.stream} is not in [0, {self.n_streams})")

    def wants(self, index: int) -> bool:
        return index >= self.start and index % self.n_streams == self.stream

    def done(self, index: int) -> bool:
        return self.stop is not None and index >= self.stop


@dataclass
class SourceStats:
    """Counts of what was not turned into a document, so nothing disappears silently."""

    counts: Counter = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")


def _handle(error: DataError, on_error: str, stats: SourceStats) -> None:
    if on_error == "raise":
        raise error
    stats.add("bad_records")
    log.warning("skipping bad record: %s", error)


class DocumentSource:
    """Base class: ``records(selection, stats)`` yields ``(global_index, text)`` for the selected records.

    ``text`` is ``None`` for a bad record skipped under ``on_error=skip`` (its index is still used up, so
    the global numbering never depends on content).
    """

    on_error: str = "raise"

    def prepare(self) -> None:
        """Build anything that must exist on disk before workers start (called once per process)."""

    def records(self, selection: Selection, stats: SourceStats) -> Iterator[tuple[int, str | None]]:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def resolve_files(files: str | Sequence[str]) -> list[Path]:
    """Expand globs in order; a pattern that matches nothing or a missing file is an error naming it."""
    patterns = [files] if isinstance(files, str | Path) else list(files)
    if not patterns:
        raise DataError("data.source.files: no files given")
    out: list[Path] = []
    for pattern in patterns:
        pattern = str(Path(pattern).expanduser())
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise DataError(f"data.source.files: pattern {pattern!r} matches no files")
            out.extend(Path(m) for m in matches)
        else:
            path = Path(pattern)
            if not path.is_file():
                raise DataError(f"data.source.files: file not found: {path}")
            out.append(path)
    return out


# Compressed files are read through the same readers, decompressed on the fly (e.g. the ``wikimedia/wikipedia``
# style ``train-00.jsonl.gz`` shards); the format comes from the suffix before the compression suffix.
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError, lzma.LZMAError)


def open_bytes(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed if its suffix is ``.gz``, ``.bz2`` or ``.xz``."""
    opener = _COMPRESSED.get(path.suffix.lower())
    return opener(path, "rb") if opener is not None else path.open("rb")


def _decompress_error(path: Path, exc: Exception, where: str = "") -> DataError:
    return DataError(
        f"{path}{where}: cannot decompress ({exc}); the file is corrupt or truncated, download or compress it again"
    )


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, raw line)`` of a plain or compressed file; a corrupt or truncated compressed
    file is a ``DataError`` naming the file and the line where reading stopped."""
    line_no = 0
    try:
        with open_bytes(path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                yield line_no, raw
    except _DECOMPRESS_ERRORS as exc:
        if path.suffix.lower() not in _COMPRESSED:
            raise
        raise _decompress_error(path, exc, f":{line_no + 1}") from exc


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    for suffix in reversed(suffixes):
        name = suffix.lstrip(".")
        if name in FORMATS:
            return name
        if name == "ndjson":
            return "jsonl"
        if name in ("text", "raw"):
            return "txt"
    raise DataError(f"{path}: cannot tell the format from the file name; set data.source.format to one of {FORMATS}")


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{line_no}: line is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _encodable(text: str, where: str) -> str:
    """``text`` if it is valid Unicode; a lone surrogate (valid JSON ``"\\ud83d"``) is a ``DataError`` here,
    where the record's file and line are known, so that no encoder sees it (the HF tokenizers backend raises
    a ``TypeError`` that names nothing, tiktoken silently encodes U+FFFD)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{where}: text is not encodable as UTF-8 (lone surrogate U+{ord(text[exc.start]):04X} "
            f"at character {exc.start + 1})"
        ) from exc
    return text


def _field(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is a {type(record).__name__}, expected a JSON object")
    if text_field not in record:
        raise DataError(f"{where}: record has no field {text_field!r} (fields: {sorted(record)[:10]})")
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} is a {type(value).__name__}, expected a string")
    return _encodable(value, f"{where}: field {text_field!r}")


class FileSource(DocumentSource):
    """Local ``jsonl``/``json``/``txt``/``parquet`` files, read with our own readers so that every error
    names its file and line (or row).

    Records: a non-blank line of a JSON-lines file; an element of a top-level JSON array; a row of a
    parquet file; for text files ``sample_by`` picks a non-blank line, a blank-line separated paragraph,
    the whole file, or a WikiText article (split at top-level `` = Title = `` headings).
    """

    def __init__(
        self,
        files: str | Sequence[str],
        text_field: str = "text",
        format: str = "auto",
        sample_by: str = "line",
        on_error: str = "raise",
    ) -> None:
        _check_on_error(on_error)
        if sample_by not in SAMPLE_BY:
            raise ValueError(f"data.source.sample_by must be one of {SAMPLE_BY}, got {sample_by!r}")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"data.source.format must be 'auto' or one of {FORMATS}, got {format!r}")
        self.files = resolve_files(files)
        self.formats = [detect_format(p) if format == "auto" else format for p in self.files]
        self.text_field = text_field
        self.sample_by = sample_by
        self.on_error = on_error

    def describe(self) -> str:
        more = f" and {len(self.files) - 3} more files" if len(self.files) > 3 else ""
        return ", ".join(str(p) for p in self.files[:3]) + more

    def records(self, selection: Selection, stats: SourceStats) -> Iterator[tuple[int, str | None]]:
        index = 0
        for path, fmt in zip(self.files, self.formats, strict=True):
            if not path.is_file():
                raise DataError(f"data.source.files: file not found: {path}")
            reader = {"jsonl": self._jsonl, "json": self._json, "txt": self._txt, "parquet": self._parquet}[fmt]
            items = reader(path, index, selection, stats)
            while True:
                try:
                    item = next(items)
                except StopIteration:  # pragma: no cover - every reader ends with its record count
                    raise AssertionError("reader did not report its record count") from None
                except _DECOMPRESS_ERRORS as exc:
                    if path.suffix.lower() not in _COMPRESSED:
                        raise
                    raise _decompress_error(path, exc) from exc
                if isinstance(item, int):  # a reader reports how many records the file held
                    index = item
                    break
                if selection.done(item[0]):
                    items.close()
                    return
                yield item

    # Each reader yields (index, text|None) for selected records and finally the next free index (int).

    def _parse(self, make_text: Callable[[], str], stats: SourceStats) -> str | None:
        try:
            return make_text()
        except DataError as error:
            _handle(error, self.on_error, stats)
            return None

    def _jsonl(self, path: Path, index: int, selection: Selection, stats: SourceStats):
        lines = read_lines(path)
        for line_no, raw in lines:
            if not raw.strip():
                continue
            if selection.done(index):
                break
            if selection.wants(index):

                def make(raw=raw, line_no=line_no) -> str:
                    where = f"{path}:{line_no}"
                    try:
                        record = json.loads(_decode(raw, path, line_no))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
                    return _field(record, self.text_field, where)

                yield index, self._parse(make, stats)
            index += 1
        lines.close()
        yield index

    def _json(self, path: Path, index: int, selection: Selection, stats: SourceStats):
        with open_bytes(path) as fh:
            head = fh.read(64).lstrip()
        if not head.startswith(b"["):  # JSON lines saved as .json, like HF's json loader accepts
            yield from self._jsonl(path, index, selection, stats)
            return
        try:
            records = json.loads(_decode(b"".join(raw for _, raw in read_lines(path)), path, 1))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        for i, record in enumerate(records):
            if selection.done(index):
                break
            if selection.wants(index):
                yield (
                    index,
                    self._parse(lambda r=record, i=i: _field(r, self.text_field, f"{path}: record {i + 1}"), stats),
                )
            index += 1
        yield index

    def _parquet(self, path: Path, index: int, selection: Selection, stats: SourceStats):
        import pyarrow.parquet as pq

        if path.suffix.lower() in _COMPRESSED:
            raise DataError(f"{path}: a compressed parquet file; parquet compresses internally, decompress it first")
        try:
            pfile = pq.ParquetFile(path)
        except Exception as exc:
            raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
        if self.text_field not in pfile.schema_arrow.names:
            raise DataError(f"{path}: no column {self.text_field!r} (columns: {pfile.schema_arrow.names[:10]})")
        file_start = index
        for batch in pfile.iter_batches(batch_size=1024, columns=[self.text_field]):
            for value in batch.column(0).to_pylist():
                if selection.done(index):
                    yield index
                    return
                if selection.wants(index):

                    def make(value=value, row=index - file_start + 1) -> str:
                        if not isinstance(value, str):
                            raise DataError(
                                f"{path}: row {row}: column {self.text_field!r} is a "
                                f"{type(value).__name__}, expected a string"
                            )
                        return _encodable(value, f"{path}: row {row}: column {self.text_field!r}")

                    yield index, self._parse(make, stats)
                index += 1
        yield index

    def _txt(self, path: Path, index: int, selection: Selection, stats: SourceStats):
        for first_line, lines in self._txt_documents(path):
            if selection.done(index):
                break
            if selection.wants(index):

                def make(lines=lines, first_line=first_line) -> str:
                    return "".join(_decode(raw, path, first_line + k) for k, raw in enumerate(lines)).strip("\n")

                yield index, self._parse(make, stats)
            index += 1
        yield index

    def _txt_documents(self, path: Path) -> Iterator[tuple[int, list[bytes]]]:
        """(first line number, raw lines) per document; splitting works on bytes so that an undecodable
        line is reported (or skipped) with the document that owns it."""
        with open_bytes(path) as fh:
            if self.sample_by == "document":
                lines = fh.readlines()
                if lines:
                    yield 1, lines
                return
            if self.sample_by == "wikitext":  # articles, grouped as lm-eval's wikitext pages are
                decode = lambda raw: raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
                for first, lines in wikitext_page_lines(fh, decode):
                    yield first + 1, lines
                return
            current: list[bytes] = []
            start = 1
            for line_no, raw in enumerate(fh, start=1):
                if self.sample_by == "line":
                    if raw.strip():
                        yield line_no, [raw.rstrip(b"\r\n")]
                    continue
                if self.sample_by == "paragraph":
                    if raw.strip():
                        if not current:
                            start = line_no
                        current.append(raw)
                    elif current:
                        yield start, current
                        current = []
                    continue
            if any(r.strip() for r in current):
                yield start, current


class CorpusSource(FileSource):
    """The offline docstring corpus (``kiwi.data.corpus``), built on first use and read as JSON lines."""

    def __init__(
        self, packages: Sequence[str], cache_dir: str, text_field: str = "text", on_error: str = "raise"
    ) -> None:
        _check_on_error(on_error)
        self.packages = list(packages)
        self.cache_dir = cache_dir
        self.text_field = text_field
        self.sample_by = "line"
        self.on_error = on_error
        self.files: list[Path] = []
        self.formats: list[str] = []

    def prepare(self) -> None:
        from kiwi.data.corpus import build_corpus_file

        if not self.files:
            self.files = [build_corpus_file(self.cache_dir, self.packages)]
            self.formats = ["jsonl"]

    def records(self, selection: Selection, stats: SourceStats) -> Iterator[tuple[int, str | None]]:
        self.prepare()
        yield from super().records(selection, stats)

    def describe(self) -> str:
        return f"docstring corpus {self.packages}"


def load_hub_stream(path: str, name: str | None, split: str, revision: str | None = None):
    """The one place that contacts the Hugging Face hub: a streaming ``IterableDataset``."""
    import datasets

    from kiwi.errors import HubError
    from kiwi.hub import check_hub

    why = check_hub(path)  # one reachability check; unreachable -> offline, so no retries below
    try:
        return datasets.load_dataset(path, name, split=split, streaming=True, revision=revision)
    except OSError as err:  # ConnectionError and file errors: the dataset could not be fetched
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubError(f"data.source: cannot stream hub dataset {path!r} ({name}, {split}): {why or first}; "
                       "offline: data=corpus (the offline docstring corpus) or "
                       "data=local data.source.files=[path/*.jsonl]") from err


class HubSource(DocumentSource):
    """A streamed hub dataset (e.g. ``wikimedia/wikipedia`` ``20231101.en``), read in its own order.

    Iterated with ``IterableDataset.iter`` rather than ``__iter__``: inside a DataLoader worker ``__iter__``
    would shard by worker on its own, and we already split by (rank, worker). Every stream reads the
    stream (text column only) and keeps its own rows.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        revision: str | None = None,
        on_error: str = "raise",
        loader: Callable[..., Any] | None = None,
    ) -> None:
        _check_on_error(on_error)
        self.path, self.name, self.split, self.revision = path, name, split, revision
        self.text_field = text_field
        self.on_error = on_error
        self.loader = loader or load_hub_stream

    def describe(self) -> str:
        return f"hub {self.path} {self.name} [{self.split}]"

    def records(self, selection: Selection, stats: SourceStats) -> Iterator[tuple[int, str | None]]:
        ds = self.loader(self.path, self.name, self.split, self.revision)
        if ds.column_names is not None and self.text_field not in ds.column_names:
            raise DataError(f"{self.describe()}: no column {self.text_field!r} (columns: {ds.column_names})")
        ds = ds.select_columns([self.text_field])
        index = 0
        for batch in ds.iter(batch_size=256):
            for value in batch[self.text_field]:
                if selection.done(index):
                    return
                if selection.wants(index):
                    yield index, _text_or_none(value, f"{self.describe()}: row {index + 1}: column "
                                               f"{self.text_field!r}", self.on_error, stats)
                index += 1


def _text_or_none(value: Any, where: str, on_error: str, stats: SourceStats) -> str | None:
    """The value if it is a string; otherwise raise (or, with on_error=skip, count it) naming ``where``."""
    try:
        if isinstance(value, str):
            return _encodable(value, where)
        raise DataError(f"{where} is a {type(value).__name__}, expected a string")
    except DataError as error:
        _handle(error, on_error, stats)
        return None


def build_source(kind: str, text_field: str = "text", on_error: str = "raise", **kwargs: Any) -> DocumentSource:
    """Turn the ``data.source`` config block into a source."""
    kinds = {"files": FileSource, "corpus": CorpusSource, "hub": HubSource}
    if kind not in kinds:
        raise ValueError(f"data.source.kind must be one of {sorted(kinds)}, got {kind!r}")
    try:
        return kinds[kind](text_field=text_field, on_error=on_error, **kwargs)
    except TypeError as exc:
        raise ValueError(f"data.source (kind={kind}): {exc}") from exc


class TextListSource(DocumentSource):
    """Documents held in memory (tests, small experiments); record ``i`` is ``texts[i]``."""

    def __init__(self, texts: Sequence[str], on_error: str = "raise") -> None:
        _check_on_error(on_error)
        self.texts = list(texts)
        self.on_error = on_error

    def describe(self) -> str:
        return f"{len(self.texts)} in-memory texts"

    def records(self, selection: Selection, stats: SourceStats) -> Iterator[tuple[int, str | None]]:
        for index, value in enumerate(self.texts):
            if selection.done(index):
                return
            if selection.wants(index):
                yield index, _text_or_none(value, f"text list: texts[{index}]", self.on_error, stats)
