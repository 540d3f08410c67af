"""What keeps a run safe to stop: it holds the output's lock, renewed while it runs,
and SIGINT/SIGTERM ask it to stop instead of killing it mid-commit.

A driver killed outright (SIGKILL) renews nothing: its lock expires, or is taken
over at once on the same host because its pid is gone. A signalled driver submits
no new shard, cancels the tasks in flight, stops the fleet and releases the lock;
every committed shard stays, so a re-run resumes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from embedfleet.errors import EmbedfleetError
from embedfleet.job.store import OutputLock, OutputStore

logger = logging.getLogger(__name__)

RENEW_EVERY_SECONDS = 60.0


class StopOnSignal:
    """SIGINT/SIGTERM set ``stop``: the run stops submitting, releases actors and lock.

    ``install`` is called again after ``ray.init``, which sets its own SIGTERM handler.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping after cleanup; committed shards stay", signum)
        self.stop.set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self.previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


@contextmanager
def locked_run(output: OutputStore) -> Iterator[StopOnSignal]:
    """Hold ``output``'s lock (renewed by a daemon thread) with the stop signals
    installed; the lock is released however the run ends. A stop (signal or exit)
    also ends the renewals."""
    lock = output.acquire()
    stop = threading.Event()
    heartbeat = threading.Thread(
        target=_renew, args=(output, lock, stop), name="embedfleet-lease", daemon=True
    )
    heartbeat.start()
    signals = StopOnSignal(stop)
    signals.install()
    try:
        yield signals
    finally:
        signals.restore()
        stop.set()
        heartbeat.join(timeout=5)
        output.release(lock)


def _renew(output: OutputStore, lock: OutputLock, stop: threading.Event) -> None:
    while not stop.wait(RENEW_EVERY_SECONDS):
        try:
            output.renew(lock)
        except EmbedfleetError as exc:  # taken over: the run's commits still stand
            logger.error("%s", exc)
            return
