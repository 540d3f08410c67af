"""The fleets this process holds, keyed by what they are.

A fleet's key is its identity: the function (registry name + config, or a hash of
its pickle) and the fleet's parameters (replicas, CPUs, GPUs, resources, batch
size, concurrency...), or the ``name`` it was given. A fleet created under the key
of a live one replaces it (shuts it down first): re-running a notebook cell frees
the CPUs its previous fleet held before asking for them again, and never leaks
actors. Fleets with other keys coexist: a notebook comparing ``fp32`` with ``auto``
keeps both. A replaced fleet refuses further calls at once, saying so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from typing import Any, Protocol

from embedfleet.fleet.placement import Reservation

logger = logging.getLogger("embedfleet.fleet")


class Fleet(Protocol):
    """What this registry needs of a fleet."""

    fleet_name: str
    reservation: Reservation

    @property
    def label(self) -> str: ...

    def retire(self, reason: str) -> None: ...

    @property
    def running(self) -> bool: ...


_live: dict[str, weakref.ref[Fleet]] = {}
_lock = threading.Lock()


def identity_key(label: str, parts: dict[str, Any]) -> str:
    """``label#hash``: the same function and parameters give the same key."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{label}#{hashlib.sha256(blob).hexdigest()[:12]}"


def replace(key: str, fleet: Fleet) -> bool:
    """Record ``fleet`` as the live fleet under ``key``; the running fleet it replaces is
    shut down (True), so what it held is free for ``fleet``."""
    with _lock:
        previous = _live.get(key)
        old = previous() if previous is not None else None
        _live[key] = weakref.ref(fleet)
    if old is None or old is fleet or not old.running:
        return False
    logger.info("replacing fleet %r created earlier in this process", old.fleet_name)
    old.retire(
        "was replaced by a newer fleet with the same function and parameters, or the "
        "same name (a re-run cell), and is shut down: use the new one"
    )
    return True


def holders(exclude: Fleet | None = None) -> list[tuple[str, Reservation]]:
    """Each running fleet of this process (``exclude`` aside): its label and reservation."""
    with _lock:
        fleets = [ref() for ref in _live.values()]
    return [
        (fleet.label, fleet.reservation)
        for fleet in fleets
        if fleet is not None and fleet is not exclude and fleet.running
    ]
