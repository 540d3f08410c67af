"""The output store: snapshots of Parquet parts, commit markers, manifest, lock.

::

    OUTPUT/
      _latest                      relative path of the newest complete snapshot, written last
      _lock                        owner, host, pid, expiry: one run at a time
      snapshots/<run-id>/
        _run.json                  run id, fingerprint, planned shards, what made the vectors
        part-<shard-id>.parquet    one per shard
        _commits/<shard-id>.json   per-shard commit marker, written after its part
        _rejects/<shard-id>.parquet  records not embedded: id, doc_id, kind, reason, where
        _manifest.json             rolled up from the markers when every shard committed

A part without its commit marker does not exist for resume. Files are written
in one piece: a temporary name not ending in ``.parquet`` renamed into place on
local disks, a single put on object stores, so readers never see half a file.
Names starting with ``_`` are skipped by pyarrow datasets and by
``*.parquet`` globs, so a snapshot directory reads as a plain Parquet dataset.

Markers are read and written here only, as :class:`ShardMarker` (the runner, the plan
and ``embedfleet status`` see one typed record; a field a marker lacks reads as default).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa

from embedfleet.atomic_files import copy_atomically, write_bytes_atomically
from embedfleet.errors import ConfigError, LockedError
from embedfleet.job.markers import ShardMarker
from embedfleet.output_format import parquet_bytes

LATEST = "_latest"
LOCK = "_lock"
SNAPSHOTS = "snapshots"
RUN_FILE = "_run.json"
MANIFEST = "_manifest.json"
COMMITS = "_commits"
REJECTS = "_rejects"
DEFAULT_LEASE_SECONDS = 600.0


def new_run_id() -> str:
    """Sortable by time: 20261124T101500Z-1a2b."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:4]}"


@dataclass
class OutputLock:
    """The ``_lock`` file: one run writes an output at a time, until ``expires``."""

    owner: str
    host: str
    pid: int
    expires: float


@dataclass(frozen=True)
class SnapshotSummary:
    """One line of ``embedfleet status``."""

    run_id: str
    state: str  # "latest", "complete" or "unfinished"
    committed: int  # shards with a commit marker
    planned: int  # shards the run planned (the committed ones where it did not say)
    vectors: int
    rejected: int


class OutputStore:
    """One job output location (any fsspec URL)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        self.root = root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def refresh(self) -> None:
        """Forget cached listings: shard tasks in other processes write here."""
        self.fs.invalidate_cache()

    # ------------------------------------------------------------------ lock
    def acquire(self, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> OutputLock:
        """Take the lock or raise LockedError; a stale or dead owner's lock is taken over."""
        self.fs.makedirs(self.root, exist_ok=True)
        current = self.read_lock()
        if current is not None and not _lock_is_stale(current):
            raise LockedError(
                f"{self.uri} is locked by {current.owner} until "
                f"{_format_time(current.expires)}: another run is writing there. Wait for it, "
                f"or delete {self.path(LOCK)} if you are sure it is gone."
            )
        lock = OutputLock(
            owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            host=socket.gethostname(),
            pid=os.getpid(),
            expires=time.time() + lease_seconds,
        )
        self._write_lock(lock)
        confirmed = self.read_lock()
        if confirmed is None or confirmed.owner != lock.owner:
            raise LockedError(f"{self.uri}: another run took the lock at the same moment")
        return lock

    def renew(self, lock: OutputLock, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        current = self.read_lock()
        if current is None or current.owner != lock.owner:
            raise LockedError(f"{self.uri}: the lock was taken over by {current and current.owner}")
        lock.expires = time.time() + lease_seconds
        self._write_lock(lock)

    def release(self, lock: OutputLock) -> None:
        current = self.read_lock()
        if current is not None and current.owner == lock.owner:
            self.fs.rm(self.path(LOCK))

    def read_lock(self) -> OutputLock | None:
        try:
            data = json.loads(self.fs.cat_file(self.path(LOCK)))
        except FileNotFoundError:
            return None
        return OutputLock(**data)

    def _write_lock(self, lock: OutputLock) -> None:
        blob = json.dumps(lock.__dict__).encode()
        write_bytes_atomically(self.fs, self.path(LOCK), blob)

    # ------------------------------------------------------------------ snapshots
    def snapshot_ids(self) -> list[str]:
        self.refresh()
        try:
            entries = self.fs.ls(self.path(SNAPSHOTS), detail=False)
        except FileNotFoundError:
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def latest(self) -> str | None:
        """Run id of the newest complete snapshot, from ``_latest``."""
        try:
            relative = self.fs.cat_file(self.path(LATEST)).decode().strip()
        except FileNotFoundError:
            return None
        return relative.rsplit("/", 1)[-1]

    def snapshot(self, run_id: str) -> Snapshot:
        return Snapshot(self, run_id)

    def summaries(self) -> list[SnapshotSummary]:
        """Every snapshot, oldest first, as ``embedfleet status`` shows it."""
        latest = self.latest()
        return [self.snapshot(run_id).summary(latest) for run_id in self.snapshot_ids()]


class Snapshot:
    """One run's directory under ``snapshots/``."""

    def __init__(self, output: OutputStore, run_id: str) -> None:
        self.output = output
        self.run_id = run_id
        self.fs = output.fs
        self.root = output.path(SNAPSHOTS, run_id)
        self.relative = f"{SNAPSHOTS}/{run_id}"

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def run_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path(RUN_FILE)))
        except FileNotFoundError:
            return None

    def start(self, info: dict[str, Any]) -> None:
        self.fs.makedirs(self.path(COMMITS), exist_ok=True)
        write_bytes_atomically(self.fs, self.path(RUN_FILE), json.dumps(info, indent=2).encode())

    def is_complete(self) -> bool:
        return self.fs.exists(self.path(MANIFEST))

    def commits(self) -> dict[str, ShardMarker]:
        """Commit markers by shard id: the shards that exist for resume."""
        self.output.refresh()
        try:
            paths = self.fs.ls(self.path(COMMITS), detail=False)
        except FileNotFoundError:
            return {}
        markers = {}
        for path in paths:
            if path.endswith(".json"):
                marker = ShardMarker.from_json(json.loads(self.fs.cat_file(path)))
                markers[marker.shard_id] = marker
        return markers

    def summary(self, latest: str | None) -> SnapshotSummary:
        """Its state (given the output's latest run id), shards and rows, from the markers."""
        markers = self.commits().values()
        state = "complete" if self.is_complete() else "unfinished"
        state = "latest" if self.run_id == latest else state
        planned = len((self.run_info() or {}).get("shards", [])) if state == "unfinished" else 0
        return SnapshotSummary(  # a complete snapshot's shards are its committed ones
            run_id=self.run_id,
            state=state,
            committed=len(markers),
            planned=planned or len(markers),
            vectors=sum(marker.vector_rows for marker in markers),
            rejected=sum(marker.rejected for marker in markers),
        )

    def commit_shard(
        self, marker: ShardMarker, part: pa.Table | None, rejects: pa.Table | None
    ) -> ShardMarker:
        """Write the part and rejects, then the marker that makes them exist (its ``part``
        and ``rejects`` name what was written)."""
        shard_id = marker.shard_id
        names: dict[str, str | None] = {"part": None, "rejects": None}
        if part is not None and part.num_rows:
            names["part"] = f"part-{shard_id}.parquet"
            write_bytes_atomically(self.fs, self.path(names["part"]), parquet_bytes(part))
        if rejects is not None and rejects.num_rows:
            names["rejects"] = f"{REJECTS}/{shard_id}.parquet"
            self.fs.makedirs(self.path(REJECTS), exist_ok=True)
            write_bytes_atomically(self.fs, self.path(names["rejects"]), parquet_bytes(rejects))
        return self._write_marker(replace(marker, **names))

    def adopt_part(self, marker: ShardMarker, source: str) -> ShardMarker:
        """Commit ``source`` (a part of another snapshot, on the same filesystem) as this
        shard's part by copying the file: server-side on object stores."""
        marker = replace(marker, part=f"part-{marker.shard_id}.parquet", rejects=None)
        copy_atomically(self.fs, source, self.path(marker.part))
        return self._write_marker(marker)

    def _write_marker(self, marker: ShardMarker) -> ShardMarker:
        blob = json.dumps(marker.to_json(), indent=2).encode()
        write_bytes_atomically(self.fs, self.path(COMMITS, f"{marker.shard_id}.json"), blob)
        return marker

    def keep_only(self, shard_ids: set[str]) -> list[str]:
        """Delete markers, parts and rejects of every other shard (stale commits of a
        changed file, parts a crash left without a marker). Returns the removed paths."""
        self.output.refresh()
        removed = []
        for shard_id in set(self.commits()) - shard_ids:
            path = self.path(COMMITS, f"{shard_id}.json")
            self.fs.rm(path)
            removed.append(path)
        wanted = {f"part-{shard}.parquet" for shard in shard_ids}
        wanted |= {f"{shard}.parquet" for shard in shard_ids}
        for folder in (self.root, self.path(REJECTS)):
            try:
                names = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                continue
            for path in names:
                name = path.rstrip("/").rsplit("/", 1)[-1]
                if name.endswith(".parquet") and name not in wanted:
                    self.fs.rm(path)
                    removed.append(path)
        return removed

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Roll the markers into the manifest, then point ``_latest`` here (last)."""
        markers = self.commits()
        manifest = {
            "run_id": self.run_id,
            **summary,
            "shards": [markers[shard].to_json() for shard in sorted(markers)],
        }
        write_bytes_atomically(
            self.fs, self.path(MANIFEST), json.dumps(manifest, indent=2).encode()
        )
        write_bytes_atomically(self.fs, self.output.path(LATEST), self.relative.encode())
        return manifest

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(self.path(MANIFEST)))

    def remove(self) -> None:
        self.fs.rm(self.root, recursive=True)


def prune(output: OutputStore, keep: int, pinned: Collection[str] = ()) -> list[str]:
    """Delete complete snapshots beyond the newest ``keep`` but those ``pinned`` (a
    destination's next diff base), and unfinished ones older than the latest (they can
    no longer be resumed). Returns the removed run ids."""
    latest = output.latest()
    removed = []
    complete = [run for run in output.snapshot_ids() if output.snapshot(run).is_complete()]
    for run in complete[:-keep] if keep else complete:
        if run != latest and run not in pinned:
            output.snapshot(run).remove()
            removed.append(run)
    for run in output.snapshot_ids():
        if latest and run < latest and not output.snapshot(run).is_complete():
            output.snapshot(run).remove()
            removed.append(run)
    return removed


def read(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The latest complete snapshot under ``uri`` as a pyarrow dataset."""
    import pyarrow.dataset as ds

    output = OutputStore(uri, storage_options)
    output.refresh()
    latest = output.latest()
    if latest is None:
        raise ConfigError(f"{uri} has no complete snapshot yet (no {LATEST} file)")
    return ds.dataset(output.snapshot(latest).root, format="parquet", filesystem=output.fs)


def _lock_is_stale(lock: OutputLock) -> bool:
    if lock.expires < time.time():
        return True
    if lock.host == socket.gethostname():
        try:
            os.kill(lock.pid, 0)
        except ProcessLookupError:
            return True  # the owner died on this machine
        except PermissionError:
            return False
    return False


def _format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_unique_ids(snapshot: Snapshot, id_column: str | None) -> None:
    """Ids from different shards must not collide (within a shard, reading checks)."""
    if id_column is None:
        return  # derived ids are unique by construction
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    snapshot.output.refresh()
    dataset = ds.dataset(snapshot.root, format="parquet", filesystem=snapshot.fs)
    counts = pc.value_counts(dataset.to_table(columns=["id"])["id"])
    duplicates = [item["values"] for item in counts.to_pylist() if item["counts"] > 1]
    if duplicates:
        raise ConfigError(
            f"id column {id_column!r} has duplicate values across "
            f"files: {sorted(map(str, duplicates))[:10]}"
        )
