"""``embedfleet plan --exact``: what a run would embed, counted rather than estimated.

It reads every record of the source (ids and texts) and, for a re-run, the base
snapshot's ``id`` and ``content_hash`` columns (``incremental.build_index``; never
its vectors), and sorts each row with the matching a run uses
(``incremental.match``), so its counts are the run's: new, changed, unchanged
(carried over), reused (a new or changed row whose text the base already has a
vector for), deleted, rejected, and the tokens of what would be sent to the model,
counted with the provider's own counter as a run bills them. Nothing is embedded
or written. It reads the whole source, so it is opt-in; files are read on a few
threads at once (the reads wait on I/O). With ``[chunking]`` the rows a run compares
are chunks, so new, changed, unchanged, reused, deleted and ``to_embed`` count chunks
(``chunked``), cut with the run's own chunker; ``records`` and ``rejected`` stay in
documents.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import EmbedfleetError
from embedfleet.job import incremental, sources
from embedfleet.job.billing import billed_tokens
from embedfleet.job.chunking import Chunker
from embedfleet.job.records import add_kinds, count_kinds
from embedfleet.job.sources import Shard
from embedfleet.job.spec import SourceSpec
from embedfleet.job.store import Snapshot
from embedfleet.output_format import content_hash

READ_THREADS = 8


@dataclass
class ExactCounts:
    """What a run would do with every record of the source.

    ``records = committed + rejected + new + changed + unchanged`` (rows are documents
    unless ``chunked``: then the rows are chunks and the sum is over chunks); ``reused``
    are new or changed rows that cost nothing; ``to_embed = new + changed - reused``.
    """

    chunked: bool = False  # rows are chunks ([chunking]); records and rejected documents

    records: int = 0  # source records read (files that could be read)
    committed: int = 0  # rows of shards the resumed snapshot already committed
    rejected: int = 0  # records that would go to _rejects/
    new: int = 0  # ids not in the base (every row, without a base)
    changed: int = 0  # ids in the base whose text changed
    unchanged: int = 0  # same id and text as in the base: carried over
    reused: int = 0  # new or changed rows whose text has a vector in the base
    deleted: int = 0  # ids of the base no longer in the source
    to_embed: int = 0  # rows a run would send to the model
    tokens: int = 0  # their input tokens, as the provider bills them
    rejected_by_kind: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> why its shard would fail

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_exactly(
    shards: list[Shard],
    source: SourceSpec,
    counter: EmbeddingFunction,
    base_snapshot: Snapshot | None,
    committed: set[str],
    chunker: Chunker | None = None,
) -> ExactCounts:
    """Read every shard (those in ``committed`` only for their ids) and count, against
    the ids and hashes of ``base_snapshot`` (None: every row is new); with a
    ``chunker``, rows are each document's chunks, as a run cuts them."""
    base = incremental.build_index(base_snapshot) if base_snapshot is not None else None
    counts = ExactCounts(chunked=chunker is not None)
    present: list[pa.Array] = []
    with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(shards)))) as pool:
        tasks = [
            pool.submit(
                _count_shard, shard, source, base, shard.shard_id in committed, counter, chunker
            )
            for shard in shards
        ]
        for shard, task in zip(shards, tasks, strict=True):
            try:
                shard_counts, ids = task.result()
            except (EmbedfleetError, OSError) as exc:
                counts.unreadable[shard.file_named_in(str(exc))] = str(exc)
                continue
            for name in ("records", "committed", "rejected", "new", "changed", "unchanged"):
                setattr(counts, name, getattr(counts, name) + getattr(shard_counts, name))
            counts.reused += shard_counts.reused
            counts.to_embed += shard_counts.to_embed
            counts.tokens += shard_counts.tokens
            counts.rejected_by_kind = add_kinds(
                counts.rejected_by_kind, shard_counts.rejected_by_kind
            )
            present.append(ids)
    if base is not None and base.rows:
        seen = pa.concat_arrays(present) if present else pa.array([], pa.string())
        counts.deleted = base.rows - pc.sum(pc.is_in(base.table["id"], value_set=seen)).as_py()
    return counts


def _count_shard(
    shard: Shard,
    source: SourceSpec,
    base: incremental.BaseIndex | None,
    committed: bool,
    counter: EmbeddingFunction,
    chunker: Chunker | None,
) -> tuple[ExactCounts, pa.Array]:
    """One shard's counts, and the ids it holds (rows and rejects, as a run keeps them)."""
    ids: list[str] = []
    texts: list[str] = []
    rejects = []
    documents = 0
    for piece in sources.read_shard(shard, source):
        documents += len(piece.ids)
        rejects += piece.rejects
        if chunker is None:
            ids += piece.ids
            texts += piece.texts
            continue
        for doc_id, chunks in zip(piece.ids, chunker.split(piece.texts), strict=True):
            ids += [chunk.chunk_id(doc_id) for chunk in chunks]
            texts += [chunk.text for chunk in chunks]
    counts = ExactCounts(records=documents + len(rejects), rejected=len(rejects))
    counts.rejected_by_kind = count_kinds(rejects)
    present = pa.array(ids + [record.id for record in rejects], pa.string())
    if committed:
        counts.committed = len(ids)
        return counts, present
    if base is None:
        counts.new = counts.to_embed = len(ids)
        counts.tokens = billed_tokens(counter, texts)
        return counts, present
    matches = incremental.match(ids, [content_hash(text) for text in texts], base)
    carry, reuse = matches.kinds == incremental.CARRY, matches.kinds == incremental.REUSE
    embed = matches.kinds == incremental.EMBED
    counts.unchanged = int(carry.sum())
    counts.changed = int((matches.known & ~carry).sum())
    counts.new = int((~matches.known).sum())
    counts.reused = int(reuse.sum())
    counts.to_embed = int(embed.sum())
    counts.tokens = billed_tokens(counter, [texts[i] for i in np.flatnonzero(embed).tolist()])
    return counts, present
