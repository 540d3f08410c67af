"""Where a machine keeps what embedfleet derives once, and the lock that makes it once.

Kept apart from :mod:`.quality_guard` (which owns *when* something is measured
again) because it knows nothing about quality: it is the one place that names
the cache root (``$EMBEDFLEET_CACHE_DIR``: ONNX exports under ``onnx/``,
precision guard results under ``precision/``) and the inter-process lock, so
the export and the guard cannot disagree about either, and neither imports the
other to find them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """``$EMBEDFLEET_CACHE_DIR``, default ``~/.cache/embedfleet``."""
    configured = os.environ.get("EMBEDFLEET_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "embedfleet"


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """An exclusive lock between processes on this machine (POSIX ``flock``); yields
    whether it is held. Without ``fcntl`` (Windows) there is none: callers must stay
    correct when two processes do the same work at once."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
