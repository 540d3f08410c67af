"""Vectors as Arrow tables and Parquet files: the columns and metadata users build on.

Columns: ``id`` (string), ``embedding`` (``fixed_size_list<float32>[dim]``),
``content_hash`` (sha256 hex of the UTF-8 source text), then passthrough
columns. The schema metadata key ``embedfleet`` holds JSON describing how the
vectors were made (provider, config, precision, dimension, normalization,
model revision, embedfleet version); it never holds a secret.

Files are written in one piece (:mod:`embedfleet.atomic_files`), so a glob
reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedfleet._version import __version__
from embedfleet.atomic_files import write_bytes_atomically
from embedfleet.embedding_functions.base import Embedding, EmbeddingFunction
from embedfleet.errors import ConfigError

METADATA_KEY = b"embedfleet"
CONTENT_HASH_ALGORITHM = "sha256(utf-8 text)"


def content_hash(text: str) -> str:
    """sha256 hex digest of the UTF-8 text: decides whether a row needs embedding again."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embedding_metadata(ef: EmbeddingFunction) -> dict[str, Any]:
    """The JSON recorded next to vectors made by ``ef``."""
    return {
        **ef.describe(),
        "content_hash": CONTENT_HASH_ALGORITHM,
        "embedfleet_version": __version__,
    }


def embeddings_table(
    ids: Sequence[str],
    texts: Sequence[str],
    vectors: Sequence[Embedding],
    *,
    columns: Mapping[str, Sequence[Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> pa.Table:
    """One row per text: id, embedding, content_hash, then passthrough ``columns``."""
    count = len(ids)
    if len(texts) != count or len(vectors) != count:
        raise ConfigError(
            f"ids, texts and vectors differ in length ({count}, {len(texts)}, {len(vectors)})"
        )
    matrix = np.asarray(vectors, dtype=np.float32).reshape(count, -1)
    dimension = matrix.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dimension)
    data: dict[str, pa.Array] = {
        "id": pa.array(list(ids), type=pa.string()),
        "embedding": embedding,
        "content_hash": pa.array([content_hash(text) for text in texts], type=pa.string()),
    }
    for name, values in (columns or {}).items():
        if name in data:
            raise ConfigError(f"passthrough column {name!r} clashes with an output column")
        if len(values) != count:
            raise ConfigError(f"passthrough column {name!r} has {len(values)} values, not {count}")
        data[name] = pa.array(list(values))
    table = pa.table(data)
    if metadata is not None:
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return table


def write_parquet(table: pa.Table, uri: str) -> None:
    """Write ``table`` to ``uri`` (any fsspec URL) in one piece."""
    fs, path = fsspec.core.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    write_bytes_atomically(fs, path, parquet_bytes(table))


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def read_metadata(uri: str) -> dict[str, Any]:
    """The ``embedfleet`` metadata of a Parquet file written by embedfleet."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as handle:
        schema = pq.read_schema(handle)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ConfigError(f"{uri} has no embedfleet metadata")
    return json.loads(raw)
