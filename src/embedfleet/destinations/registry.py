"""Destination kinds -> classes, imported only when a destination of that kind is used.

A third store is one module (a :class:`~embedfleet.destinations.base.Destination`
subclass) and one line here.
"""

from __future__ import annotations

import importlib

from embedfleet.errors import ConfigError

# kind -> "module:Class"; the module is imported when a destination of that kind is
# configured, and the store's client only when it connects.
CLASSES = {
    "chroma": "embedfleet.destinations.chroma:ChromaDestination",
    "lancedb": "embedfleet.destinations.lancedb:LanceDBDestination",
}


def destination_class(kind: str) -> type:
    """The class that implements ``kind`` (a ``Destination`` subclass; this module
    imports neither the classes nor the specs, so both can ask it)."""
    try:
        module, _, name = CLASSES[kind].partition(":")
    except KeyError:
        raise ConfigError(f"unknown destination kind {kind!r} (known: {sorted(CLASSES)})") from None
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
