"""The sync engine: bring one destination to exactly one complete snapshot.

1. Read the target snapshot's layout (columns, dimension, vector fingerprint) from its
   part footers, and check the columns against the store before any write.
2. Look at the destination (``inspect``): a record of another output, or rows embedfleet
   did not write, are refused before any write (``force`` rebuilds instead).
3. Choose the base to diff against: nothing (empty), the snapshot it last synced
   completely (kept from pruning), or, when that is gone or a sync was cut short, its
   own ids and hashes. Another layout (provider, config or dimension changed) means a
   rebuild: written into a staging collection and swapped in, never a mix of old and
   new vectors in one collection.
4. Record ``target`` in the destination, upsert the new and changed rows by batches,
   then delete the ids gone (never before the upserts are in), record the snapshot as
   held, swap a rebuild in, and note it in ``OUTPUT/_destinations/``.

Every call to the store is retried with backoff (:func:`~.base.with_retries`); past the
retries the sync fails naming the destination and the batch, the snapshot is untouched,
and the next sync resumes from what the destination records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedfleet.destinations import records
from embedfleet.destinations.base import (
    Destination,
    Found,
    SyncState,
    Target,
    open_destination,
    with_retries,
)
from embedfleet.destinations.diff import RowIndex, SyncDiff, diff, part_names, snapshot_index
from embedfleet.destinations.send import Sender
from embedfleet.destinations.spec import DestinationSpec
from embedfleet.errors import ConfigError, DestinationError, EmbedfleetError
from embedfleet.job.store import OutputStore, Snapshot

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("id", "embedding", "content_hash", "text")


@dataclass
class SyncResult:
    """What one sync did (``embedfleet sync`` prints it, ``--report`` writes it)."""

    destination: str
    where: str
    snapshot: str  # the snapshot it holds now
    base: str  # what the diff was taken against
    upserted: int = 0  # rows sent (new + changed)
    inserted: int = 0  # ... of which were new ids
    deleted: int = 0  # ids removed
    unchanged: int = 0
    rebuilt: bool = False
    batches: int = 0
    seconds: float = 0.0
    error: str | None = None  # set when a job's sync failed (the run itself completed)

    @property
    def records_sent(self) -> int:
        return self.upserted + self.deleted

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "records_sent": self.records_sent}


@dataclass
class Decision:
    """What a sync will do, decided before any write (``plan`` shows it)."""

    target: Target
    live: Found
    base: str  # "empty", "snapshot <id>", "its own rows", "up to date", "staged rebuild"
    rebuild: bool = False
    staging: bool = False  # write into the staging collection, then swap it in
    fresh: bool = False  # drop what the collection held first
    inserts: bool = True  # ids absent from the base may take the store's insert path
    base_index: RowIndex | None = None
    held: str | None = None  # the snapshot the destination holds completely


def load_target(output: OutputStore, run_id: str, spec: DestinationSpec) -> tuple[Snapshot, Target]:
    """The snapshot's layout from its footers and ``_run.json``."""
    snapshot = output.snapshot(run_id)
    if not snapshot.is_complete():
        raise ConfigError(
            f"{output.uri}: snapshot {run_id} is not complete; sync only a complete one"
        )
    info = snapshot.run_info() or {}
    embedding = info.get("embedding") or {}
    schemas = []
    for part in part_names(snapshot):
        with snapshot.fs.open(snapshot.path(part), "rb") as handle:
            schemas.append(pq.read_schema(handle).remove_metadata())
    if schemas:
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(f"snapshot {run_id}: its parts disagree on a type: {exc}") from exc
        dimension = schema.field("embedding").type.list_size
    else:  # every row was rejected: nothing to send, but a collection all the same
        dimension = int(embedding.get("dimension") or 1)
        schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dimension))])
        schema = schema.append(pa.field("content_hash", pa.string()))
    passthrough = [name for name in schema.names if name not in OUTPUT_COLUMNS]
    columns = passthrough if spec.columns is None else list(spec.columns)
    missing = [name for name in columns if name not in passthrough]
    if missing:
        raise ConfigError(
            f"destination {spec.label}: columns {missing} are not passthrough columns of "
            f"snapshot {run_id} (it has {passthrough})"
        )
    has_text = "text" in schema.names
    sent = ["id", "embedding", "content_hash", *(["text"] if has_text else []), *columns]
    identity = {
        "fingerprint": info.get("fingerprint"),
        "dimension": dimension,
        "columns": columns,
        "text": has_text,
    }
    layout = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    sent_schema = pa.schema([schema.field(name) for name in sent])
    target = Target(run_id, layout, dimension, sent_schema, columns, has_text, embedding)
    return snapshot, target


def decide(
    dest: Destination,
    output: OutputStore,
    target: Target,
    identity: str | None,
    *,
    force: bool = False,
    stop: threading.Event | None = None,
) -> Decision:
    """Refuse another output's destination; pick a rebuild, the base, or nothing to do."""
    name = f"{dest.spec.label} ({dest.describe()})"
    live = with_retries(dest.inspect, what=f"{name}: connect", spec=dest.spec, stop=stop)
    state = live.state
    if not force and state is not None and state.output_id != identity:
        raise DestinationError(
            f"{name} holds snapshot {state.snapshot or state.target} of another output "
            f"(output id {state.output_id}; this output's is {identity}): refusing to "
            "write. Sync into another collection, or use --force to rebuild it from this output."
        )
    if not force and state is None and live.rows:
        raise DestinationError(
            f"{name} holds {live.rows} records that embedfleet did not write: refusing to "
            "write. Sync into another collection, or use --force to rebuild it from this output."
        )
    held = state.snapshot if state is not None else None
    same = state is not None and state.layout == target.layout and not force
    if live.rows and not same:  # every row changes (or --force): written aside, swapped in
        return _rebuild(dest, target, identity, live, stop)
    if same and state is not None and state.target is None and held == target.run_id:
        return Decision(target, live, "up to date", held=held)
    if not live.exists and dest.can_swap:  # a rebuild stopped between its swap's two steps?
        staged = _staged(dest, target, identity, live, stop)
        if staged is not None:
            return staged
    if not live.rows:  # an empty collection of another layout is made anew
        return Decision(target, live, "empty", fresh=live.exists and not same, held=held)
    base = output.snapshot(held) if held else None
    if state is not None and state.target is None and base is not None and base.is_complete():
        index = snapshot_index(base, target.columns)
        return Decision(target, live, f"snapshot {held}", base_index=index, held=held)
    # the snapshot it held was pruned, or a sync was cut short: diff against its own rows
    index = _own_rows(dest, target.columns, staging=False, stop=stop)
    return Decision(target, live, "its own rows", inserts=False, base_index=index, held=held)


def _own_rows(
    dest: Destination, columns: list[str], *, staging: bool, stop: threading.Event | None
) -> RowIndex:
    what = f"{dest.spec.label} ({dest.describe()}): read its ids and hashes"
    return with_retries(
        lambda: RowIndex.build(dest.contents(columns, staging=staging), columns),
        what=what,
        spec=dest.spec,
        stop=stop,
    )


def _rebuild(
    dest: Destination,
    target: Target,
    identity: str | None,
    live: Found,
    stop: threading.Event | None,
) -> Decision:
    held = live.state.snapshot if live.state else None
    if not dest.can_swap:
        logger.warning(
            "%s cannot swap a rebuild in: rebuilding it in place (it is incomplete until "
            "the sync ends)",
            dest.spec.label,
        )
        return Decision(target, live, "empty", rebuild=True, fresh=True, held=held)
    staged = _staged(dest, target, identity, live, stop)
    if staged is not None:
        return staged
    return Decision(target, live, "empty", rebuild=True, staging=True, fresh=True, held=held)


def _staged(
    dest: Destination,
    target: Target,
    identity: str | None,
    live: Found,
    stop: threading.Event | None,
) -> Decision | None:
    """Resume a rebuild into its staging collection, if one of this output and layout
    holds rows (a rebuild cut short, or not swapped in yet); None otherwise."""
    name = f"{dest.spec.label} ({dest.describe()}) staging"
    staged = with_retries(lambda: dest.inspect(staging=True), what=name, spec=dest.spec, stop=stop)
    state = staged.state
    ours = state is not None and state.output_id == identity and state.layout == target.layout
    if not staged.exists or not ours or not staged.rows:
        return None
    index = _own_rows(dest, target.columns, staging=True, stop=stop)
    held = live.state.snapshot if live.state else None
    return Decision(
        target, live, "staged rebuild", True, True, inserts=False, base_index=index, held=held
    )


def sync_destination(
    output: OutputStore,
    spec: DestinationSpec,
    *,
    run_id: str | None = None,
    force: bool = False,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> SyncResult:
    """Bring ``spec``'s destination to snapshot ``run_id`` (default: the latest)."""
    started = time.perf_counter()
    run_id = run_id or _latest(output)
    snapshot, target = load_target(output, run_id, spec)
    dest = open_destination(spec)
    try:
        dest.check_columns(target.schema, target.columns)
        identity = records.output_id(output)
        decision = decide(dest, output, target, identity, force=force, stop=stop)
        result = SyncResult(
            spec.label, dest.describe(), run_id, decision.base, rebuilt=decision.rebuild
        )
        if decision.base != "up to date":
            assert identity is not None
            _apply(dest, snapshot, decision, identity, result, progress, stop)
    finally:
        dest.close()
    records.write_record(
        output,
        spec.label,
        {"kind": spec.kind, "where": result.where, "snapshot": run_id, "layout": target.layout},
    )
    result.seconds = time.perf_counter() - started
    logger.info(
        "synced %s to %s: %d upserted, %d deleted (%s)",
        spec.label,
        run_id,
        result.upserted,
        result.deleted,
        decision.base,
    )
    return result


def _apply(
    dest: Destination,
    snapshot: Snapshot,
    decision: Decision,
    identity: str,
    result: SyncResult,
    progress: bool,
    stop: threading.Event | None,
) -> None:
    target, spec = decision.target, dest.spec
    name = f"{spec.label} ({dest.describe()})"
    begin = SyncState(
        identity, target.layout, None if decision.staging else decision.held, target.run_id
    )

    def prepare() -> None:
        dest.prepare(target, begin, staging=decision.staging, fresh=decision.fresh)

    with_retries(prepare, what=f"{name}: create or open", spec=spec, stop=stop)
    changes = diff(snapshot, decision.base_index, target.columns)
    result.unchanged = changes.unchanged
    sender = Sender(dest, name, stop, progress, changes.upserts + len(changes.deletes))
    try:
        sender.upsert(snapshot, changes, target, decision.inserts)
        sender.delete(changes.deletes)
    finally:
        sender.close()
    result.upserted, result.inserted, result.deleted = (
        sender.upserted,
        sender.inserted,
        sender.deleted,
    )
    result.batches = sender.batches
    done = SyncState(identity, target.layout, target.run_id, None)
    with_retries(
        lambda: dest.write_state(done), what=f"{name}: record the snapshot", spec=spec, stop=stop
    )
    if decision.staging:
        with_retries(dest.swap_in, what=f"{name}: swap the rebuild in", spec=spec, stop=stop)


def plan_sync(output: OutputStore, spec: DestinationSpec, *, force: bool = False) -> dict[str, Any]:
    """What a sync to the latest snapshot would send, writing nothing anywhere."""
    run_id = _latest(output)
    snapshot, target = load_target(output, run_id, spec)
    dest = open_destination(spec)
    plan: dict[str, Any] = {"destination": spec.label, "where": dest.describe(), "snapshot": run_id}
    try:
        dest.check_columns(target.schema, target.columns)
        decision = decide(
            dest, output, target, records.output_id(output, create=False), force=force
        )
    except DestinationError as exc:
        return {**plan, "refused": str(exc)}
    finally:
        dest.close()
    changes = (
        SyncDiff()
        if decision.base == "up to date"
        else diff(snapshot, decision.base_index, target.columns)
    )
    return {
        **plan,
        "holds": decision.held,
        "behind": decision.base != "up to date",
        "base": decision.base,
        "rebuild": decision.rebuild,
        "upserts": changes.upserts,
        "deletes": len(changes.deletes),
        "unchanged": changes.unchanged,
    }


def sync_all(
    output: OutputStore,
    specs: list[DestinationSpec],
    *,
    progress: bool = False,
    stop: threading.Event | None = None,
    tolerate: tuple[type[Exception], ...] = (EmbedfleetError,),
) -> list[SyncResult]:
    """Sync each destination; one failing with a ``tolerate`` error is recorded with its
    error and the others still sync (a job's snapshot is complete either way: the next
    run retries it). ``embedfleet sync`` tolerates only DestinationError, so a bad spec
    still exits 2."""
    results = []
    for spec in specs:
        try:
            results.append(sync_destination(output, spec, progress=progress, stop=stop))
        except tolerate as exc:
            logger.error("destination %s: %s", spec.label, exc)
            results.append(SyncResult(spec.label, spec.kind, "", "", error=str(exc)))
    return results


def _latest(output: OutputStore) -> str:
    output.refresh()
    latest = output.latest()
    if latest is None:
        raise ConfigError(f"{output.uri} has no complete snapshot to sync (no _latest)")
    return latest
