"""Where start-up time goes: named phases, timed where they happen.

A phase is timed with ``with phase("model_load"):`` in the code that does the work
(a local model's imports and load, a precision guard's measurement); the totals are
per process and are read with :func:`snapshot`. A fleet replica reports its own
totals to the driver, which reports them with its own phases (``JobResult``,
``embedfleet bench``). Phases nest: only the outermost one running in a thread
counts, so a model loaded inside a precision guard's measurement counts as the
guard's time, never twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_totals: dict[str, float] = {}
_lock = threading.Lock()
_active = threading.local()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time to phase ``name`` (unless an outer phase is running)."""
    if getattr(_active, "name", None) is not None:
        yield
        return
    _active.name = name
    start = time.perf_counter()
    try:
        yield
    finally:
        _active.name = None
        add(name, time.perf_counter() - start)


def add(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds


def snapshot() -> dict[str, float]:
    """Seconds per phase spent in this process so far."""
    with _lock:
        return dict(_totals)


def process_age() -> float | None:
    """Seconds since this process started, or None where that cannot be read.

    On Linux from ``/proc/self/stat`` (the start in clock ticks since boot) against the
    boot clock, to 10 ms: ``psutil``'s ``create_time`` adds the boot time, which the
    kernel reports in whole seconds, and so read up to a second late (0.75 s on the
    development machine, every process alike)."""
    try:
        import os

        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return max(0.0, time.time() - psutil.Process().create_time())
