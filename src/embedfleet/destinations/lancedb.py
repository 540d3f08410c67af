"""LanceDB: a table in a local or object-store database (``lancedb.connect(uri,
storage_options=...)``: a folder, ``s3://``, ``gs://``...), kept equal to a snapshot.

- Rows go in as Arrow, straight from the Parquet parts: ``embedding`` becomes LanceDB's
  ``vector`` column (``fixed_size_list<float32>[dim]``), never through Python lists.
  New ids are appended (``add``); changed ones go through ``merge_insert("id")``.
- Columns: ``id``, ``vector``, ``content_hash``, ``text`` when the output keeps it, and
  the passthrough columns with their Arrow types (any type LanceDB stores).
- The sync record is metadata of the ``id`` field (``embedfleet.sync``); the ``vector``
  field carries the snapshot's embedding metadata (provider, config, precision).
- A rebuild goes to ``<table>_embedfleet_staging`` and is swapped in by one overwrite
  commit of the live table (a new version: readers see the old rows or the new, never a
  mix), then the staging table is dropped.
- Each write is a commit (a table version, a fragment): compact and drop old versions with
  LanceDB's ``table.optimize()`` on the store's own schedule.
- Credentials: ``storage_options`` (redacted wherever a spec is recorded) or, better, the
  environment the object store reads (``AWS_ACCESS_KEY_ID``...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa

from embedfleet.destinations.base import Destination, Found, SyncState, Target, require
from embedfleet.destinations.spec import DestinationSpec
from embedfleet.errors import ConfigError

VECTOR = "vector"
STATE_KEY = b"embedfleet.sync"
STAGING_SUFFIX = "_embedfleet_staging"
DELETE_CHUNK = 1000  # ids per delete predicate
_TABLE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class LanceDBDestination(Destination):
    kind: ClassVar[str] = "lancedb"
    keys: ClassVar[frozenset[str]] = frozenset({"uri", "table", "storage_options"})
    default_batch_rows: ClassVar[int] = 20_000

    def __init__(self, spec: DestinationSpec) -> None:
        super().__init__(spec)
        self._db: Any = None
        self._table: Any = None  # the prepared table (live or staging)

    @classmethod
    def check_spec(cls, spec: DestinationSpec, where: str) -> None:
        if not spec.uri or not spec.table:
            raise ConfigError(f"{where}: a lancedb destination needs uri and table")
        if not _TABLE_NAME.fullmatch(spec.table):
            raise ConfigError(
                f"{where}.table may hold only letters, digits, '.', '_' and '-', got {spec.table!r}"
            )

    def describe(self) -> str:
        return f"lancedb table {self.spec.table!r} in {self.spec.uri}"

    def db(self) -> Any:
        if self._db is None:
            lancedb = require("lancedb", "lancedb")
            options = {key: str(value) for key, value in self.spec.storage_options.items()}
            self._db = lancedb.connect(self.spec.uri, storage_options=options or None)
        return self._db

    def _name(self, staging: bool) -> str:
        assert self.spec.table is not None
        return self.spec.table + (STAGING_SUFFIX if staging else "")

    def _open(self, name: str) -> Any:
        try:
            return self.db().open_table(name)
        except (ValueError, FileNotFoundError):
            return None

    def inspect(self, *, staging: bool = False) -> Found:
        table = self._open(self._name(staging))
        if table is None:
            return Found(exists=False)
        return Found(True, table.count_rows(), _state(table.schema))

    def prepare(
        self, target: Target, state: SyncState, *, staging: bool = False, fresh: bool = False
    ) -> None:
        name = self._name(staging)
        table = None if fresh else self._open(name)
        if table is None:
            schema = _schema(target, state)
            table = self.db().create_table(name, schema=schema, mode="overwrite")
            self._table = table
            return
        vector = table.schema.field(VECTOR).type
        if vector.list_size != target.dimension:
            raise ConfigError(
                f"{self.describe()} holds {vector.list_size}-d vectors, the snapshot "
                f"{target.dimension}-d (a rebuild, with --force, replaces them)"
            )
        self._table = table
        self.write_state(state)

    def write_state(self, state: SyncState) -> None:
        self._table.update_field_metadata(
            {"path": "id", "metadata": {STATE_KEY.decode(): state.to_json()}}
        )

    def contents(self, columns: list[str], *, staging: bool = False) -> Iterator[pa.Table]:
        table = self._open(self._name(staging))
        if table is None:
            return
        query = table.search().select(["id", "content_hash", *columns]).limit(None)
        for batch in query.to_batches():
            yield pa.Table.from_batches([batch])

    def _arrow(self, batch: pa.Table) -> pa.Table:
        """The batch as the table's columns and types (``embedding`` is ``vector``)."""
        names = [VECTOR if name == "embedding" else name for name in batch.schema.names]
        renamed = batch.rename_columns(names)
        schema = self._table.schema.remove_metadata()
        schema = pa.schema([field.remove_metadata() for field in schema])
        return renamed.select(schema.names).cast(schema)

    def insert(self, batch: pa.Table) -> None:
        self._table.add(self._arrow(batch))

    def upsert(self, batch: pa.Table) -> None:
        (
            self._table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(self._arrow(batch))
        )

    def delete(self, ids: list[str]) -> None:
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start : start + DELETE_CHUNK]
            self._table.delete("id IN (" + ", ".join(map(_quote, chunk)) + ")")

    def swap_in(self) -> None:
        staging = self._open(self._name(staging=True))
        if staging is None:  # swapped in already by a run that stopped right after
            return
        schema = staging.schema
        rows = staging.search().limit(None).to_batches()
        reader = pa.RecordBatchReader.from_batches(
            schema, (pa.RecordBatch.from_arrays(batch.columns, schema=schema) for batch in rows)
        )
        self._table = self.db().create_table(
            self._name(staging=False), data=reader, schema=schema, mode="overwrite"
        )
        self.db().drop_table(self._name(staging=True))

    def drop_staging(self) -> None:
        if self._open(self._name(staging=True)) is not None:
            self.db().drop_table(self._name(staging=True))


def _schema(target: Target, state: SyncState) -> pa.Schema:
    fields = []
    for field in target.schema:
        if field.name == "id":
            field = field.with_metadata({STATE_KEY: state.to_json().encode()})
        elif field.name == "embedding":
            blob = json.dumps(target.embedding, sort_keys=True, default=str).encode()
            field = pa.field(VECTOR, field.type, nullable=False, metadata={b"embedfleet": blob})
        fields.append(field)
    return pa.schema(fields)


def _state(schema: pa.Schema) -> SyncState | None:
    if "id" not in schema.names:
        return None
    raw = (schema.field("id").metadata or {}).get(STATE_KEY)
    return SyncState.from_json(raw) if raw else None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
