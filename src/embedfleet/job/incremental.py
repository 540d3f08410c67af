"""Incremental re-embedding: which rows a run can take from the previous snapshot.

A run in ``mode = "update"`` (the default; ``incremental`` is its older name) that
starts a new snapshot starts it from the latest complete snapshot made with the
same fingerprint (the *base*). The driver reads the base's ``id`` and
``content_hash`` columns once into an :class:`BaseIndex` (a small Arrow table plus
sorted 64-bit keys of its ids and hashes, shared with every shard task through
Ray's object store). Each shard task looks its rows up by key (``searchsorted``,
hits confirmed on the full strings) and sorts them into four kinds::

    carried   same id, same content hash: the base's vector, no model call
    reused    another id in the base has this exact text: its vector, no model call
    embedded  new or changed text: sent to the model
    (deleted  ids of the base in neither the new parts nor their rejects: the driver)

``embedfleet plan --exact`` (``exact.py``) sorts the source's rows with the same
``match``, without embedding, to count what a run would do.

Vectors are read back from the base's part files, one file at a time, only for
the rows that need them. A shard whose rows are exactly one base part, unchanged
and in order, is copied file to file (server-side on object stores) instead of
rewritten. The new snapshot is complete on its own: it never points into the
base, so pruning the base later loses nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedfleet.job.store import REJECTS, Snapshot

EMBED, CARRY, REUSE = 0, 1, 2


@dataclass
class BaseIndex:
    """Where every row of the base snapshot lives (id, content hash, part file, row),
    with sorted 64-bit keys of its ids and hashes so that a shard finds its rows with
    ``np.searchsorted`` in O(rows log base), never a pass over the whole base."""

    run_id: str
    table: pa.Table  # id, content_hash, part (file name in the snapshot), row (in the part)
    id_keys: np.ndarray  # sorted uint64 keys of the ids ...
    id_rows: np.ndarray  # ... and the table row of each
    hash_keys: np.ndarray  # sorted uint64 keys of the content hashes ...
    hash_rows: np.ndarray  # ... and the table row of each

    @property
    def rows(self) -> int:
        return self.table.num_rows


def _id_key(id_: str) -> int:
    return int.from_bytes(hashlib.blake2b(id_.encode(), digest_size=8).digest(), "little")


def _hash_key(content_hash: str) -> int:
    return int(content_hash[:16], 16)  # a sha256 hex digest: its first 64 bits


def _sorted_keys(values: list[str], key: Any) -> tuple[np.ndarray, np.ndarray]:
    keys = np.fromiter((key(value) for value in values), dtype=np.uint64, count=len(values))
    rows = np.argsort(keys, kind="stable")
    return keys[rows], rows


def _lookup(sorted_keys: np.ndarray, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Table rows whose key equals each of ``keys`` (the first such), -1 where none."""
    if not sorted_keys.size:
        return np.full(len(keys), -1, dtype=np.int64)
    positions = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return np.where(sorted_keys[positions] == keys, rows[positions], -1).astype(np.int64)


def build_index(snapshot: Snapshot) -> BaseIndex:
    """Read the base's ``id`` and ``content_hash`` columns, part by part, and key them."""
    pieces = []
    for marker in snapshot.commits().values():
        part = marker.part
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
    table = pa.concat_tables(pieces).combine_chunks() if pieces else schema.empty_table()
    id_keys, id_rows = _sorted_keys(table["id"].to_pylist(), _id_key)
    hash_keys, hash_rows = _sorted_keys(table["content_hash"].to_pylist(), _hash_key)
    return BaseIndex(snapshot.run_id, table, id_keys, id_rows, hash_keys, hash_rows)


@dataclass
class Matches:
    """One shard's rows sorted into kinds, with where each reusable vector lives."""

    kinds: np.ndarray  # EMBED / CARRY / REUSE per row
    sources: np.ndarray  # row of the base index holding the vector, -1 for EMBED
    known: np.ndarray  # whether the row's id is in the base (else the row is new)

    def count(self, kind: int) -> int:
        return int((self.kinds == kind).sum())


def match(ids: list[str], hashes: list[str], index: BaseIndex) -> Matches:
    """Carry rows with the same id and text, reuse vectors of the same text, embed the rest."""
    count = len(ids)
    kinds = np.full(count, EMBED, dtype=np.int8)
    sources = np.full(count, -1, dtype=np.int64)
    known = np.zeros(count, dtype=bool)
    if not count or not index.rows:
        return Matches(kinds, sources, known)
    base = index.table
    # candidates by 64-bit key, confirmed on the full strings (a key collision embeds)
    by_id = _lookup(index.id_keys, index.id_rows, np.fromiter(map(_id_key, ids), np.uint64))
    candidates = np.flatnonzero(by_id >= 0)
    base_ids = base["id"].take(pa.array(by_id[candidates])).to_pylist()
    base_texts = base["content_hash"].take(pa.array(by_id[candidates])).to_pylist()
    same = np.zeros(count, dtype=bool)
    for position, base_id, base_hash in zip(candidates, base_ids, base_texts, strict=True):
        known[position] = base_id == ids[position]
        same[position] = known[position] and base_hash == hashes[position]
    kinds[same] = CARRY
    sources[same] = by_id[same]
    rest = np.flatnonzero(~same)
    if rest.size:
        keys = np.fromiter((_hash_key(hashes[position]) for position in rest), np.uint64)
        by_text = _lookup(index.hash_keys, index.hash_rows, keys)
        found = np.flatnonzero(by_text >= 0)
        confirmed = base["content_hash"].take(pa.array(by_text[found])).to_pylist()
        for offset, base_hash in zip(found, confirmed, strict=True):
            if base_hash == hashes[rest[offset]]:
                kinds[rest[offset]] = REUSE
                sources[rest[offset]] = by_text[offset]
    return Matches(kinds, sources, known)


def fetch_vectors(snapshot: Snapshot, index: BaseIndex, rows: np.ndarray) -> list[np.ndarray]:
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


def deleted(index: BaseIndex, snapshot: Snapshot) -> int:
    """Ids of the base found neither in the new snapshot's parts nor in its rejects."""
    present = pa.concat_arrays([_ids(snapshot), _ids(snapshot, REJECTS)])
    kept = pc.is_in(index.table["id"], value_set=present)
    return index.rows - pc.sum(kept).as_py()


def deleted_documents(base: Snapshot, snapshot: Snapshot) -> int:
    """Chunking: documents of the base found neither in the new snapshot's parts nor in
    its rejects (by ``doc_id``; the base's ids are its chunks')."""
    documents = pc.unique(_ids(base, column="doc_id"))
    if not len(documents):
        return 0
    present = pa.concat_arrays(
        [_ids(snapshot, column="doc_id"), _ids(snapshot, REJECTS, column="doc_id")]
    )
    return len(documents) - pc.sum(pc.is_in(documents, value_set=present)).as_py()


def _ids(snapshot: Snapshot, folder: str | None = None, column: str = "id") -> pa.Array:
    """Ids (or another string ``column``) of the snapshot's parts or ``_rejects`` folder."""
    import pyarrow.dataset as ds

    snapshot.output.refresh()
    root = snapshot.path(folder) if folder else snapshot.root
    if folder and not snapshot.fs.exists(root):
        return pa.array([], pa.string())
    dataset = ds.dataset(root, format="parquet", filesystem=snapshot.fs)
    if column not in dataset.schema.names:
        return pa.array([], pa.string())
    ids = dataset.to_table(columns=[column])[column]
    return ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
