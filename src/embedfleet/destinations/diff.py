"""Which rows a destination must receive: the difference between what it holds and a
snapshot, by id, content hash and the values of the columns it is sent.

Never by shard or part file: an incremental run rewrites parts freely (a shard whose
file changed is a new part with mostly carried rows), and a row is unchanged exactly
when its id, text and passthrough values are.

Memory stays bounded by rows, never by vectors: the base (the snapshot the destination
holds, or, when that snapshot is gone, the destination's own ids and hashes) becomes a
:class:`RowIndex` of its ids (one Arrow string array), 64-bit keys of its ids (sorted,
for ``np.searchsorted``) and 64-bit keys of each row's content hash and values. The
target snapshot is read part by part, only its ``id``, ``content_hash`` and sent
columns; what comes out is, per part, the row numbers to send. Vectors are read later,
by batches, for those rows only (:mod:`~embedfleet.destinations.sync`).

An id key that matches is confirmed on the full strings; a 64-bit collision between
two ids is resolved by comparing strings, so a collision can never hide a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedfleet.job.store import Snapshot


def _id_key(id_: str) -> int:
    return int.from_bytes(hashlib.blake2b(id_.encode(), digest_size=8).digest(), "little")


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.fromiter(map(_id_key, ids.to_pylist()), dtype=np.uint64, count=len(ids))


def row_keys(table: pa.Table, columns: list[str]) -> np.ndarray:
    """A 64-bit key of each row's content hash and ``columns`` values: equal rows,
    equal keys (values compared as Python values, so Parquet and a store's own
    metadata give the same key)."""
    hashes = table["content_hash"].to_pylist()
    if not columns:  # a sha256 hex digest: its first 64 bits
        return np.fromiter((int(value[:16], 16) for value in hashes), np.uint64, len(hashes))
    values = zip(*(table[name].to_pylist() for name in columns), strict=True)
    digests = (
        hashlib.blake2b(repr((content, *row)).encode(), digest_size=8).digest()
        for content, row in zip(hashes, values, strict=True)
    )
    return np.fromiter((int.from_bytes(d, "little") for d in digests), np.uint64, len(hashes))


@dataclass
class RowIndex:
    """The rows a destination holds (or a snapshot has): ids, id keys, row keys."""

    ids: pa.Array  # string, one per row
    row_keys: np.ndarray  # uint64 per row
    sorted_keys: np.ndarray  # uint64 id keys, sorted ...
    order: np.ndarray  # ... and the row of each

    @classmethod
    def build(cls, tables: Iterable[pa.Table], columns: list[str]) -> RowIndex:
        """From tables of ``id``, ``content_hash`` and ``columns``."""
        ids, keys, rows = [], [], []
        for table in tables:
            if not table.num_rows:
                continue
            ids.append(table["id"].cast(pa.string()).combine_chunks())
            keys.append(id_keys(table["id"]))
            rows.append(row_keys(table, columns))
        if not ids:
            return cls.empty()
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        return cls(pa.concat_arrays(ids), np.concatenate(rows), all_keys[order], order)

    @classmethod
    def empty(cls) -> RowIndex:
        nothing = np.zeros(0, dtype=np.uint64)
        return cls(pa.array([], pa.string()), nothing, nothing, np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The row holding each of ``ids``, -1 where none (exact on the strings)."""
        found = np.full(len(ids), -1, dtype=np.int64)
        if not len(self) or not len(ids):
            return found
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        keys = id_keys(ids)
        at = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self) - 1)
        hit = np.flatnonzero(self.sorted_keys[at] == keys)
        if not hit.size:
            return found
        candidates = self.order[at[hit]]
        same = pc.equal(self.ids.take(pa.array(candidates)), ids.take(pa.array(hit)))
        same = same.to_numpy(zero_copy_only=False)
        found[hit[same]] = candidates[same]
        for position in hit[~same]:  # a 64-bit collision: compare strings among equal keys
            found[position] = self._collision(keys[position], ids[int(position)].as_py())
        return found

    def _collision(self, key: np.uint64, id_: str) -> int:
        start = int(np.searchsorted(self.sorted_keys, key, side="left"))
        end = int(np.searchsorted(self.sorted_keys, key, side="right"))
        for row in self.order[start:end]:
            if self.ids[int(row)].as_py() == id_:
                return int(row)
        return -1


@dataclass
class PartRows:
    """One part of the target snapshot: the rows to send."""

    part: str  # file name in the snapshot
    rows: np.ndarray  # row numbers in the part, ascending
    new: np.ndarray  # per sent row: its id is not in the base (may be inserted)


@dataclass
class SyncDiff:
    """What brings a destination from its base to the target snapshot."""

    parts: list[PartRows] = field(default_factory=list)
    deletes: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    unchanged: int = 0
    target_rows: int = 0

    @property
    def upserts(self) -> int:
        return sum(len(part.rows) for part in self.parts)

    @property
    def inserts(self) -> int:
        return sum(int(part.new.sum()) for part in self.parts)


def part_names(snapshot: Snapshot) -> list[str]:
    """The snapshot's part files, in name order."""
    return sorted(marker.part for marker in snapshot.commits().values() if marker.part)


def read_part(snapshot: Snapshot, part: str, columns: list[str]) -> pa.Table:
    with snapshot.fs.open(snapshot.path(part), "rb") as handle:
        return pq.read_table(handle, columns=columns)


def snapshot_index(snapshot: Snapshot, columns: list[str]) -> RowIndex:
    """A complete snapshot as a base: its ids, hashes and ``columns`` values."""
    wanted = ["id", "content_hash", *columns]
    return RowIndex.build(
        (read_part(snapshot, part, wanted) for part in part_names(snapshot)), columns
    )


def diff(target: Snapshot, base: RowIndex | None, columns: list[str]) -> SyncDiff:
    """Rows of ``target`` that ``base`` lacks or holds otherwise, and ids of ``base`` not
    in ``target``. ``base`` None: the destination is empty, every row is new."""
    result = SyncDiff()
    seen = np.zeros(len(base) if base is not None else 0, dtype=bool)
    for part in part_names(target):
        if base is None or not len(base):
            with target.fs.open(target.path(part), "rb") as handle:
                count = pq.ParquetFile(handle).metadata.num_rows
            rows = np.arange(count, dtype=np.int64)
            result.parts.append(PartRows(part, rows, np.ones(count, dtype=bool)))
            result.target_rows += count
            continue
        table = read_part(target, part, ["id", "content_hash", *columns])
        found = base.find(table["id"])
        matched = found >= 0
        seen[found[matched]] = True
        same = np.zeros(table.num_rows, dtype=bool)
        same[matched] = base.row_keys[found[matched]] == row_keys(table, columns)[matched]
        rows = np.flatnonzero(~same)
        result.parts.append(PartRows(part, rows, ~matched[rows]))
        result.unchanged += int(same.sum())
        result.target_rows += table.num_rows
    if base is not None and len(base):
        result.deletes = base.ids.filter(pa.array(~seen))
    result.parts = [part for part in result.parts if len(part.rows)]
    return result
