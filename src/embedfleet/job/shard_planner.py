"""Shards from a listing: small files packed together, large files split, no read per file.

Every file gets a *weight* in rows, estimated from its size alone: its size over the
bytes per row of its kind (``sampling.py``), or, where that is more, its share of
``PACK_BYTES`` (so a shard of large documents stays a bounded amount of text). Then, in
relative-path order:

- a file heavier than ``rows_per_shard`` is planned on its own, as every file was before
  packing (and with the same shard ids): Parquet by runs of whole row groups (its footer
  is read), uncompressed JSON Lines and text by byte ranges sized from that file's own
  64 KiB head, anything else (compressed, CSV, ``text_file``) as one whole-file shard;
- the files between such files are packed into shards of about ``rows_per_shard`` rows
  with boundaries that depend only on nearby files (``packing.py``). A packed file is a
  whole-file piece: an uncompressed line file is its byte range ``[0, size)`` (ids
  ``path@offset`` as before), Parquet all its row groups (ids ``path#row``), the rest the
  whole stream.

Reads while planning: the sample (at most ``sampling.SAMPLE_FILES`` files per kind) plus
one head or footer per file heavier than a shard. There are never more such files than
shards, so planning costs the listing plus a number of reads that does not grow with the
number of small files. A sampled Parquet file whose footer cannot be read is planned on
its own (it fails alone when read, naming the file).

``packed=False`` plans every file on its own, as before packing: a run resuming a
snapshot written before packing plans it that way to continue it. ``recorded`` are the
bytes per row a snapshot was planned with (``_run.json``'s ``packing``): a resume reuses
them exactly, so it plans the same shards; a new snapshot reuses its base's where the
sample agrees within half an octave, so a nightly run keeps its base's boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from embedfleet.errors import ConfigError, SourceReadError
from embedfleet.job import formats, packing, sampling
from embedfleet.job.listing import ListedFile, Listing
from embedfleet.job.shards import Piece, Shard
from embedfleet.job.spec import SourceSpec

PACK_BYTES = 128 << 20  # a packed shard holds at most about this many source bytes
PACKING_VERSION = 1
AGREES = math.sqrt(2)  # a recorded bytes-per-row within this factor of the sample's is kept


@dataclass
class SourcePlan:
    """The shards of a source and how they were cut (recorded in ``_run.json``)."""

    shards: list[Shard]
    packing: dict[str, Any] | None = None  # None: one file per shard (before packing)
    sample_files: int = 0  # files read for the sample
    planned_alone: int = 0  # files planned on their own (each read once for its ranges)
    files: int = 0
    notes: list[str] = field(default_factory=list)


def plan_listing(
    listing: Listing,
    source: SourceSpec,
    rows_per_shard: int,
    *,
    packed: bool = True,
    recorded: dict[str, float] | None = None,
    exactly: bool = False,
) -> SourcePlan:
    """The shards of ``listing``; ``recorded``/``exactly``: see the module docstring."""
    source.check()
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    files = listing.files
    wanted = wanted_columns(source, {file.format for file in files})
    keys = np.fromiter(
        (packing.path_key(file.relative_path) for file in files), np.uint64, len(files)
    )
    sample = sampling.take_sample(listing, source, wanted, keys)
    bytes_per_row = _bytes_per_row(sample.bytes_per_row, recorded or {}, exactly)
    sample.bytes_per_row = bytes_per_row
    plan = SourcePlan([], None, sample.files, files=len(files))
    if packed:
        plan.packing = {"version": PACKING_VERSION, "bytes_per_row": dict(bytes_per_row)}
    run: list[int] = []  # files waiting to be packed together
    for index, file in enumerate(files):
        if file.size == 0:
            continue
        weight = _weight(file, sample, rows_per_shard)
        alone = (
            not packed
            or file.size is None
            or weight > rows_per_shard
            or file.relative_path in sample.unreadable
        )
        if not alone:
            run.append(index)
            continue
        plan.shards += _packs(listing, run, keys, sample, rows_per_shard)
        run = []
        plan.shards += _file_shards(listing, file, source, rows_per_shard, sample)
        plan.planned_alone += 1
    plan.shards += _packs(listing, run, keys, sample, rows_per_shard)
    return plan


def wanted_columns(source: SourceSpec, fmts: set[str]) -> list[str]:
    """Text column (or the template's fields) first, then the id column and passthrough
    columns, without repeats."""
    if fmts & {"text", "text_file"} and (source.id_column or source.columns or source.template):
        raise ConfigError(
            "source formats text and text_file have no columns: leave source.id_column, "
            "source.columns and source.template unset (ids are derived from the file path)"
        )
    texts = list(text_columns(source))
    return list(dict.fromkeys([*texts, source.id_column or texts[0], *source.columns]))


def text_columns(source: SourceSpec) -> tuple[str, ...]:
    """The columns the text to embed is made of: the template's fields, or the text column."""
    return source.template_fields() or (source.text_column,)


def _bytes_per_row(
    sampled: dict[str, float], recorded: dict[str, float], exactly: bool
) -> dict[str, float]:
    chosen = dict(sampled)
    for kind, value in recorded.items():
        now = sampled.get(kind)
        if exactly or now is None or 1 / AGREES <= value / now <= AGREES:
            chosen[kind] = float(value)
    return chosen


def _weight(file: ListedFile, sample: sampling.Sample, rows_per_shard: int) -> float:
    """Estimated rows, from the size alone (the same for a file whether sampled or not)."""
    size = file.size or 0
    rows = 1.0 if file.format == "text_file" else size * sample.rows_per_byte(file)
    return max(rows, size * rows_per_shard / PACK_BYTES)


def _packs(
    listing: Listing, run: list[int], keys: np.ndarray, sample: sampling.Sample, target: int
) -> list[Shard]:
    """Shards of the files ``run`` (indices into the listing), packed."""
    if not run:
        return []
    files = [listing.files[index] for index in run]
    weights = [_weight(file, sample, target) for file in files]
    ranges = packing.pack(weights, keys[run].tolist(), target)
    pieces = [_whole_piece(file, sample) for file in files]
    return [Shard.of(listing.root, tuple(pieces[start:end])) for start, end in ranges]


def _whole_piece(file: ListedFile, sample: sampling.Sample) -> Piece:
    """A whole small file as a piece of a packed shard."""
    size = file.size or 0
    measured = sample.measured.get(file.relative_path)
    if file.format == "text_file":
        rows = 1
    elif measured is not None and measured.complete:
        rows = measured.rows
    else:
        rows = max(1, round(size * sample.rows_per_byte(file)))
    growth = sampling.COMPRESSED_GROWTH if file.compression else 1
    text = measured.text_bytes if measured is not None else size * growth
    if file.format in ("jsonl", "text") and file.compression is None:
        unit, start, end = "bytes", 0, size
    else:
        unit, start, end = "file", 0, 1
    return Piece(file.relative_path, file.format, unit, start, end, rows, 0, text, file.version)


# -- one file on its own, as before packing ----------------------------------------------------


def _file_shards(
    listing: Listing,
    file: ListedFile,
    source: SourceSpec,
    rows_per_shard: int,
    sample: sampling.Sample,
) -> list[Shard]:
    uri = listing.root + file.relative_path
    if file.format == "parquet":
        footer = None
        if file.relative_path not in sample.unreadable:
            footer = formats.parquet_footer(uri, source.storage_options)
        return _parquet_shards(listing, file, footer, rows_per_shard, text_columns(source))
    return _line_file_shards(listing, file, source, rows_per_shard)


def _shard(
    listing: Listing,
    file: ListedFile,
    unit: str,
    span: tuple[int, int],
    rows: int,
    nbytes: int,
    first: int = 0,
) -> Shard:
    start, end = span
    piece = Piece(
        file.relative_path, file.format, unit, start, end, rows, first, nbytes, file.version
    )
    return Shard.of(listing.root, (piece,))


def _parquet_shards(
    listing: Listing,
    file: ListedFile,
    footer: Any,
    rows_per_shard: int,
    texts: tuple[str, ...],
) -> list[Shard]:
    """Consecutive whole row groups, up to ``rows_per_shard`` rows each; a file whose
    footer cannot be read is one ``"file"`` shard with ``estimated_rows=0`` (it fails
    when read, naming the file)."""
    if footer is None:
        return [_shard(listing, file, "file", (0, 1), 0, file.size or 0)]
    shards = []
    start = rows = nbytes = first = position = 0
    for index in range(footer.num_row_groups):
        group = footer.row_group(index)
        if index > start and rows + group.num_rows > rows_per_shard:
            shards.append(_shard(listing, file, "rowgroups", (start, index), rows, nbytes, first))
            start, rows, nbytes, first = index, 0, 0, position
        rows += group.num_rows
        position += group.num_rows
        nbytes += sum(
            group.column(j).total_uncompressed_size
            for j in range(group.num_columns)
            if group.column(j).path_in_schema.split(".")[0] in texts
        )
    if rows:
        span = (start, footer.num_row_groups)
        shards.append(_shard(listing, file, "rowgroups", span, rows, nbytes, first))
    return shards


def _line_file_shards(
    listing: Listing, file: ListedFile, source: SourceSpec, rows_per_shard: int
) -> list[Shard]:
    """Byte ranges for uncompressed JSONL/text of known size; one whole-file shard otherwise.

    The range size is ``rows_per_shard`` times the mean line length of a 64 KiB head of
    that same file, so no other file influences it. Range ``[start, end)`` owns every line
    whose first byte lies in it.
    """
    sample, complete = _head_sample(listing, file, source)
    average = formats.average_line_bytes(sample, complete)
    splittable = file.format in ("jsonl", "text") and file.compression is None
    if not (splittable and file.size and average):
        rows, total = _whole_file_estimate(file, sample, complete, average)
        return [_shard(listing, file, "file", (0, 1), rows, total)]
    step = max(1, math.ceil(rows_per_shard * average))
    shards = []
    for start in range(0, file.size, step):
        end = min(start + step, file.size)
        rows = max(1, round((end - start) / average))
        shards.append(_shard(listing, file, "bytes", (start, end), rows, end - start))
    return shards


def _whole_file_estimate(
    file: ListedFile, sample: bytes, complete: bool, average: float | None
) -> tuple[int, int]:
    """(rows, text bytes) of a file read whole: exact when the sample is the whole stream."""
    growth = sampling.COMPRESSED_GROWTH if file.compression else 1
    if file.format == "text_file":
        return 1, (file.size or 0) * growth
    total = len(sample) if complete else (file.size or 0) * growth
    rows = round(total / average) if average else 0
    return (max(rows - 1, 0) if file.format == "csv" else rows), total


def _head_sample(listing: Listing, file: ListedFile, source: SourceSpec) -> tuple[bytes, bool]:
    """Up to 64 KiB from the (decompressed) start of the file, and whether that is all of it.

    Uncompressed files use one ranged read, whose failure is an I/O error (not corrupt
    content) and fails the plan: planning around it would change the file's shard ids.
    Compressed files are decompressed from the start; a corrupt one gives an empty sample
    (the sample only feeds estimates) and fails, naming the file, when its shard is read.
    """
    if file.format == "text_file":
        return b"", False
    uri = listing.root + file.relative_path
    if file.compression is None:
        fs, path = fsspec.core.url_to_fs(uri, **source.storage_options)
        try:
            sample = fs.cat_file(path, start=0, end=formats.HEAD_BYTES)
        except Exception as exc:
            raise SourceReadError(f"cannot read {uri}: {exc}") from exc
        return sample, file.size is not None and len(sample) >= file.size
    try:
        with formats.open_stream(uri, source.storage_options, file.compression) as handle:
            sample = formats.read_head(handle, uri)
    except SourceReadError:
        return b"", False
    return sample, len(sample) < formats.HEAD_BYTES
