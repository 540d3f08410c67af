"""Files that appear whole or not at all, on any fsspec filesystem.

Readers (a glob over ``*.parquet``, a resuming run, a second process waiting on a
once-per-machine result) must never see half a file. On object stores an object
appears in one piece, so a single put (or a server-side copy) is enough; on
local disks the bytes go to a temporary name, never ending in ``.parquet``, and
are renamed into place.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import fsspec


def write_bytes_atomically(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    _whole(fs, path, lambda target: fs.pipe_file(target, data))


def copy_atomically(fs: fsspec.AbstractFileSystem, source: str, path: str) -> None:
    """Copy a file whole or not at all: a server-side copy on object stores (one new
    object), a temporary name renamed into place on local disks."""
    _whole(fs, path, lambda target: fs.copy(source, target))


def _whole(fs: fsspec.AbstractFileSystem, path: str, write: Callable[[str], None]) -> None:
    """Run ``write(target)`` so that ``path`` appears whole or not at all: straight to
    ``path`` on object stores, else to a temporary name that is then renamed into place."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" not in protocols and "local" not in protocols:
        write(path)
        return
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        write(temporary)
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)
