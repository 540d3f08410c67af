"""Job sources: the files behind an fsspec URL, cut into deterministic shards, streamed back.

``plan(source, rows_per_shard)`` lists the files and cuts them into shards from metadata
only; ``read_shard(shard, source)`` streams one shard's rows in bounded batches.

Why shards look the way they do:

- A shard id hashes only ``(relative path, unit, range)``: adding, removing or changing one
  file never renames another file's shards, so a resumed or incremental run can trust them.
- Parquet shards are runs of whole row groups (about ``rows_per_shard`` rows, never more
  unless one group is bigger), planned from the footer alone.
- Uncompressed JSONL and text files are cut into byte ranges; range ``[start, end)`` owns
  every line whose first byte lies in it. The range size is ``rows_per_shard`` times the
  mean line length of a 64 KiB head sample of that same file, so no other file influences it.
- Compressed line files (no seeking into a gzip/zstd stream) and CSV files (a quoted field
  may hold a newline, so a byte offset is not a record boundary) are one ``"file"`` shard.
  So is each ``text_file`` (one document per file).
- Empty (0-byte) files and Parquet files without rows give no shards. A compressed or CSV
  file that holds no records gives a shard that yields nothing.
- A Parquet file whose footer cannot be read is planned as one ``"file"`` shard with
  ``estimated_rows=0``: that shard fails when read, naming the file; the others complete.

Records that cannot be embedded (``records.py``) are carried apart from the rows, with where
they are; ``source.on_bad_record = "error"`` raises ``BadRecordError`` for the first instead.

Row ids: ``source.id_column`` values (str, or int made str), unique within a shard. Without
it they are derived, stable across runs: Parquet ``{relative_path}#{row index in file}``;
uncompressed JSONL/text ``{relative_path}@{byte offset of the line}``; compressed JSONL/text
``{relative_path}#{line index in the decompressed stream}`` (0-based, blank lines counted);
CSV ``{relative_path}#{record index}`` (0-based, header and blank rows excluded); text_file
``{relative_path}``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from embedfleet.errors import BadRecordError, ConfigError, MissingDependencyError, SourceReadError
from embedfleet.job import formats, readers
from embedfleet.job.records import MISSING, BadRecord, RecordProblem, Where, check_id, check_text
from embedfleet.job.spec import SourceSpec
from embedfleet.job.templates import Template

GLOB_CHARS = "*?["
COMPRESSED_GROWTH = 4  # rough decompressed/compressed ratio, for estimates only


@dataclass(frozen=True)
class Shard:
    """One unit of work: a row-group run, a byte range, or a whole file of one source file."""

    shard_id: str
    uri: str
    relative_path: str
    format: str
    unit: str  # "rowgroups" | "bytes" | "file"
    start: int
    end: int
    estimated_rows: int
    first_row: int
    estimated_bytes: int = 0  # text bytes, roughly (a token is at least one byte)
    source_version: str = ""  # the file's size and etag/mtime: a commit of another is stale


@dataclass
class ShardRows:
    """A streamed piece of a shard: the rows to embed (ids, texts, passthrough columns, where
    each is in its file) and the records that cannot be embedded (``rejects``)."""

    ids: list[str]
    texts: list[str]
    columns: dict[str, list[Any]]
    wheres: list[Where] = field(default_factory=list)
    rejects: list[BadRecord] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Source records read: rows and rejects."""
        return len(self.ids) + len(self.rejects)


@dataclass(frozen=True)
class _File:
    path: str  # as the filesystem names it
    uri: str
    relative_path: str
    size: int | None
    format: str
    compression: str | None
    version: str = ""


def shard_id(relative_path: str, unit: str, start: int, end: int) -> str:
    return hashlib.sha256(f"{relative_path}|{unit}:{start}-{end}".encode()).hexdigest()[:16]


def plan(source: SourceSpec, rows_per_shard: int) -> list[Shard]:
    """Shards of every file of ``source``, sorted by relative path, from metadata only.

    Column names are checked first (the first readable file of each format), so a typo in
    ``text_column`` fails before any row is read.
    """
    source.check()
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    files = _list_files(source)
    wanted = _wanted_columns(source, {file.format for file in files})
    shards: list[Shard] = []
    checked: set[str] = set()
    for file in files:
        if file.size == 0:
            continue
        if file.format == "parquet":
            footer = formats.parquet_footer(file.uri, source.storage_options)
            if footer is not None and "parquet" not in checked:
                _check_columns(file, footer.schema.to_arrow_schema().names, wanted, checked)
            shards += _parquet_shards(file, footer, rows_per_shard, _text_columns(source))
            continue
        if file.format in ("jsonl", "csv") and file.format not in checked:
            found = readers.first_record_columns(
                file.uri, file.format, source.storage_options, file.compression
            )
            if found is not None:
                _check_columns(file, found, wanted, checked)
        shards += _line_file_shards(file, source, rows_per_shard)
    return shards


def _list_files(source: SourceSpec) -> list[_File]:
    """The files behind ``source.uri`` (a file, a glob or a directory), by relative path.

    Below a directory (or a glob's fixed part), names starting with "." or "_" are skipped
    (``_SUCCESS``, ``.crc``, temp files) unless the glob itself names such a component.
    """
    try:
        fs, path = fsspec.core.url_to_fs(source.uri, **source.storage_options)
    except ImportError as exc:  # e.g. s3fs or gcsfs not installed
        raise MissingDependencyError(f"source.uri {source.uri!r}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"source.uri {source.uri!r}: {exc}") from exc
    cut = min((path.find(char) for char in GLOB_CHARS if char in path), default=-1)
    try:
        if cut >= 0:
            root = path[:cut].rsplit("/", 1)[0] if "/" in path[:cut] else ""
            infos = list(fs.glob(path, detail=True).values())
            pattern = path[len(root) :].split("/")
            skip_hidden = not any(part[:1] in "._" for part in pattern if part)
        else:
            info = fs.info(path)
            if info.get("type") == "directory":
                root = path.rstrip("/")
                infos, skip_hidden = list(fs.find(root, detail=True).values()), True
            else:
                root = path.rsplit("/", 1)[0] if "/" in path else ""
                infos, skip_hidden = [info], False
    except FileNotFoundError:
        infos = []
    except OSError as exc:
        raise SourceReadError(f"cannot list source.uri {source.uri!r}: {exc}") from exc
    files = []
    for info in infos:
        name = info["name"]
        if info.get("type") == "directory":
            continue
        relative = name[len(root) :].lstrip("/") if name.startswith(root) else name
        if not relative or relative.endswith("/"):  # object-store folder markers
            continue
        if skip_hidden and any(part[:1] in "._" for part in relative.split("/")):
            continue
        uri = name if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(name)
        fmt = formats.infer_format(uri, source.format)
        compression = formats.split_compression(name)[1]
        formats.require_codec(compression, uri)
        size = info.get("size")
        files.append(_File(name, uri, relative, size, fmt, compression, _version(info)))
    if not files:
        raise ConfigError(f"no files matched source.uri {source.uri!r}")
    return sorted(files, key=lambda file: file.relative_path)


def read_shard(shard: Shard, source: SourceSpec, batch_rows: int = 2048) -> Iterator[ShardRows]:
    """Stream the shard's records, at most ``batch_rows`` at a time, never the whole file.

    Raises ``SourceReadError`` (file unreadable or corrupt as a whole), ``ConfigError``
    (missing column, duplicate id), or, with ``source.on_bad_record = "error"``,
    ``BadRecordError`` for the first bad record, naming the file and the line.
    """
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
    wanted = _wanted_columns(source, {shard.format})
    seen: set[str] = set()
    strict = source.bad_record_policy == "error"
    for batch in _raw_batches(shard, source, wanted, batch_rows):
        rows = _shard_rows(shard, source, batch, seen)
        if strict and rows.rejects:
            first = min(rows.rejects, key=lambda record: record.where.sort_key())
            raise BadRecordError(
                f"{shard.uri} {first.where.describe()}: {first.reason} ({first.kind}; "
                'source.on_bad_record = "error": with "reject" such records go to _rejects/ '
                "and the rest of the shard is embedded)"
            )
        yield rows


def _wanted_columns(source: SourceSpec, fmts: set[str]) -> list[str]:
    """Text column (or the template's fields) first, then the id column and passthrough
    columns, without repeats."""
    if fmts & {"text", "text_file"} and (source.id_column or source.columns or source.template):
        raise ConfigError(
            "source formats text and text_file have no columns: leave source.id_column, "
            "source.columns and source.template unset (ids are derived from the file path)"
        )
    texts = list(source.template_fields()) or [source.text_column]
    return list(dict.fromkeys([*texts, source.id_column or texts[0], *source.columns]))


def _text_columns(source: SourceSpec) -> set[str]:
    return set(source.template_fields()) or {source.text_column}


def _version(info: dict[str, Any]) -> str:
    """What tells one state of a file from the next: size plus etag, hash or mtime."""
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "updated"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return f"{info.get('size')}"


def _check_columns(file: _File, found: list[str], wanted: list[str], checked: set[str]) -> None:
    missing = [name for name in wanted if name not in found]
    if missing:
        raise formats.missing_columns_error(file.uri, missing, found)
    checked.add(file.format)


def _shard(
    file: _File, unit: str, span: tuple[int, int], rows: int, nbytes: int, first: int = 0
) -> Shard:
    start, end = span
    return Shard(
        shard_id=shard_id(file.relative_path, unit, start, end),
        uri=file.uri,
        relative_path=file.relative_path,
        format=file.format,
        unit=unit,
        start=start,
        end=end,
        estimated_rows=rows,
        first_row=first,
        estimated_bytes=nbytes,
        source_version=file.version,
    )


def _parquet_shards(
    file: _File, footer: Any, rows_per_shard: int, text_columns: set[str]
) -> list[Shard]:
    """Consecutive whole row groups, up to ``rows_per_shard`` rows each."""
    if footer is None:
        return [_shard(file, "file", (0, 1), 0, file.size or 0)]
    shards = []
    start = rows = nbytes = first = position = 0
    for index in range(footer.num_row_groups):
        group = footer.row_group(index)
        if index > start and rows + group.num_rows > rows_per_shard:
            shards.append(_shard(file, "rowgroups", (start, index), rows, nbytes, first))
            start, rows, nbytes, first = index, 0, 0, position
        rows += group.num_rows
        position += group.num_rows
        nbytes += sum(
            group.column(j).total_uncompressed_size
            for j in range(group.num_columns)
            if group.column(j).path_in_schema.split(".")[0] in text_columns
        )
    if rows:
        shards.append(
            _shard(file, "rowgroups", (start, footer.num_row_groups), rows, nbytes, first)
        )
    return shards


def _line_file_shards(file: _File, source: SourceSpec, rows_per_shard: int) -> list[Shard]:
    """Byte ranges for uncompressed JSONL/text of known size; one whole-file shard otherwise."""
    sample, complete = _head_sample(file, source)
    average = formats.average_line_bytes(sample, complete)
    splittable = file.format in ("jsonl", "text") and file.compression is None
    if not (splittable and file.size and average):
        rows, total = _whole_file_estimate(file, sample, complete, average)
        return [_shard(file, "file", (0, 1), rows, total)]
    step = max(1, math.ceil(rows_per_shard * average))
    shards = []
    for start in range(0, file.size, step):
        end = min(start + step, file.size)
        rows = max(1, round((end - start) / average))
        shards.append(_shard(file, "bytes", (start, end), rows, end - start))
    return shards


def _whole_file_estimate(
    file: _File, sample: bytes, complete: bool, average: float | None
) -> tuple[int, int]:
    """(rows, text bytes) of a file read whole: exact when the sample is the whole stream."""
    growth = COMPRESSED_GROWTH if file.compression else 1
    if file.format == "text_file":
        return 1, (file.size or 0) * growth
    total = len(sample) if complete else (file.size or 0) * growth
    rows = round(total / average) if average else 0
    return (max(rows - 1, 0) if file.format == "csv" else rows), total


def _head_sample(file: _File, source: SourceSpec) -> tuple[bytes, bool]:
    """Up to 64 KiB from the (decompressed) start of the file, and whether that is all of it.

    Uncompressed files use one ranged read, whose failure is an I/O error (not corrupt
    content) and fails the plan: planning around it would change the file's shard ids.
    Compressed files are decompressed from the start; a corrupt one gives an empty sample
    (the sample only feeds estimates) and fails, naming the file, when its shard is read.
    """
    if file.format == "text_file":
        return b"", False
    if file.compression is None:
        fs, path = fsspec.core.url_to_fs(file.uri, **source.storage_options)
        try:
            sample = fs.cat_file(path, start=0, end=formats.HEAD_BYTES)
        except Exception as exc:
            raise SourceReadError(f"cannot read {file.uri}: {exc}") from exc
        return sample, file.size is not None and len(sample) >= file.size
    try:
        with formats.open_stream(file.uri, source.storage_options, file.compression) as handle:
            sample = formats.read_head(handle, file.uri)
    except SourceReadError:
        return b"", False
    return sample, len(sample) < formats.HEAD_BYTES


def _raw_batches(
    shard: Shard, source: SourceSpec, names: list[str], batch_rows: int
) -> Iterator[readers.RawBatch]:
    compression = formats.split_compression(shard.uri)[1]
    options = source.storage_options
    if shard.format == "parquet":
        groups = None if shard.unit == "file" else range(shard.start, shard.end)
        return readers.parquet_batches(
            shard.uri, options, shard.relative_path, groups, shard.first_row, names, batch_rows
        )
    if shard.format == "csv":
        return readers.csv_batches(
            shard.uri, options, compression, shard.relative_path, names, batch_rows
        )
    if shard.format == "text_file":
        return readers.text_file_batches(
            shard.uri, options, compression, shard.relative_path, names[0]
        )
    span = (shard.start, shard.end) if shard.unit == "bytes" else (0, None)
    return readers.line_batches(
        shard.uri, options, compression, shard.relative_path, shard.format, span, names, batch_rows
    )


def _shard_rows(
    shard: Shard, source: SourceSpec, batch: readers.RawBatch, seen: set[str]
) -> ShardRows:
    """Rows with a valid id and text; the other records rejected, with their id where it
    can be read (else the derived one). Ids that can be read are checked for duplicates."""
    rows = ShardRows([], [], {name: [] for name in source.columns}, [], list(batch.bad))
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
            rows.rejects.append(BadRecord(row_id, problem.kind, problem.reason, where))
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
            f"duplicate ids in {shard.uri} (shard {shard.shard_id}): {shown}"
            + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
        )
    seen.update(read_ids)
    return rows
