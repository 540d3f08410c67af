"""The step between reading a shard and embedding it: documents in, rows to embed out.

A shard task reads its documents (:func:`sources.read_shard`: the text column, or the
``[source] template`` rendered; records that cannot be embedded already set apart as
rejects, ``records.py``) through :func:`read_rows`; what comes back is what it embeds
and writes::

    document read -> a reject (records.py), or its text
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

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import ConfigError
from embedfleet.job import incremental, sources
from embedfleet.job.chunking import Chunker
from embedfleet.job.records import BadRecord, Where
from embedfleet.job.sources import Shard
from embedfleet.job.spec import CHUNK_COLUMNS, JobSpec


@dataclass
class RowsToEmbed:
    """One shard's rows to embed (documents, or chunks), and its rejected records."""

    records: int = 0  # source records read, rejected ones included
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)  # each row's document
    wheres: list[Where] = field(default_factory=list)  # each row's document in its file
    files: list[str] = field(default_factory=list)  # each row's file (a packed shard reads many)
    columns: dict[str, list[Any]] = field(default_factory=dict)  # chunk, text, passthrough
    rejects: list[BadRecord] = field(default_factory=list)
    file: str = ""  # the file rows are being added from

    def add(self, id_: str, doc_id: str, text: str, where: Where, output: dict[str, Any]) -> None:
        self.ids.append(id_)
        self.doc_ids.append(doc_id)
        self.texts.append(text)
        self.wheres.append(where)
        self.files.append(self.file)
        for name, value in output.items():
            self.columns[name].append(value)
        if "text" in self.columns:
            self.columns["text"].append(text)


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


def read_rows(shard: Shard, spec: JobSpec, chunker: Chunker | None) -> RowsToEmbed:
    """Read one shard and turn its documents into the rows to embed (module docstring)."""
    passthrough = spec.source.columns
    rows = RowsToEmbed(columns=_empty_columns(spec))
    for piece in sources.read_shard(shard, spec.source):
        rows.records += piece.records
        rows.rejects += piece.rejects
        rows.file = piece.file
        if chunker is None:
            for index, text in enumerate(piece.texts):
                doc_id = piece.ids[index]
                rows.add(doc_id, doc_id, text, piece.wheres[index], {})
                for name in passthrough:
                    rows.columns[name].append(piece.columns[name][index])
            continue
        for index, chunks in enumerate(chunker.split(piece.texts)):
            doc_id = piece.ids[index]
            for chunk in chunks:
                output = {
                    "doc_id": doc_id,
                    "chunk_index": chunk.index,
                    "chunk_start": chunk.start,
                    "chunk_end": chunk.end,
                }
                rows.add(chunk.chunk_id(doc_id), doc_id, chunk.text, piece.wheres[index], output)
                for name in passthrough:
                    rows.columns[name].append(piece.columns[name][index])
    return rows


def _empty_columns(spec: JobSpec) -> dict[str, list[Any]]:
    names = [name for name in spec.output_columns() if name in (*CHUNK_COLUMNS, "text")]
    return {name: [] for name in [*names, *spec.source.columns]}


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
