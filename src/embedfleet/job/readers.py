"""Each source format's record reader: a small generator over one shard.

A reader yields :class:`RawBatch` es of at most ``batch_rows`` records: the parsed
ones (derived id, a value per requested name, ``records.MISSING`` where a record
lacks the key, and where the record is) and the ones that cannot be parsed
(``records.BadRecord``: invalid JSON or UTF-8, a CSV row with the wrong number of
fields); ``sources.read_shard`` turns them into ``ShardRows``. One bad record never
fails a shard; a file that cannot be opened, decompressed or parsed as a whole
raises ``SourceReadError`` naming it. Each reader opens its file itself, or reads
the file's bytes when they were fetched already (``data``: the pieces of a packed
shard on an object store are fetched a few at a time, ahead of reading).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow.parquet as pq

from embedfleet.errors import EmbedfleetError, SourceReadError
from embedfleet.job.formats import (
    BOM,
    HEAD_BYTES,
    READ_BLOCK,
    delimiter_for,
    iter_lines,
    missing_columns_error,
    open_source,
    read_block,
)
from embedfleet.job.records import (
    MISSING,
    BadRecord,
    RecordProblem,
    Where,
    check_csv_row,
    decode_utf8,
    parse_json_line,
)

SAMPLE_RECORDS = 100  # records whose keys are the columns the plan checks names against


@dataclass
class RawBatch:
    """Up to ``batch_rows`` records of a shard, parsed ones and bad ones apart."""

    ids: list[str]  # derived ids of the parsed records
    columns: dict[str, list[Any]]  # requested name -> a value per parsed record
    wheres: list[Where]  # where each parsed record is
    bad: list[BadRecord] = field(default_factory=list)  # records that could not be parsed


ParsedRecord = tuple[str, list[Any], Where]


def head_columns(head: bytes, fmt: str, uri: str) -> list[str] | None:
    """The CSV header, or the keys found in the first JSONL records of ``head`` (the
    start of a file, decompressed: up to ``SAMPLE_RECORDS`` whole lines; one record
    without a key is a bad record, not a misspelt column); ``None`` if none is found."""
    if fmt not in ("csv", "jsonl"):
        return None
    handle = io.BytesIO(head)
    if fmt == "csv":
        try:
            header = next(_csv_rows(handle, uri), None)
        except EmbedfleetError:
            return None
        return header[0] if header is not None else None
    found: dict[str, None] = {}
    lines = head.split(b"\n")
    if len(head) >= HEAD_BYTES:
        lines.pop()  # cut off at the end of the head: maybe not the whole line
    records = 0
    for raw in lines:
        if records >= SAMPLE_RECORDS:
            break
        if raw.strip():
            records += 1
            try:
                found.update(dict.fromkeys(parse_json_line(raw.removeprefix(BOM))))
            except RecordProblem:
                continue
    return list(found) or None


def line_batches(
    uri: str,
    storage_options: dict[str, Any],
    compression: str | None,
    relative_path: str,
    fmt: str,
    span: tuple[int, int | None],
    names: Sequence[str],
    batch_rows: int,
    data: bytes | None = None,
) -> Iterator[RawBatch]:
    """JSONL records or text lines of one byte range (or the whole stream, ``end=None``).

    Whole streams (compressed files) derive ids from the line index, ranges from the byte
    offset. JSONL skips blank lines (they are not records); text keeps every line. A
    range from byte 0 knows its lines' numbers in the file; a later one knows their byte
    offsets and their lines within the range.
    """
    start, end = span
    by_index = end is None

    def records() -> Iterator[ParsedRecord | BadRecord]:
        for offset, index, raw in iter_lines(handle, uri, start, end):
            raw = raw.removeprefix(BOM) if offset == 0 else raw
            if fmt == "jsonl" and not raw.strip():
                continue
            id_ = f"{relative_path}#{index}" if by_index else f"{relative_path}@{offset}"
            if start == 0:
                where = Where(line=index + 1, byte_offset=None if compression else offset)
            else:
                where = Where(byte_offset=offset, line_in_shard=index + 1)
            try:
                record = {names[0]: decode_utf8(raw)} if fmt == "text" else parse_json_line(raw)
            except RecordProblem as problem:
                yield BadRecord(id_, problem.kind, problem.reason, where)
                continue
            yield id_, [record.get(name, MISSING) for name in names], where

    with open_source(uri, storage_options, compression, data) as handle:
        yield from _in_batches(records(), names, batch_rows)


def csv_batches(
    uri: str,
    storage_options: dict[str, Any],
    compression: str | None,
    relative_path: str,
    names: Sequence[str],
    batch_rows: int,
    data: bytes | None = None,
) -> Iterator[RawBatch]:
    """CSV/TSV records as strings; ids ``path#record_index`` (0-based, header excluded).

    Blank rows are skipped; a row with more or fewer fields than the header, or with bytes
    that are not UTF-8, is a bad record (it keeps its record index, so the others' ids
    do not move).
    """
    with open_source(uri, storage_options, compression, data) as handle:
        rows = _csv_rows(handle, uri)
        first = next(rows, None)
        if first is None:
            return
        header = first[0]
        missing = [name for name in names if name not in header]
        if missing:
            raise missing_columns_error(uri, missing, header)
        positions = [header.index(name) for name in names]

        def records() -> Iterator[ParsedRecord | BadRecord]:
            for record_index, (row, line) in enumerate(item for item in rows if item[0]):
                id_, where = f"{relative_path}#{record_index}", Where(line=line, row=record_index)
                try:
                    check_csv_row(row, header)
                except RecordProblem as problem:
                    yield BadRecord(id_, problem.kind, problem.reason, where)
                    continue
                yield id_, [row[position] for position in positions], where

        yield from _in_batches(records(), names, batch_rows)


def _in_batches(
    records: Iterable[ParsedRecord | BadRecord], names: Sequence[str], batch_rows: int
) -> Iterator[RawBatch]:
    """Group parsed and bad records into batches of ``batch_rows`` records."""
    batch = RawBatch([], {name: [] for name in names}, [])
    for item in records:
        if isinstance(item, BadRecord):
            batch.bad.append(item)
        else:
            id_, values, where = item
            batch.ids.append(id_)
            batch.wheres.append(where)
            for name, value in zip(names, values, strict=True):
                batch.columns[name].append(value)
        if len(batch.ids) + len(batch.bad) == batch_rows:
            yield batch
            batch = RawBatch([], {name: [] for name in names}, [])
    if batch.ids or batch.bad:
        yield batch


def parquet_batches(
    uri: str,
    storage_options: dict[str, Any],
    relative_path: str,
    row_groups: range | None,
    first_row: int,
    names: Sequence[str],
    batch_rows: int,
    data: bytes | None = None,
) -> Iterator[RawBatch]:
    """The shard's row groups (all for ``None``), only the needed columns, ``batch_rows`` at a
    time; ids ``path#row_index_in_file``."""
    with open_source(uri, storage_options, None, data) as handle:
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
            wheres = [Where(row=row + i) for i in range(batch.num_rows)]
            row += batch.num_rows
            yield RawBatch(ids, {name: batch.column(name).to_pylist() for name in names}, wheres)


def text_file_batches(
    uri: str,
    storage_options: dict[str, Any],
    compression: str | None,
    relative_path: str,
    text_column: str,
    data: bytes | None = None,
) -> Iterator[RawBatch]:
    """One document: the whole file, UTF-8 (a leading BOM dropped); its id is the path."""
    with open_source(uri, storage_options, compression, data) as handle:
        blocks = iter(lambda: read_block(handle, READ_BLOCK, uri), b"")
        content = b"".join(blocks).removeprefix(BOM)
    try:
        text = decode_utf8(content)
    except RecordProblem as problem:
        yield RawBatch(
            [],
            {text_column: []},
            [],
            [BadRecord(relative_path, problem.kind, problem.reason, Where())],
        )
        return
    yield RawBatch([relative_path], {text_column: [text]}, [Where()])


def _csv_rows(handle: IO, uri: str) -> Iterator[tuple[list[str], int]]:
    """Parsed CSV rows, each with its first line's number (1-based), with parse errors
    naming the file. Bytes that are not UTF-8 are kept as lone surrogates
    (``surrogateescape``) for ``records.check_csv_row`` to reject their row alone.

    csv's default field limit (128 KiB) is below real documents; raising it process-wide
    only lets larger fields parse.
    """
    if csv.field_size_limit() < sys.maxsize // 2:
        csv.field_size_limit(sys.maxsize // 2)
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter_for(uri))
    try:
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise SourceReadError(
                    f"cannot parse CSV {uri} near line {reader.line_num}: {exc}"
                ) from exc
            except SourceReadError:
                raise
            except Exception as exc:  # decompression or backend errors, as in read_block
                raise SourceReadError(f"cannot read {uri}: {exc}") from exc
            yield row, line
    finally:
        text.detach()  # the caller's context closes the binary stream
