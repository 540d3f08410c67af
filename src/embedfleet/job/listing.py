"""The files behind a source URI, streamed from the filesystem into compact records.

A listing is all that planning reads per file: no file is opened here. Each file
becomes one :class:`ListedFile` (relative path, size, version, format, codec: a tuple
sharing its format and codec strings with every other file), so the driver holds about
a few hundred bytes per file, path strings included, never the filesystem's own info
dicts for the whole listing at once:

- S3 (s3fs): pages of 1,000 keys are turned into records as they arrive
  (``list_objects_v2`` pages, without filling s3fs's listing cache);
- any other fsspec filesystem: one directory at a time (``fs.walk``).

Globs list below their fixed part (as deep as the pattern reaches, all the way for
``**``) and keep the names the pattern matches, as ``fs.glob`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
import fsspec.asyn
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

from embedfleet.errors import ConfigError, MissingDependencyError, SourceReadError
from embedfleet.job import formats
from embedfleet.job.spec import SourceSpec

GLOB_CHARS = "*?["
PAGE_ITEMS = 1000  # S3 listing entries handed over per call into s3fs's event loop


class ListedFile(NamedTuple):
    """One file as listed: all that planning needs to know about it."""

    relative_path: str
    size: int | None
    version: str  # size plus etag, hash or mtime: what tells one state from the next
    format: str
    compression: str | None


@dataclass
class Listing:
    """A source's files, sorted by relative path; ``root + relative_path`` is a file's URI."""

    uri: str
    root: str
    files: list[ListedFile]


def list_source(source: SourceSpec) -> Listing:
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
    files: list[ListedFile] = []
    try:
        root, infos, skip_hidden = _entries(fs, path)
        prefix: str | None = None
        for info in infos:
            listed = _listed(fs, info, root, skip_hidden, source.format)
            if listed is None:
                continue
            file, file_prefix = listed
            if prefix is None:
                prefix = file_prefix
            elif file_prefix != prefix:
                raise SourceReadError(f"{file_prefix}{file.relative_path} is not below {prefix}")
            files.append(file)
    except FileNotFoundError:
        files, prefix = [], None
    except OSError as exc:
        raise SourceReadError(f"cannot list source.uri {source.uri!r}: {exc}") from exc
    if not files or prefix is None:
        raise ConfigError(f"no files matched source.uri {source.uri!r}")
    files.sort(key=lambda file: file.relative_path)
    return Listing(source.uri, prefix, files)


def _entries(fs: Any, path: str) -> tuple[str, Iterator[dict[str, Any]], bool]:
    """(root the relative paths start from, the info dicts, whether to skip hidden names)."""
    cut = min((path.find(char) for char in GLOB_CHARS if char in path), default=-1)
    if cut >= 0:
        slash = path[:cut].rfind("/")
        root = path[:slash] if slash >= 0 else ""
        depth = None if "**" in path else path[slash + 1 :].count("/") + 1
        pattern = re.compile(glob_translate(path))
        parts = path[len(root) :].split("/")
        skip_hidden = not any(part[:1] in "._" for part in parts if part)
        infos = (info for info in _walk(fs, root, depth) if pattern.match(info["name"]))
        return root, infos, skip_hidden
    info = fs.info(path)
    if info.get("type") == "directory":
        root = path.rstrip("/")
        return root, _walk(fs, root, None), True
    return (path.rsplit("/", 1)[0] if "/" in path else ""), iter([info]), False


def _walk(fs: Any, root: str, depth: int | None) -> Iterator[dict[str, Any]]:
    """Every file below ``root`` (``depth`` levels at most), streamed."""
    if "s3" in _protocols(fs) and hasattr(fs, "_iterdir"):
        yield from _s3_objects(fs, root, depth)
        return
    for _, _, files in fs.walk(root, maxdepth=depth, detail=True):
        yield from files.values()


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _s3_objects(fs: Any, root: str, depth: int | None) -> Iterator[dict[str, Any]]:
    """The objects under ``root/`` page by page (``fs.find`` would collect and cache them
    all first); ``depth == 1`` lists one level (delimiter "/"), else every key."""
    bucket, key, _ = fs.split_path(root)
    prefix = key.rstrip("/") + "/" if key else ""
    pages = fs._iterdir(bucket, delimiter="/" if depth == 1 else "", prefix=prefix)

    async def take() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        try:
            while len(items) < PAGE_ITEMS:
                items.append(await pages.__anext__())
        except StopAsyncIteration:
            items.append({})  # the end
        return items

    while True:
        items = fsspec.asyn.sync(fs.loop, take)
        for item in items:
            if not item:
                return
            yield item


def _listed(
    fs: Any, info: dict[str, Any], root: str, skip_hidden: bool, explicit: str | None
) -> tuple[ListedFile, str] | None:
    """The record of one listed entry and its URI prefix; None for folders and skipped names."""
    name = info["name"]
    if info.get("type") == "directory":
        return None
    relative = name[len(root) :].lstrip("/") if name.startswith(root) else name
    if not relative or relative.endswith("/"):  # object-store folder markers
        return None
    if skip_hidden and any(part[:1] in "._" for part in relative.split("/")):
        return None
    uri = name if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(name)
    fmt = formats.infer_format(uri, explicit)
    compression = formats.split_compression(relative)[1]
    formats.require_codec(compression, uri)
    size = info.get("size")
    prefix = uri[: len(uri) - len(relative)]
    return ListedFile(relative, size, version_of(info), fmt, compression), prefix


def version_of(info: dict[str, Any]) -> str:
    """What tells one state of a file from the next: size plus etag, hash or mtime."""
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "updated"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return f"{info.get('size')}"
