"""Source file formats: names -> format and compression, opening, and raw record streams.

Kept apart from ``sources.py`` (listing, shard planning, id rules) so that each format's
reader is one small generator. A reader yields ``(derived_ids, columns)`` pairs of at most
``batch_rows`` rows: ``columns`` maps every requested name to a list (``None`` where a record
lacks the key); ``sources.read_shard`` turns them into ``ShardRows`` and checks ids and texts.

Every failure to open, decompress or parse bytes becomes ``SourceReadError`` naming the
file, so one bad file fails its own shard with a message a user can act on.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import fsspec
import fsspec.compression
import pyarrow.parquet as pq

from embedfleet.errors import (
    ConfigError,
    EmbedfleetError,
    MissingDependencyError,
    SourceReadError,
)

COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
EXTENSION_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".md": "text",
}
HEAD_BYTES = 64 * 1024  # head sample for line-length estimates: small, one ranged read
READ_BLOCK = 1 << 20  # bytes per read while streaming lines
BOM = b"\xef\xbb\xbf"

RawBatch = tuple[list[str], dict[str, list[Any]]]


def split_compression(name: str) -> tuple[str, str | None]:
    """``"a.jsonl.gz"`` -> ``("a.jsonl", "gzip")``; names without a known suffix pass through."""
    for suffix, compression in COMPRESSION_SUFFIXES.items():
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], compression
    return name, None


def infer_format(name: str, explicit: str | None) -> str:
    """The format of one file: ``explicit`` when given, else from the extension."""
    if explicit is not None:
        return explicit
    stem = split_compression(name)[0].lower()
    for extension, fmt in EXTENSION_FORMATS.items():
        if stem.endswith(extension):
            return fmt
    raise ConfigError(
        f"cannot infer the format of {name} from its extension; set source.format "
        f"(one of parquet, jsonl, csv, text, text_file)"
    )


def delimiter_for(name: str) -> str:
    """Tab for ``.tsv`` files (compressed or not), comma otherwise."""
    return "\t" if split_compression(name)[0].lower().endswith(".tsv") else ","


def require_codec(compression: str | None, uri: str) -> None:
    """Fail early with an install hint: fsspec only knows zstd when a zstd module imports."""
    if compression is not None and compression not in fsspec.compression.compr:
        raise MissingDependencyError(
            f"reading {uri} needs {compression} support: pip install zstandard"
        )


@contextmanager
def open_stream(uri: str, storage_options: dict[str, Any], compression: str | None) -> Iterator[IO]:
    """A binary stream of ``uri`` (decompressed); open failures name the file."""
    require_codec(compression, uri)
    try:
        handle = fsspec.open(uri, "rb", compression=compression, **storage_options).open()
    except EmbedfleetError:
        raise
    except Exception as exc:  # any fsspec backend: FileNotFoundError, PermissionError, HTTP ...
        raise SourceReadError(f"cannot open {uri}: {exc}") from exc
    try:
        yield handle
    finally:
        handle.close()


def read_block(handle: IO, size: int, uri: str) -> bytes:
    """``handle.read(size)`` with backend and codec errors mapped to ``SourceReadError``.

    Broad on purpose: gzip raises OSError or EOFError, zstandard its own ZstdError, remote
    filesystems their own types; all mean the same thing to a user: this file is unreadable.
    """
    try:
        return handle.read(size)
    except Exception as exc:
        raise SourceReadError(f"cannot read {uri}: {exc}") from exc


def read_head(handle: IO, uri: str, size: int = HEAD_BYTES) -> bytes:
    """Up to ``size`` bytes from the stream's start (decompressed streams may return less)."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        block = read_block(handle, remaining, uri)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


def iter_lines(
    handle: IO, uri: str, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, index, line)`` for each line whose first byte lies in ``[start, end)``.

    A line starts at 0 or right after ``\\n``. For ``start > 0`` we seek to ``start - 1`` and
    drop the line holding that byte: it belongs to the previous range (when that byte is
    ``\\n`` the dropped piece is empty and the first line kept starts at ``start``). The line
    straddling ``end`` is read to its end; nothing after it is. ``index`` counts lines from
    the stream's start and is only meaningful when ``start == 0``. Terminators (``\\n``,
    ``\\r\\n``) are removed.
    """
    skip = start > 0
    offset = start - 1 if skip else 0
    if skip:
        handle.seek(offset)
    index = 0
    partial: list[bytes] = []
    while True:
        block = read_block(handle, READ_BLOCK, uri)
        if block and b"\n" not in block:
            partial.append(block)
            continue
        pieces = (b"".join(partial) + block).split(b"\n")
        partial = [pieces.pop()]
        for piece in pieces:
            if skip:
                skip = False
            elif end is not None and offset >= end:
                return
            else:
                yield offset, index, piece.removesuffix(b"\r")
                index += 1
            offset += len(piece) + 1
        if not block or (not skip and end is not None and offset >= end):
            break
    last = partial[0] if partial else b""
    if last and not skip and (end is None or offset < end):
        yield offset, index, last.removesuffix(b"\r")


def average_line_bytes(sample: bytes, complete: bool) -> float | None:
    """Mean bytes per line in a head sample (``complete``: the sample is the whole stream).

    An incomplete sample without a newline means lines longer than the sample: its length is
    a lower bound, good enough to size shards.
    """
    newlines = sample.count(b"\n")
    if complete:
        lines = newlines + (1 if sample and not sample.endswith(b"\n") else 0)
        return len(sample) / lines if lines else None
    if newlines == 0:
        return float(len(sample)) or None
    return (sample.rfind(b"\n") + 1) / newlines


def parquet_footer(uri: str, storage_options: dict[str, Any]) -> pq.FileMetaData | None:
    """The footer of a Parquet file, or ``None`` when it cannot be read (planned as a whole-file
    shard that fails at read time, naming the file, while the rest of the job runs)."""
    try:
        with open_stream(uri, storage_options, None) as handle:
            return pq.ParquetFile(handle).metadata
    except Exception:
        return None


def first_record_columns(
    uri: str, fmt: str, storage_options: dict[str, Any], compression: str | None
) -> list[str] | None:
    """Keys of the first JSONL record or the CSV header; ``None`` if none can be read."""
    try:
        with open_stream(uri, storage_options, compression) as handle:
            if fmt == "csv":
                return next(_csv_rows(handle, uri), None)
            for offset, _, raw in iter_lines(handle, uri):
                if raw.strip():
                    record = json.loads(raw.removeprefix(BOM) if offset == 0 else raw)
                    return list(record) if isinstance(record, dict) else None
    except (EmbedfleetError, ValueError):
        return None
    return None


def missing_columns_error(uri: str, missing: Sequence[str], found: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"{uri}: column(s) {', '.join(map(repr, missing))} not found; "
        f"columns found: {', '.join(map(repr, found)) or '(none)'}"
    )


def line_batches(
    uri: str,
    storage_options: dict[str, Any],
    compression: str | None,
    relative_path: str,
    fmt: str,
    span: tuple[int, int | None],
    names: Sequence[str],
    batch_rows: int,
) -> Iterator[RawBatch]:
    """JSONL records or text lines of one byte range (or the whole stream, ``end=None``).

    Whole streams (compressed files) derive ids from the line index, ranges from the byte
    offset. JSONL skips blank lines (they are not records); text keeps every line.
    """
    start, end = span
    by_index = end is None

    def records() -> Iterator[tuple[str, list[Any]]]:
        for offset, index, raw in iter_lines(handle, uri, start, end):
            raw = raw.removeprefix(BOM) if offset == 0 else raw
            where = f"line {index}" if by_index else f"byte offset {offset}"
            if fmt == "text":
                record = {names[0]: _decode(raw, uri, where)}
            elif not raw.strip():
                continue
            else:
                record = _json_object(raw, uri, where)
            id_ = f"{relative_path}#{index}" if by_index else f"{relative_path}@{offset}"
            yield id_, [record.get(name) for name in names]

    with open_stream(uri, storage_options, compression) as handle:
        yield from _in_batches(records(), names, batch_rows)


def csv_batches(
    uri: str,
    storage_options: dict[str, Any],
    compression: str | None,
    relative_path: str,
    names: Sequence[str],
    batch_rows: int,
) -> Iterator[RawBatch]:
    """CSV/TSV records as strings; ids ``path#record_index`` (0-based, header excluded).

    Blank rows are skipped; a short row gives ``None`` for its missing fields.
    """
    with open_stream(uri, storage_options, compression) as handle:
        rows = _csv_rows(handle, uri)
        header = next(rows, None)
        if header is None:
            return
        missing = [name for name in names if name not in header]
        if missing:
            raise missing_columns_error(uri, missing, header)
        positions = [header.index(name) for name in names]
        records = (
            (
                f"{relative_path}#{record_index}",
                [row[position] if position < len(row) else None for position in positions],
            )
            for record_index, row in enumerate(row for row in rows if row)
        )
        yield from _in_batches(records, names, batch_rows)


def _in_batches(
    records: Iterable[tuple[str, list[Any]]], names: Sequence[str], batch_rows: int
) -> Iterator[RawBatch]:
    """Group (id, values in ``names`` order) pairs into batches of ``batch_rows``."""
    ids: list[str] = []
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for id_, values in records:
        ids.append(id_)
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
        if len(ids) == batch_rows:
            yield ids, columns
            ids, columns = [], {name: [] for name in names}
    if ids:
        yield ids, columns


def parquet_batches(
    uri: str,
    storage_options: dict[str, Any],
    relative_path: str,
    row_groups: range | None,
    first_row: int,
    names: Sequence[str],
    batch_rows: int,
) -> Iterator[RawBatch]:
    """The shard's row groups (all for ``None``), only the needed columns, ``batch_rows`` at a
    time; ids ``path#row_index_in_file``."""
    with open_stream(uri, storage_options, None) as handle:
        try:
            parquet = pq.ParquetFile(handle)
            found = parquet.schema_arrow.names
        except Exception as exc:
            raise SourceReadError(f"cannot open Parquet file {uri}: {exc}") from exc
        missing = [name for name in names if name not in found]
        if missing:
            raise missing_columns_error(uri, missing, found)
        groups = row_groups if row_groups is not None else range(parquet.num_row_groups)
        batches = parquet.iter_batches(
            batch_size=batch_rows, row_groups=list(groups), columns=list(names)
        )
        row = first_row
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                raise SourceReadError(f"cannot read Parquet file {uri}: {exc}") from exc
            ids = [f"{relative_path}#{row + i}" for i in range(batch.num_rows)]
            row += batch.num_rows
            yield ids, {name: batch.column(name).to_pylist() for name in names}


def text_file_batches(
    uri: str,
    storage_options: dict[str, Any],
    compression: str | None,
    relative_path: str,
    text_column: str,
) -> Iterator[RawBatch]:
    """One document: the whole file, UTF-8 (a leading BOM dropped); its id is the path."""
    with open_stream(uri, storage_options, compression) as handle:
        blocks = iter(lambda: read_block(handle, READ_BLOCK, uri), b"")
        data = b"".join(blocks).removeprefix(BOM)
    yield [relative_path], {text_column: [_decode(data, uri, "content")]}


def _csv_rows(handle: IO, uri: str) -> Iterator[list[str]]:
    """Parsed CSV rows with decode and parse errors naming the file.

    csv's default field limit (128 KiB) is below real documents; raising it process-wide
    only lets larger fields parse.
    """
    if csv.field_size_limit() < sys.maxsize // 2:
        csv.field_size_limit(sys.maxsize // 2)
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter_for(uri))
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                raise SourceReadError(
                    f"cannot parse CSV {uri} near line {reader.line_num}: {exc}"
                ) from exc
            except SourceReadError:
                raise
            except Exception as exc:  # decompression or backend errors, as in read_block
                raise SourceReadError(f"cannot read {uri}: {exc}") from exc
            yield row
    finally:
        text.detach()  # the caller's context closes the binary stream


def _decode(raw: bytes, uri: str, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceReadError(f"invalid UTF-8 at {where} of {uri}: {exc}") from exc


def _json_object(raw: bytes, uri: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for invalid UTF-8
        raise SourceReadError(f"invalid JSON at {where} of {uri}: {exc}") from exc
    if not isinstance(record, dict):
        raise SourceReadError(f"{where} of {uri} is a JSON {type(record).__name__}, not an object")
    return record
