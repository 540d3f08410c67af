"""What embedfleet derives once per machine, and the lock that makes it once.

``cache_dir()`` holds ONNX exports (``onnx/``) and precision guard results
(``precision/``); processes starting together (a fleet's replicas) take
``file_lock`` so that one does the work and the others wait and read it.
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
