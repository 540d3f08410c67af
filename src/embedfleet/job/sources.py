"""Job sources: the files behind an fsspec URL, cut into deterministic shards, streamed back.

``plan(source, rows_per_shard)`` lists the files (``listing.py``) and cuts them into
shards (``shard_planner.py``) from the listing, a bounded sample and the metadata of
large files; ``read_shard(shard, source)`` streams one shard's rows in bounded batches.

Why shards look the way they do (``shards.py``: a shard is a list of pieces):

- Small files are packed: a shard holds whole files adding up to about
  ``rows_per_shard`` rows, so part files have about that many rows whatever the file
  layout, with boundaries chosen from the paths' hashes (``packing.py``): adding,
  removing or changing a file changes only the shards around it.
- A shard id hashes only its pieces' ``(relative path, unit, range)``. A large file's
  shards are one piece each and keep the ids they always had.
- Parquet shards of large files are runs of whole row groups (about ``rows_per_shard``
  rows, never more unless one group is bigger), planned from the footer alone.
- Large uncompressed JSONL and text files are cut into byte ranges; range
  ``[start, end)`` owns every line whose first byte lies in it. The range size is
  ``rows_per_shard`` times the mean line length of a 64 KiB head sample of that same
  file, so no other file influences it.
- Large compressed line files (no seeking into a gzip/zstd stream) and CSV files (a
  quoted field may hold a newline, so a byte offset is not a record boundary) are one
  ``"file"`` shard.
- Empty (0-byte) files give no shards. A compressed or CSV file that holds no records
  gives a piece that yields nothing.
- A sampled Parquet file whose footer cannot be read is planned as one ``"file"`` shard
  with ``estimated_rows=0``: that shard fails when read, naming the file; the others
  complete. A file that cannot be read in a packed shard fails that shard, naming it.

Records that cannot be embedded (``records.py``) are carried apart from the rows, with the
file and where in it they are; ``source.on_bad_record = "error"`` raises
``BadRecordError`` for the first instead.

Row ids: ``source.id_column`` values (str, or int made str), unique within a shard. Without
it they are derived, stable across runs and whether or not a file is packed: Parquet
``{relative_path}#{row index in file}``; uncompressed JSONL/text
``{relative_path}@{byte offset of the line}``; compressed JSONL/text
``{relative_path}#{line index in the decompressed stream}`` (0-based, blank lines counted);
CSV ``{relative_path}#{record index}`` (0-based, header and blank rows excluded); text_file
``{relative_path}``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.utils import get_protocol

from embedfleet.errors import BadRecordError, ConfigError, SourceReadError
from embedfleet.job import formats, readers
from embedfleet.job.listing import Listing, list_source
from embedfleet.job.records import MISSING, BadRecord, RecordProblem, Where, check_id, check_text
from embedfleet.job.shard_planner import SourcePlan, plan_listing, wanted_columns
from embedfleet.job.shards import Piece, Shard, shard_id
from embedfleet.job.spec import SourceSpec
from embedfleet.job.templates import Template

__all__ = [
    "Listing",
    "Piece",
    "Shard",
    "ShardRows",
    "SourcePlan",
    "list_source",
    "plan",
    "plan_listing",
    "read_shard",
    "shard_id",
]

PREFETCH_FILES = 16  # files of a packed shard fetched ahead on a remote filesystem ...
PREFETCH_BYTES = 64 << 20  # ... and at most about this many bytes of them
LOCAL_PROTOCOLS = {"file", "local", "memory"}


@dataclass
class ShardRows:
    """A streamed piece of a shard: the rows to embed (ids, texts, passthrough columns, where
    each is in its file) and the records that cannot be embedded (``rejects``), all of one
    file (``file``, relative to the source root)."""

    ids: list[str]
    texts: list[str]
    columns: dict[str, list[Any]]
    wheres: list[Where] = field(default_factory=list)
    rejects: list[BadRecord] = field(default_factory=list)
    file: str = ""

    @property
    def records(self) -> int:
        """Source records read: rows and rejects."""
        return len(self.ids) + len(self.rejects)


def plan(source: SourceSpec, rows_per_shard: int, *, packed: bool = True) -> list[Shard]:
    """Shards of every file of ``source``, in relative-path order (see the module docstring).

    Column names are checked first (against the sampled files of each format), so a typo
    in ``text_column`` fails before any row is read.
    """
    listing = list_source(source)
    return plan_listing(listing, source, rows_per_shard, packed=packed).shards


def read_shard(shard: Shard, source: SourceSpec, batch_rows: int = 2048) -> Iterator[ShardRows]:
    """Stream the shard's records, file by file, at most ``batch_rows`` at a time, never a
    whole large file.

    Raises ``SourceReadError`` (a file unreadable or corrupt as a whole), ``ConfigError``
    (missing column, an id twice in one file), or, with ``source.on_bad_record =
    "error"``, ``BadRecordError`` for the first bad record; each names the file (and the
    line). An id in two files is found when the run finishes, packed or not.
    """
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
    wanted = wanted_columns(source, {piece.format for piece in shard.pieces})
    strict = source.bad_record_policy == "error"
    for piece, data in _pieces_with_data(shard, source):
        uri = shard.uri_of(piece)
        seen: set[str] = set()
        for batch in _raw_batches(piece, uri, source, wanted, batch_rows, data):
            rows = _shard_rows(uri, shard.shard_id, piece, source, batch, seen)
            if strict and rows.rejects:
                first = min(rows.rejects, key=lambda record: record.where.sort_key())
                raise BadRecordError(
                    f"{uri} {first.where.describe()}: {first.reason} ({first.kind}; "
                    'source.on_bad_record = "error": with "reject" such records go to '
                    "_rejects/ and the rest of the shard is embedded)"
                )
            yield rows


def _pieces_with_data(shard: Shard, source: SourceSpec) -> Iterator[tuple[Piece, bytes | None]]:
    """The shard's pieces in order, each with its bytes where they were fetched ahead: the
    whole small files of a packed shard on a remote filesystem, ``PREFETCH_FILES`` at a time
    (one file after another, each read would wait a round trip)."""
    if not shard.packed or get_protocol(shard.root) in LOCAL_PROTOCOLS:
        for piece in shard.pieces:
            yield piece, None
        return
    fs, _ = fsspec.core.url_to_fs(shard.root, **source.storage_options)
    pieces = iter(shard.pieces)
    ahead: deque[tuple[Piece, Future[bytes]]] = deque()
    with ThreadPoolExecutor(max_workers=PREFETCH_FILES) as pool:
        try:
            while True:
                queued = sum(piece.estimated_bytes for piece, _ in ahead)
                while len(ahead) < PREFETCH_FILES and (not ahead or queued < PREFETCH_BYTES):
                    piece = next(pieces, None)
                    if piece is None:
                        break
                    path = fs._strip_protocol(shard.uri_of(piece))
                    # start=0: one ranged GET (without it s3fs asks for the size first)
                    ahead.append((piece, pool.submit(fs.cat_file, path, start=0)))
                    queued += piece.estimated_bytes
                if not ahead:
                    return
                piece, fetched = ahead.popleft()
                try:
                    data = fetched.result()
                except Exception as exc:
                    raise SourceReadError(f"cannot read {shard.uri_of(piece)}: {exc}") from exc
                yield piece, data
        finally:
            for _, pending in ahead:
                pending.cancel()


def _raw_batches(
    piece: Piece,
    uri: str,
    source: SourceSpec,
    names: list[str],
    batch_rows: int,
    data: bytes | None,
) -> Iterator[readers.RawBatch]:
    compression = formats.split_compression(piece.relative_path)[1]
    options, path = source.storage_options, piece.relative_path
    if piece.format == "parquet":
        groups = None if piece.unit == "file" else range(piece.start, piece.end)
        return readers.parquet_batches(
            uri, options, path, groups, piece.first_row, names, batch_rows, data
        )
    if piece.format == "csv":
        return readers.csv_batches(uri, options, compression, path, names, batch_rows, data)
    if piece.format == "text_file":
        return readers.text_file_batches(uri, options, compression, path, names[0], data)
    span = (piece.start, piece.end) if piece.unit == "bytes" else (0, None)
    return readers.line_batches(
        uri, options, compression, path, piece.format, span, names, batch_rows, data
    )


def _shard_rows(
    uri: str,
    shard: str,
    piece: Piece,
    source: SourceSpec,
    batch: readers.RawBatch,
    seen: set[str],
) -> ShardRows:
    """Rows with a valid id and text; the other records rejected, with their id where it
    can be read (else the derived one). Ids that can be read are checked for duplicates."""
    file = piece.relative_path
    bad = [
        BadRecord(record.id, record.kind, record.reason, record.where, file) for record in batch.bad
    ]
    rows = ShardRows([], [], {name: [] for name in source.columns}, [], bad, file)
    template = Template.parse(source.template) if source.template is not None else None
    texts = batch.columns[source.text_column] if template is None else []
    given = batch.columns[source.id_column] if source.id_column is not None else None
    read_ids: list[str] = []
    for position, derived in enumerate(batch.ids):
        row_id = derived
        try:
            if given is not None:
                row_id = check_id(given[position], source.id_column or "")
                read_ids.append(row_id)
            if template is None:
                text = check_text(texts[position], source.text_column)
            else:  # the text is the template rendered from the record's fields
                fields = {name: batch.columns[name][position] for name in template.fields}
                text = template.render_record(fields)
        except RecordProblem as problem:
            where = batch.wheres[position]
            rows.rejects.append(BadRecord(row_id, problem.kind, problem.reason, where, file))
            continue
        rows.ids.append(row_id)
        rows.texts.append(text)
        rows.wheres.append(batch.wheres[position])
        for name in source.columns:
            value = batch.columns[name][position]
            rows.columns[name].append(None if value is MISSING else value)
    if batch.bad and len(rows.rejects) > len(batch.bad):  # in file order
        rows.rejects.sort(key=lambda record: record.where.sort_key())
    counts = Counter(read_ids)
    duplicates = sorted(value for value, count in counts.items() if count > 1 or value in seen)
    if duplicates:
        shown = ", ".join(map(repr, duplicates[:10]))
        raise ConfigError(
            f"duplicate ids in {uri} (shard {shard}): {shown}"
            + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
        )
    seen.update(read_ids)
    return rows
