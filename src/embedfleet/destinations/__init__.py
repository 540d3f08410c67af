"""Destinations: vector stores kept equal to an output's latest snapshot.

After a snapshot completes, each destination gets the rows new or changed since the
snapshot it holds (upserts) and loses the ids gone (deletes), nothing else; it records
which snapshot it holds, so a second sync sends nothing and a sync killed half-way
resumes. :mod:`~embedfleet.destinations.sync` is the engine; each store is one small
class behind :class:`~embedfleet.destinations.base.Destination`, found by kind in
:mod:`~embedfleet.destinations.registry`. Importing this package imports no store's
client.
"""

from __future__ import annotations

from embedfleet.destinations.base import Destination, SyncState, open_destination
from embedfleet.destinations.registry import destination_class
from embedfleet.destinations.spec import DestinationSpec, parse_uri

__all__ = [
    "Destination",
    "DestinationSpec",
    "SyncState",
    "destination_class",
    "open_destination",
    "parse_uri",
]
