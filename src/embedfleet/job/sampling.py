"""A bounded sample of a listing: bytes per row per kind of file, and the column check.

Planning reads no file per file. It reads the start of at most ``SAMPLE_FILES`` files of
each *kind* (format plus codec: ``jsonl``, ``jsonl.gzip``, ``parquet``...): those whose
path keys are smallest, a deterministic choice spread over the listing (a hash does not
care about names or order) that changes little when files come and go. From them:

- bytes per row of each kind (listing bytes, so a compressed file's too): a head sample
  that holds the whole file counts its rows; a longer file's head gives its mean line
  length; a Parquet footer gives its row count. Every other file's rows are estimated
  from its size;
- the column check: the columns found in the sampled files of each format (JSON Lines:
  the keys of their first records; CSV: the header; Parquet: the schema) must include
  every column the spec names, or the plan fails naming a file and the columns found.

The per-kind figure is rounded to a quarter octave (``quantize``), so the small drifts
of a sample that gains or loses a file leave it, and the shard boundaries built on it,
as they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from embedfleet.errors import SourceReadError
from embedfleet.job import formats, readers
from embedfleet.job.listing import ListedFile, Listing
from embedfleet.job.spec import SourceSpec

SAMPLE_FILES = 32  # files read per kind of file
SAMPLE_THREADS = 8  # the reads wait on I/O: a few at once
LONG_HEAD = 16 * formats.HEAD_BYTES  # read when a head holds no whole line
DEFAULT_BYTES_PER_ROW = 64.0  # a kind none of whose sampled files could be read
COMPRESSED_GROWTH = 4  # rough decompressed/compressed ratio, for estimates only


def kind_of(file: ListedFile) -> str:
    return f"{file.format}.{file.compression}" if file.compression else file.format


def quantize(value: float) -> float:
    """``value`` rounded to the nearest power of 2 ** (1/4)."""
    return float(2 ** (round(math.log2(value) * 4) / 4))


@dataclass
class Measured:
    """What one sampled file told."""

    rows: int  # rows, exact when ``complete``, else estimated from the head
    complete: bool  # the sample holds the whole file
    columns: list[str] | None  # columns found (None: nothing readable)
    text_bytes: int = 0  # bytes of text, roughly (Parquet: the text column's)


@dataclass
class Sample:
    """Bytes per row by kind and what each sampled file told (relative path -> Measured)."""

    bytes_per_row: dict[str, float] = field(default_factory=dict)  # quantized
    measured: dict[str, Measured] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)  # sampled files that could not be read
    files: int = 0  # files read

    def rows_per_byte(self, file: ListedFile) -> float:
        return 1.0 / self.bytes_per_row.get(kind_of(file), DEFAULT_BYTES_PER_ROW)


def take_sample(
    listing: Listing, source: SourceSpec, wanted: list[str], keys: np.ndarray
) -> Sample:
    """Read the sample and check the columns (``ConfigError`` naming a file if missing)."""
    picked = _pick(listing.files, keys)
    sample = Sample(files=len(picked))
    if not picked:
        return sample
    with ThreadPoolExecutor(max_workers=min(SAMPLE_THREADS, len(picked))) as pool:
        results = list(pool.map(lambda file: _measure(listing, file, source), picked))
    sizes: dict[str, float] = {}
    rows: dict[str, float] = {}
    found: dict[str, dict[str, None]] = {}
    first: dict[str, ListedFile] = {}
    for file, measured in zip(picked, results, strict=True):
        if measured is None:
            sample.unreadable.add(file.relative_path)
            continue
        sample.measured[file.relative_path] = measured
        if measured.columns is not None:
            found.setdefault(file.format, {}).update(dict.fromkeys(measured.columns))
            first.setdefault(file.format, file)
        if measured.rows > 0 and file.size:
            kind = kind_of(file)
            sizes[kind] = sizes.get(kind, 0.0) + file.size
            rows[kind] = rows.get(kind, 0.0) + measured.rows
    for kind, total in sizes.items():
        sample.bytes_per_row[kind] = quantize(max(total / rows[kind], 1.0))
    for fmt, columns in found.items():
        missing = [name for name in wanted if name not in columns]
        if missing:
            uri = listing.root + first[fmt].relative_path
            raise formats.missing_columns_error(uri, missing, list(columns))
    return sample


def _pick(files: Sequence[ListedFile], keys: np.ndarray) -> list[ListedFile]:
    """Per kind, the non-empty files with the smallest keys (``text_file``s: none, one
    document each), in path order."""
    by_kind: dict[str, list[int]] = {}
    for index, file in enumerate(files):
        if file.format != "text_file" and file.size != 0:
            by_kind.setdefault(kind_of(file), []).append(index)
    picked: list[int] = []
    for indices in by_kind.values():
        if len(indices) <= SAMPLE_FILES:
            picked += indices
            continue
        candidates = np.asarray(indices)
        smallest = np.argpartition(keys[candidates], SAMPLE_FILES)[:SAMPLE_FILES]
        picked += candidates[smallest].tolist()
    return [files[index] for index in sorted(picked)]


def _measure(listing: Listing, file: ListedFile, source: SourceSpec) -> Measured | None:
    """Read one sampled file's head (or Parquet footer); None when it cannot be read."""
    uri = listing.root + file.relative_path
    options = source.storage_options
    if file.format == "parquet":
        footer = formats.parquet_footer(uri, options)
        if footer is None:
            return None
        text = sum(
            footer.row_group(group).column(column).total_uncompressed_size
            for group in range(footer.num_row_groups)
            for column in range(footer.num_columns)
            if footer.row_group(group).column(column).path_in_schema.split(".")[0]
            in (source.template_fields() or (source.text_column,))
        )
        names = footer.schema.to_arrow_schema().names
        return Measured(footer.num_rows, True, names, text)
    try:
        head, complete = read_head(uri, file, options)
    except SourceReadError:
        return None
    average = formats.average_line_bytes(head, complete)
    growth = COMPRESSED_GROWTH if file.compression else 1
    if complete:
        lines = head.count(b"\n") + (1 if head and not head.endswith(b"\n") else 0)
        if file.format == "jsonl":
            lines = sum(1 for line in head.split(b"\n") if line.strip())
        rows, text = lines, len(head)
    else:
        text = (file.size or 0) * growth
        rows = round(text / average) if average else 0
    if file.format == "csv":
        rows = max(rows - 1, 0)
    return Measured(rows, complete, readers.head_columns(head, file.format, uri), text)


def read_head(uri: str, file: ListedFile, options: dict[str, Any]) -> tuple[bytes, bool]:
    """The (decompressed) start of a file, and whether that is all of it.

    One ranged read of ``HEAD_BYTES`` (``LONG_HEAD`` when that holds no whole line).
    A compressed file is decompressed from its start.
    """
    if file.compression is None:
        fs, path = fsspec.core.url_to_fs(uri, **options)
        try:
            head = fs.cat_file(path, start=0, end=formats.HEAD_BYTES)
            if b"\n" not in head and file.size and file.size > len(head):
                head = fs.cat_file(path, start=0, end=LONG_HEAD)
        except Exception as exc:
            raise SourceReadError(f"cannot read {uri}: {exc}") from exc
        return head, file.size is not None and len(head) >= file.size
    with formats.open_stream(uri, options, file.compression) as handle:
        head = formats.read_head(handle, uri)
        if b"\n" not in head and len(head) == formats.HEAD_BYTES:
            head += formats.read_head(handle, uri, LONG_HEAD - len(head))
    return head, len(head) < formats.HEAD_BYTES
