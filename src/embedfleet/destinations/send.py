"""Sending a diff: the target's rows read back by batches, written by batches, retried.

Only the rows a diff names are read, part by part and in record batches of at most a
write's size, so memory holds about two batches of vectors whatever the snapshot's size
(``scripts/bench_sync.py`` measures it). Upserts all go before any delete.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedfleet.destinations.base import Destination, Target, with_retries
from embedfleet.destinations.diff import PartRows, SyncDiff
from embedfleet.job.store import Snapshot

READ_ROWS = 4096  # rows per record batch read from a part


class Sender:
    """Writes batches to one destination, counting them, with a progress bar."""

    def __init__(
        self,
        dest: Destination,
        name: str,
        stop: threading.Event | None,
        progress: bool,
        total: int,
    ) -> None:
        self.dest, self.name, self.stop = dest, name, stop
        self.batch_rows = dest.max_batch_rows()
        self.upserted = self.inserted = self.deleted = self.batches = 0
        self.bar: Any = None
        if progress and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                unit="rows",
                unit_scale=True,
                dynamic_ncols=True,
                desc=f"sync {dest.spec.label}",
            )

    def upsert(self, snapshot: Snapshot, changes: SyncDiff, target: Target, inserts: bool) -> None:
        """Every row ``changes`` names, new ids by the insert path when ``inserts``."""
        pending: dict[bool, list[pa.Table]] = {True: [], False: []}
        for part in changes.parts:
            for table, new in read_rows(snapshot, part, target.schema, self.batch_rows):
                if not inserts:  # the base may be stale: every row is an upsert
                    new = np.zeros(len(new), dtype=bool)
                for is_new in (True, False):
                    mask = new if is_new else ~new
                    if mask.any():
                        pending[is_new].append(table if mask.all() else table.filter(mask))
                        self._flush(pending[is_new], is_new, full_only=True)
        for is_new, tables in pending.items():
            self._flush(tables, is_new, full_only=False)

    def _flush(self, tables: list[pa.Table], is_new: bool, *, full_only: bool) -> None:
        """Write whole batches from ``tables`` (and, at the end, the rest)."""
        rows = sum(table.num_rows for table in tables)
        while rows >= self.batch_rows or (not full_only and rows):
            joined = pa.concat_tables(tables)
            batch, rest = joined.slice(0, self.batch_rows), joined.slice(self.batch_rows)
            tables[:] = [rest] if rest.num_rows else []
            rows = rest.num_rows
            self._send(batch.combine_chunks(), is_new)

    def _send(self, batch: pa.Table, is_new: bool) -> None:
        self.batches += 1
        ids = batch["id"]
        what = (
            f"{self.name}: upsert batch {self.batches} ({batch.num_rows} rows, ids "
            f"{ids[0].as_py()!r}..{ids[-1].as_py()!r})"
        )
        attempts = [0]

        def write() -> None:
            attempts[0] += 1  # a retried insert may have landed: upsert it instead
            if is_new and attempts[0] == 1:
                self.dest.insert(batch)
            else:
                self.dest.upsert(batch)

        with_retries(write, what=what, spec=self.dest.spec, stop=self.stop)
        self.upserted += batch.num_rows
        self.inserted += batch.num_rows if is_new else 0
        self._advance(batch.num_rows)

    def delete(self, ids: pa.Array) -> None:
        """Remove ``ids``, by batches (after every upsert is in)."""
        for start in range(0, len(ids), self.batch_rows):
            chunk = ids.slice(start, self.batch_rows).to_pylist()
            self.batches += 1
            what = (
                f"{self.name}: delete batch {self.batches} ({len(chunk)} ids, "
                f"{chunk[0]!r}..{chunk[-1]!r})"
            )
            with_retries(
                lambda c=chunk: self.dest.delete(c), what=what, spec=self.dest.spec, stop=self.stop
            )
            self.deleted += len(chunk)
            self._advance(len(chunk))

    def _advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.update(rows)
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_rows(
    snapshot: Snapshot, part: PartRows, schema: pa.Schema, batch_rows: int
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """The rows ``part`` names, with the ``schema`` columns (cast to it), in record batches,
    and for each row whether its id is new."""
    with snapshot.fs.open(snapshot.path(part.part), "rb") as handle:
        reader = pq.ParquetFile(handle)
        offset = 0
        size = max(1, min(READ_ROWS, batch_rows))
        for record_batch in reader.iter_batches(batch_size=size, columns=schema.names):
            count = record_batch.num_rows
            lo, hi = np.searchsorted(part.rows, [offset, offset + count])
            if hi > lo:
                picked = pa.Table.from_batches([record_batch]).take(
                    pa.array(part.rows[lo:hi] - offset)
                )
                yield _cast(picked, schema), part.new[lo:hi]
            offset += count
            if offset > part.rows[-1]:
                break


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    table = table.select(schema.names)
    return table if table.schema.equals(schema) else table.cast(schema)
