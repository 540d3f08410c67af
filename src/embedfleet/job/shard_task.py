"""One shard, read to committed, in a Ray task.

The task runs where Ray puts it, not on the driver: it reads its own rows, takes the
vectors an incremental base already has, reserves its tokens in the run's budget,
embeds the rest through the fleet and commits part, rejects and marker. So the
driver never holds a shard's rows, and a task that dies has committed nothing (a
part without its marker does not exist). It reserves no CPU: reading and writing
wait on I/O, and the fleet's replicas own the cores, so ``replicas = 2,
num_cpus = 1`` on a 2-CPU machine cannot deadlock.

Between reading and embedding, :mod:`.embed_rows` turns documents into the rows to
embed (with ``[chunking]``, each document's chunks). Nothing disappears silently:
every source record is in the part or in ``_rejects/`` (``records.py``: invalid JSON
or UTF-8, a wrong CSV field count, a missing, null, empty, blank or non-string text or
template field, a bad id, a row the provider refuses as bad input), with its kind,
reason and place in the file; the marker counts them in documents, so records read =
embedded + carried + reused + rejected, with chunks counted beside them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import BadRequestError, EmbedfleetError
from embedfleet.job import incremental
from embedfleet.job.billing import billed_tokens
from embedfleet.job.budgets import LockedBudget, RayBudget
from embedfleet.job.embed_rows import RowsToEmbed, chunker_for, document_counts, read_rows
from embedfleet.job.records import BadRecord, add_kinds, count_kinds, rejects_table
from embedfleet.job.sources import Shard
from embedfleet.job.spec import JobSpec
from embedfleet.job.store import OutputStore, ShardMarker, Snapshot
from embedfleet.output_format import METADATA_KEY, content_hash, embeddings_table

SHARD_TASK_CPUS = 0  # reading and writing wait on I/O; the replicas own the cores


@dataclass(frozen=True)
class ShardContext:
    """What every shard task of a run shares; ``ray.put`` once, passed to each task."""

    spec: JobSpec
    fleet: EmbeddingFunction  # the run's RemoteEmbeddingFunction
    run_id: str  # the snapshot the task commits into
    metadata: dict[str, Any]  # recorded with the vectors (the part's ``embedfleet`` key)
    function: EmbeddingFunction  # the job's own (not its fleet): counts billed tokens
    budget: LockedBudget | RayBudget | None = None  # the run's token budget; None: none
    base: incremental.BaseIndex | None = None  # incremental: where unchanged rows live


@dataclass(frozen=True)
class OverBudget:
    """A shard whose tokens the budget refused: neither embedded nor committed."""

    shard_id: str
    tokens: int


def embed_shard(shard: Shard, context: ShardContext) -> ShardMarker | OverBudget:
    """Read one shard, count its tokens, reserve them in the budget (if any), embed its
    texts on the fleet, commit part + rejects + marker.

    With a base (an incremental run), rows whose vectors the base snapshot already
    holds are taken from it, and only the rest is counted, reserved and embedded.
    """
    spec, fleet, base = context.spec, context.fleet, context.base
    started = time.perf_counter()
    # documents -> rows to embed: rejects set apart, chunks (job/embed_rows.py)
    rows = read_rows(shard, spec, chunker_for(spec, context.function))
    ids, texts, wheres, columns = rows.ids, rows.texts, rows.wheres, rows.columns
    rejects: list[BadRecord] = rows.rejects
    read_done = time.perf_counter()
    output = OutputStore(spec.output.uri, spec.output.storage_options)
    snapshot = output.snapshot(context.run_id)
    matches = None
    to_embed = list(range(len(texts)))
    if base is not None:
        matches = incremental.match(ids, [content_hash(text) for text in texts], base)
        to_embed = np.flatnonzero(matches.kinds == incremental.EMBED).tolist()
    shard_tokens = billed_tokens(context.function, [texts[i] for i in to_embed])
    if context.budget is not None and to_embed and not context.budget.reserve(shard_tokens):
        return OverBudget(shard.shard_id, shard_tokens)
    marker = ShardMarker(
        shard_id=shard.shard_id,
        source_version=shard.source_version,
        relative_path=shard.relative_path,
        unit=shard.unit,
        start=shard.start,
        end=shard.end,
        rows=rows.records,
        characters=sum(len(texts[i]) for i in to_embed),
        tokens=shard_tokens,
        read_seconds=round(read_done - started, 3),
    )
    marker = _counted(marker, rows, matches, {}, spec.chunking is not None)
    if base is not None and matches is not None and not rejects:
        part = incremental.whole_part(matches, base)
        base_snapshot = output.snapshot(base.run_id)
        if part is not None and _same_columns(base_snapshot, part, columns, context.metadata):
            copied = f"{base_snapshot.relative}/{part}"
            return snapshot.adopt_part(
                replace(marker, copied_from=copied), base_snapshot.path(part)
            )
    vectors: list[Any] = [None] * len(texts)
    counted_before = (fleet.stats.tokens, fleet.stats.padded_tokens)
    fresh, refused = embed_or_isolate(fleet, [texts[i] for i in to_embed])
    if len(to_embed) > 1 and len(refused) == len(to_embed):  # a setup problem, not bad rows
        raise BadRequestError(
            f"{shard.describe()}: the provider refused every one of the shard's "
            f"{len(to_embed)} rows (check the key and the config); first refusal: "
            f"{next(iter(refused.values()))}"
        )
    for position, vector in zip(to_embed, fresh, strict=True):
        vectors[position] = vector
    if matches is not None and base is not None:
        taken = np.flatnonzero(matches.kinds != incremental.EMBED)
        old = incremental.fetch_vectors(output.snapshot(base.run_id), base, matches.sources[taken])
        for position, vector in zip(taken.tolist(), old, strict=True):
            vectors[position] = vector
    refused = {to_embed[index]: reason for index, reason in refused.items()}
    marker = _counted(marker, rows, matches, refused, spec.chunking is not None)
    if refused:  # poison rows: rejected with the provider's message, the rest kept
        keep = [index for index in range(len(texts)) if index not in refused]
        for index, reason in sorted(refused.items()):
            rejects.append(
                BadRecord(
                    ids[index],
                    "refused_by_provider",
                    reason,
                    wheres[index],
                    file=rows.files[index],
                    doc_id=rows.doc_ids[index],
                )
            )
        ids, texts, vectors = ([items[i] for i in keep] for items in (ids, texts, vectors))
        columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    embed_done = time.perf_counter()
    part = (
        embeddings_table(ids, texts, vectors, columns=columns, metadata=context.metadata)
        if texts
        else None
    )
    marker = replace(
        marker,
        embed_seconds=round(embed_done - read_done, 3),
        model_tokens=fleet.stats.tokens - counted_before[0],  # as the model counted them
        padded_tokens=fleet.stats.padded_tokens - counted_before[1],
    )
    order = [piece.relative_path for piece in shard.pieces] if shard.packed else []
    table = rejects_table(shard.relative_path, rejects, order) if rejects else None
    committed = snapshot.commit_shard(marker, part, table)
    return replace(committed, write_seconds=round(time.perf_counter() - embed_done, 3))


def embed_or_isolate(
    function: EmbeddingFunction, texts: list[str]
) -> tuple[list[Any], dict[int, str]]:
    """Embed ``texts``; if the provider refuses a batch as bad input, halve it until
    the refused rows are found. Returns vectors (None for refused rows) and, per
    refused row index, the provider's message."""
    if not texts:
        return [], {}
    try:
        return list(function(texts)), {}
    except EmbedfleetError as exc:
        cause = getattr(exc, "cause", exc)
        if not isinstance(cause, BadRequestError):
            raise
        if len(texts) == 1:
            return [None], {0: f"refused by the provider: {cause}"}
    middle = len(texts) // 2
    left, left_refused = embed_or_isolate(function, texts[:middle])
    right, right_refused = embed_or_isolate(function, texts[middle:])
    refused = {**left_refused, **{middle + index: why for index, why in right_refused.items()}}
    return left + right, refused


def _counted(
    marker: ShardMarker,
    rows: RowsToEmbed,
    matches: incremental.Matches | None,
    refused: dict[int, str],
    chunking: bool,
) -> ShardMarker:
    """The marker with the shard's counts in documents (embedded, carried, reused, and
    rejected: records set apart when read, and documents with a row the provider
    refused) and, with chunking, its rows (chunks) by kind beside them."""
    kinds = matches.kinds if matches is not None else None
    documents = document_counts(rows.doc_ids, kinds, refused)
    chunks = None
    if chunking:
        carried = int((kinds == incremental.CARRY).sum()) if kinds is not None else 0
        reused = int((kinds == incremental.REUSE).sum()) if kinds is not None else 0
        chunks = {
            "rows": len(rows.ids),
            "embedded": len(rows.ids) - carried - reused - len(refused),
            "carried": carried,
            "reused": reused,
            "rejected": len(refused),
        }
    refusals = {"refused_by_provider": documents["rejected"]} if documents["rejected"] else {}
    return replace(
        marker,
        embedded=documents["embedded"],
        carried=documents["carried"],
        reused=documents["reused"],
        rejected=len(rows.rejects) + documents["rejected"],
        reject_kinds=add_kinds(count_kinds(rows.rejects), refusals),
        chunks=chunks,
    )


def _same_columns(
    base: Snapshot, part: str, columns: dict[str, list[Any]], metadata: dict[str, Any]
) -> bool:
    """Whether the base part is what this run would write: the same metadata (version
    included) and the same passthrough values and types (a copy keeps its own)."""
    with base.fs.open(base.path(part), "rb") as handle:
        table = pq.read_table(handle, columns=list(columns))
    recorded = (table.schema.metadata or {}).get(METADATA_KEY, b"").decode()
    if recorded != json.dumps(metadata, sort_keys=True):
        return False
    return all(
        table[name].combine_chunks().equals(pa.array(values)) for name, values in columns.items()
    )
