"""The fleets this process holds, by name.

A fleet created under the name of a live one replaces it (shuts it down first),
so re-running a notebook cell frees the CPUs its previous fleet held before
asking for them again, and never leaks actors.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Protocol

logger = logging.getLogger("embedfleet.fleet")


class Fleet(Protocol):
    """What this registry needs of a fleet."""

    def shutdown(self) -> None: ...

    @property
    def running(self) -> bool: ...


_live: dict[str, weakref.ref[Fleet]] = {}
_lock = threading.Lock()


def replace(name: str, fleet: Fleet) -> None:
    """Record ``fleet`` as the live fleet called ``name``, shutting down the one it
    replaces."""
    with _lock:
        previous = _live.get(name)
        old = previous() if previous is not None else None
        _live[name] = weakref.ref(fleet)
    if old is not None and old is not fleet and old.running:
        logger.info("replacing fleet %r created earlier in this process", name)
        old.shutdown()
