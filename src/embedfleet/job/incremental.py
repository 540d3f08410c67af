"""Incremental re-embedding: which rows a run can take from the previous snapshot.

A run in ``mode = "incremental"`` starts from the latest complete snapshot made
with the same fingerprint (the *base*). The driver reads the base's ``id`` and
``content_hash`` columns once into an :class:`BaseIndex` (a small Arrow table,
shared with every shard task through Ray's object store). Each shard task then
sorts its rows into four kinds::

    carried   same id, same content hash: the base's vector, no model call
    reused    another id in the base has this exact text: its vector, no model call
    embedded  new or changed text: sent to the model
    (deleted  ids of the base that no shard read: counted by the driver)

Vectors are read back from the base's part files, one file at a time, only for
the rows that need them. A shard whose rows are exactly one base part, unchanged
and in order, is copied file to file (server-side on object stores) instead of
rewritten. The new snapshot is complete on its own: it never points into the
base, so pruning the base later loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedfleet.job import sink

EMBED, CARRY, REUSE = 0, 1, 2


@dataclass
class BaseIndex:
    """Where every row of the base snapshot lives: id, content hash, part file, row."""

    run_id: str
    table: pa.Table  # id, content_hash, part (file name in the snapshot), row (in the part)

    @property
    def rows(self) -> int:
        return self.table.num_rows


def build_index(snapshot: sink.Snapshot) -> BaseIndex:
    """Read the base's ``id`` and ``content_hash`` columns, part by part."""
    pieces = []
    for marker in snapshot.commits().values():
        part = marker.get("part")
        if not part:
            continue
        with snapshot.fs.open(snapshot.path(part), "rb") as handle:
            table = pq.read_table(handle, columns=["id", "content_hash"])
        pieces.append(
            table.append_column(
                "part", pa.array([part] * table.num_rows, pa.string())
            ).append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("content_hash", pa.string()),
            ("part", pa.string()),
            ("row", pa.int64()),
        ]
    )
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()
    return BaseIndex(snapshot.run_id, table)


@dataclass
class Matches:
    """One shard's rows sorted into kinds, with where each reusable vector lives."""

    kinds: np.ndarray  # EMBED / CARRY / REUSE per row
    sources: np.ndarray  # row of the base index holding the vector, -1 for EMBED
    known_ids: int  # rows whose id is in the base (carried or changed): not deleted

    def count(self, kind: int) -> int:
        return int((self.kinds == kind).sum())


def match(ids: list[str], hashes: list[str], index: BaseIndex) -> Matches:
    """Carry rows with the same id and text, reuse vectors of the same text, embed the rest."""
    count = len(ids)
    kinds = np.full(count, EMBED, dtype=np.int8)
    sources = np.full(count, -1, dtype=np.int64)
    if not count or not index.rows:
        return Matches(kinds, sources, 0)
    base = index.table
    by_id = pc.index_in(pa.array(ids, pa.string()), value_set=base["id"])
    known = by_id.is_valid().to_numpy(zero_copy_only=False)
    positions = by_id.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    base_hashes = base["content_hash"].to_numpy()
    new_hashes = np.asarray(hashes, dtype=object)
    same = known & (base_hashes[np.where(known, positions, 0)] == new_hashes)
    kinds[same] = CARRY
    sources[same] = positions[same]
    rest = np.flatnonzero(~same)
    if rest.size:
        by_text = pc.index_in(
            pa.array(new_hashes[rest].tolist(), pa.string()), base["content_hash"]
        )
        found = by_text.is_valid().to_numpy(zero_copy_only=False)
        kinds[rest[found]] = REUSE
        sources[rest[found]] = by_text.fill_null(-1).to_numpy(zero_copy_only=False)[found]
    return Matches(kinds, sources, int(known.sum()))


def fetch_vectors(snapshot: sink.Snapshot, index: BaseIndex, rows: np.ndarray) -> list[np.ndarray]:
    """The base's vectors at ``rows`` of the index, in that order, one read per part."""
    parts = index.table["part"].take(pa.array(rows)).to_pylist()
    offsets = index.table["row"].take(pa.array(rows)).to_numpy()
    vectors: list[Any] = [None] * len(rows)
    for part in sorted(set(parts)):
        wanted = [position for position, name in enumerate(parts) if name == part]
        with snapshot.fs.open(snapshot.path(part), "rb") as handle:
            column = pq.read_table(handle, columns=["embedding"])["embedding"]
        picked = column.take(pa.array(offsets[wanted])).combine_chunks()
        matrix = picked.values.to_numpy().reshape(len(wanted), -1)
        for position, vector in zip(wanted, matrix, strict=True):
            vectors[position] = vector
    return vectors


def whole_part(matches: Matches, index: BaseIndex) -> str | None:
    """The base part this shard's rows are, unchanged and in order, if they are one."""
    if not len(matches.kinds) or not (matches.kinds == CARRY).all():
        return None
    parts = index.table["part"].take(pa.array(matches.sources))
    names = pc.unique(parts).to_pylist()
    if len(names) != 1:
        return None
    offsets = index.table["row"].take(pa.array(matches.sources)).to_numpy()
    part_rows = pc.sum(pc.equal(index.table["part"], names[0])).as_py()
    if part_rows != len(offsets) or not (offsets == np.arange(len(offsets))).all():
        return None
    return names[0]
