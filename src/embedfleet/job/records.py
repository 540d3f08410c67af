"""The step between reading a shard and embedding it: documents in, rows to embed out.

A shard task reads its documents (:func:`sources.read_shard`) through
:func:`read_records`; what comes back is what it embeds and writes::

    row read -> its text: the text column, or the [source] template rendered
             -> a reject: a missing or null template field, a null or empty text
                (with on_empty = "error" the shard fails, naming the row)
             -> with [chunking], the document's chunks (job/chunking.py)
             -> rows to embed

Without chunking a row is a document: its id, its text, its passthrough values. With
chunking a row is a chunk: id ``{doc_id}#{key}`` (a key anchored in the chunk's own
text, so an edit elsewhere in the document leaves the id alone), the chunk's text
``document[chunk_start:chunk_end]``, the columns ``doc_id``, ``chunk_index``,
``chunk_start``, ``chunk_end``, and its document's passthrough values.
``[output] keep_text`` adds a ``text`` column: the text the vector was made from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import ConfigError
from embedfleet.job import incremental, sources
from embedfleet.job.chunking import Chunker
from embedfleet.job.sources import Shard, ShardRows
from embedfleet.job.spec import CHUNK_COLUMNS, JobSpec, SourceSpec
from embedfleet.job.templates import Template


@dataclass
class ShardRecords:
    """One shard's rows to embed (documents, or chunks), and its rejects."""

    rows: int = 0  # documents read, rejected ones included
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)  # each row's document
    columns: dict[str, list[Any]] = field(default_factory=dict)  # chunk, text, passthrough
    reject_ids: list[str] = field(default_factory=list)
    reject_docs: list[str] = field(default_factory=list)  # each reject's document
    reasons: list[str] = field(default_factory=list)

    def reject(self, id_: str, doc_id: str, reason: str) -> None:
        self.reject_ids.append(id_)
        self.reject_docs.append(doc_id)
        self.reasons.append(reason)


def chunker_for(spec: JobSpec, function: EmbeddingFunction) -> Chunker | None:
    """The run's chunker, counting with the function's own counter; None: no chunking.

    A local model's counter reads the model's tokenizer files, never its weights."""
    chunking = spec.chunking
    if chunking is None:
        return None
    try:
        return Chunker(
            function.token_counter(),
            max_tokens=chunking.max_tokens,
            overlap=chunking.overlap,
            markdown=chunking.markdown,
        )
    except ConfigError as exc:
        raise ConfigError(f"[chunking]: {exc}") from exc


def read_records(shard: Shard, spec: JobSpec, chunker: Chunker | None) -> ShardRecords:
    """Read one shard and turn its documents into the rows to embed (module docstring)."""
    passthrough = spec.source.columns
    records = ShardRecords(columns=_empty_columns(spec))
    for piece in sources.read_shard(shard, spec.source):
        records.rows += len(piece.ids)
        accepted = list(_accepted(piece, records, spec.source, shard))
        if chunker is None:
            for index, text in accepted:
                _add(records, piece.ids[index], piece.ids[index], text, {})
                for name in passthrough:
                    records.columns[name].append(piece.columns[name][index])
            continue
        found = chunker.split([text for _, text in accepted])
        for (index, _), chunks in zip(accepted, found, strict=True):
            doc_id = piece.ids[index]
            for chunk in chunks:
                output = {
                    "doc_id": doc_id,
                    "chunk_index": chunk.index,
                    "chunk_start": chunk.start,
                    "chunk_end": chunk.end,
                }
                _add(records, chunk.chunk_id(doc_id), doc_id, chunk.text, output)
                for name in passthrough:
                    records.columns[name].append(piece.columns[name][index])
    return records


def _empty_columns(spec: JobSpec) -> dict[str, list[Any]]:
    names = [name for name in spec.output_columns() if name in (*CHUNK_COLUMNS, "text")]
    return {name: [] for name in [*names, *spec.source.columns]}


def _add(records: ShardRecords, id_: str, doc_id: str, text: str, output: dict[str, Any]) -> None:
    records.ids.append(id_)
    records.doc_ids.append(doc_id)
    records.texts.append(text)
    for name, value in output.items():
        records.columns[name].append(value)
    if "text" in records.columns:
        records.columns["text"].append(text)


def document_texts(piece: ShardRows, source: SourceSpec) -> list[tuple[str | None, str | None]]:
    """Each row's (text, None), or (None, why not): the text column's value, or the
    template rendered from its fields."""
    if source.template is None:
        return [(text, None) for text in piece.texts]
    return Template.parse(source.template).render_columns(piece.fields, len(piece.ids))


def _accepted(
    piece: ShardRows, records: ShardRecords, source: SourceSpec, shard: Shard
) -> Iterator[tuple[int, str]]:
    """The rows of ``piece`` with a text; the others go to the rejects, or, with
    ``on_empty = "error"``, fail the shard naming the row."""
    for index, (text, why) in enumerate(document_texts(piece, source)):
        row_id = piece.ids[index]
        if text is None or not text.strip():
            reason = why or ("text is null" if text is None else "text is empty")
            if source.on_empty == "error":
                raise ConfigError(
                    f"{shard.uri}: row {row_id!r}: {reason} (source.on_empty = 'error')"
                )
            records.reject(row_id, row_id, reason)
            continue
        yield index, text


#: How a document counts when its rows were treated differently: the first that applies.
_DOCUMENT_KINDS = ("rejected", "embedded", "reused", "carried")


def document_counts(
    doc_ids: list[str], kinds: np.ndarray | None, refused: Iterable[int]
) -> dict[str, int]:
    """Documents by what happened to their rows (chunks): ``rejected`` if the provider
    refused one, else ``embedded`` if one was embedded, else ``reused`` if one's vector
    came from another id, else ``carried``. Without chunking, rows are documents."""
    names = {
        incremental.EMBED: "embedded",
        incremental.CARRY: "carried",
        incremental.REUSE: "reused",
    }
    rank = {name: position for position, name in enumerate(_DOCUMENT_KINDS)}
    state: dict[str, str] = {}
    for row, doc_id in enumerate(doc_ids):
        kind = "embedded" if kinds is None else names[int(kinds[row])]
        if doc_id not in state or rank[kind] < rank[state[doc_id]]:
            state[doc_id] = kind
    for row in refused:
        state[doc_ids[row]] = "rejected"
    counts = dict.fromkeys(_DOCUMENT_KINDS, 0)
    for kind in state.values():
        counts[kind] += 1
    return counts
