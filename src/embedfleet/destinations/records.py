"""What an output knows of its destinations: its identity, and one record per destination.

::

    OUTPUT/
      _output_id                   a random id, written once: the output's lineage
      _destinations/<name>.json    the snapshot <name> last synced completely, and where

The destination's own record (:class:`~embedfleet.destinations.base.SyncState`, kept in
the store) decides what a sync sends. These files serve the output: ``embedfleet
status`` shows each destination and whether it is behind without connecting to it, and
``prune`` keeps the snapshots they name, the base of each destination's next diff
(delete a record to release its snapshot). Names start with ``_``, so a snapshot
directory still reads as a plain Parquet dataset.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from embedfleet.atomic_files import write_bytes_atomically
from embedfleet.job.store import OutputStore

OUTPUT_ID = "_output_id"
RECORDS = "_destinations"


def output_id(output: OutputStore, *, create: bool = True) -> str | None:
    """The output's identity, created on first use (under the output's lock)."""
    try:
        return output.fs.cat_file(output.path(OUTPUT_ID)).decode().strip()
    except FileNotFoundError:
        if not create:
            return None
    identity = uuid.uuid4().hex
    output.fs.makedirs(output.root, exist_ok=True)
    write_bytes_atomically(output.fs, output.path(OUTPUT_ID), identity.encode())
    return identity


def write_record(output: OutputStore, name: str, record: dict[str, Any]) -> None:
    """Record that destination ``name`` holds ``record["snapshot"]`` completely."""
    record = {"name": name, **record, "synced_at": _now()}
    output.fs.makedirs(output.path(RECORDS), exist_ok=True)
    blob = json.dumps(record, indent=2, sort_keys=True).encode()
    write_bytes_atomically(output.fs, output.path(RECORDS, f"{name}.json"), blob)


def records(output: OutputStore) -> list[dict[str, Any]]:
    """Every destination record, by name."""
    output.refresh()
    try:
        paths = output.fs.ls(output.path(RECORDS), detail=False)
    except FileNotFoundError:
        return []
    found = [json.loads(output.fs.cat_file(path)) for path in paths if path.endswith(".json")]
    return sorted(found, key=lambda record: record.get("name", ""))


def pinned_snapshots(output: OutputStore) -> set[str]:
    """Snapshots a destination holds: the base of its next diff, kept from pruning."""
    return {record["snapshot"] for record in records(output) if record.get("snapshot")}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
