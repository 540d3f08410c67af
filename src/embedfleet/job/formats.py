"""Source file formats: names -> format and compression, opening, reading, lines.

What every format's reader (``readers.py``) needs from a file: its format and
codec from its name, a binary stream (decompressed), blocks and lines read from
it with every backend and codec error mapped to ``SourceReadError`` naming the
file, and the Parquet footer. A file that cannot be opened, decompressed or read
fails its own shard with a message a user can act on.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
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


@contextmanager
def open_source(
    uri: str, storage_options: dict[str, Any], compression: str | None, data: bytes | None
) -> Iterator[IO]:
    """``open_stream``, or, when the file's bytes were fetched already (``data``), a
    stream over them, decompressed the same way."""
    if data is None:
        with open_stream(uri, storage_options, compression) as handle:
            yield handle
        return
    require_codec(compression, uri)
    raw: IO = io.BytesIO(data)
    try:
        handle = fsspec.compression.compr[compression](raw, mode="rb") if compression else raw
    except Exception as exc:
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


def missing_columns_error(uri: str, missing: Sequence[str], found: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"{uri}: column(s) {', '.join(map(repr, missing))} not found; "
        f"columns found: {', '.join(map(repr, found)) or '(none)'}"
    )
