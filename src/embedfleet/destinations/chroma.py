"""Chroma: an embedded ``chromadb.PersistentClient(path)`` or a server (``chroma run``,
reached with ``chromadb.HttpClient``), one collection kept equal to a snapshot.

- The collection is created with embedfleet's embedding function attached (its
  ``name()`` and config, the precision the vectors were made in pinned), so
  ``collection.query(query_texts=[...])`` in any process that imports embedfleet embeds
  queries with the same model. The function is built, never called: no model loads here.
- Records: ids as strings, the vectors as given, ``documents`` from the ``text`` column
  (``[output] keep_text``), and as metadata the passthrough columns (str, int, float,
  bool; other types are refused by name before any write) plus ``content_hash``. Every
  column is sent on every upsert, None included: Chroma merges metadata on upsert, and a
  None removes a value that became null.
- The sync record lives in the collection's metadata (``embedfleet:*`` keys).
- Batches stay within the client's ``get_max_batch_size()``.
- A rebuild goes to ``<collection>-embedfleet-staging`` and is renamed into place.
- Server auth: headers from the environment variable ``headers_env_var`` names (a JSON
  object, e.g. ``{"Authorization": "Bearer ..."}``), read at connect time, never recorded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pyarrow as pa

from embedfleet.destinations.base import Destination, Found, SyncState, Target, require
from embedfleet.destinations.spec import DestinationSpec
from embedfleet.embedding_functions import registry
from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import ConfigError

STAGING_SUFFIX = "-embedfleet-staging"
PREFIX = "embedfleet:"  # collection metadata keys of the sync record
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")


def _chroma_type(kind: pa.DataType) -> bool:
    """Whether Chroma metadata can hold values of this Arrow type."""
    if pa.types.is_dictionary(kind):
        return _chroma_type(kind.value_type)
    if pa.types.is_unsigned_integer(kind):
        return kind.bit_width < 64  # a uint64 may not fit Chroma's int64
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


class ChromaDestination(Destination):
    kind: ClassVar[str] = "chroma"
    keys: ClassVar[frozenset[str]] = frozenset(
        {"path", "url", "collection", "tenant", "database", "headers_env_var"}
    )

    def __init__(self, spec: DestinationSpec) -> None:
        super().__init__(spec)
        self._client: Any = None
        self._collection: Any = None  # the prepared collection (live or staging)

    @classmethod
    def check_spec(cls, spec: DestinationSpec, where: str) -> None:
        if (spec.path is None) == (spec.url is None):
            raise ConfigError(
                f"{where}: a chroma destination needs exactly one of path (an embedded "
                "PersistentClient's folder) or url (a Chroma server)"
            )
        if spec.url is not None and not re.fullmatch(r"https?://[^/?#]+/?", spec.url):
            raise ConfigError(f"{where}.url must be http(s)://host:port, got {spec.url!r}")
        name = spec.collection or ""
        if not _COLLECTION_NAME.fullmatch(name + STAGING_SUFFIX) or ".." in name:
            raise ConfigError(
                f"{where}.collection must be 3-490 characters of letters, digits, '.', '_' "
                f"and '-', starting and ending with a letter or digit, got {spec.collection!r}"
            )
        if spec.headers_env_var is not None and not spec.headers_env_var:
            raise ConfigError(f"{where}.headers_env_var must name an environment variable")

    def describe(self) -> str:
        spec = self.spec
        where = spec.url or spec.path
        scope = "".join(
            f" {key} {value!r}"
            for key, value in (("tenant", spec.tenant), ("database", spec.database))
            if value
        )
        return f"chroma collection {spec.collection!r} at {where}{scope}"

    # ------------------------------------------------------------------ the client
    def client(self) -> Any:
        if self._client is None:
            chromadb = require("chromadb", "chroma")
            registry.register_with_chroma()  # so a reopened collection rebuilds our function
            spec, scope = self.spec, {}
            if spec.tenant:
                scope["tenant"] = spec.tenant
            if spec.database:
                scope["database"] = spec.database
            if spec.path is not None:
                self._client = chromadb.PersistentClient(path=spec.path, **scope)
            else:
                assert spec.url is not None
                parts = urlsplit(spec.url)
                ssl = parts.scheme == "https"
                self._client = chromadb.HttpClient(
                    host=parts.hostname or "localhost",
                    port=parts.port or (443 if ssl else 8000),
                    ssl=ssl,
                    headers=self._headers(),
                    **scope,
                )
        return self._client

    def _headers(self) -> dict[str, str] | None:
        variable = self.spec.headers_env_var
        if variable is None:
            return None
        raw = os.environ.get(variable)
        if raw is None:
            raise ConfigError(
                f"destination {self.spec.label}: set {variable} to a JSON object of the "
                'HTTP headers the Chroma server wants (e.g. {"Authorization": "Bearer ..."})'
            )
        try:
            headers = json.loads(raw)
        except json.JSONDecodeError:
            headers = None
        if not isinstance(headers, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
        ):
            raise ConfigError(
                f"{variable} must hold a JSON object of strings (its value is not shown)"
            )
        return headers

    def max_batch_rows(self) -> int:
        largest = int(self.client().get_max_batch_size())
        return min(self.spec.batch_size or largest, largest)

    def check_columns(self, schema: pa.Schema, columns: list[str]) -> None:
        for name in columns:
            kind = schema.field(name).type
            if not _chroma_type(kind):
                raise ConfigError(
                    f"destination {self.spec.label}: passthrough column {name!r} has type "
                    f"{kind}, which Chroma metadata cannot hold (str, int, float, bool); "
                    "leave it out with the destination's columns = [...]"
                )
        if "content_hash" in columns:
            raise ConfigError(f"destination {self.spec.label}: 'content_hash' is reserved")

    # ------------------------------------------------------------------ collections
    def _name(self, staging: bool) -> str:
        assert self.spec.collection is not None
        return self.spec.collection + (STAGING_SUFFIX if staging else "")

    def _get(self, name: str) -> Any:
        from chromadb.errors import NotFoundError

        try:
            return self.client().get_collection(name)
        except (NotFoundError, ValueError):
            return None

    def inspect(self, *, staging: bool = False) -> Found:
        collection = self._get(self._name(staging))
        if collection is None:
            return Found(exists=False)
        return Found(True, collection.count(), _state(collection.metadata))

    def prepare(
        self, target: Target, state: SyncState, *, staging: bool = False, fresh: bool = False
    ) -> None:
        name = self._name(staging)
        collection = self._get(name)
        if collection is not None and fresh:
            self.client().delete_collection(name)
            collection = None
        self._collection = collection
        if collection is None:
            self._collection = self.client().create_collection(
                name,
                embedding_function=attached_function(target.embedding),
                metadata=_metadata({}, state),
            )
        else:
            self.write_state(state)

    def write_state(self, state: SyncState) -> None:
        collection = self._collection
        collection.modify(metadata=_metadata(collection.metadata or {}, state))

    def contents(self, columns: list[str], *, staging: bool = False) -> Iterator[pa.Table]:
        collection = self._get(self._name(staging))
        if collection is None:
            return
        page, offset = self.max_batch_rows(), 0
        while True:
            got = collection.get(include=["metadatas"], limit=page, offset=offset)
            ids, metadatas = got["ids"], got["metadatas"] or []
            if not ids:
                return
            data = {"id": pa.array(ids, pa.string())}
            for key in ("content_hash", *columns):
                data[key] = pa.array([(meta or {}).get(key) for meta in metadatas])
            yield pa.table(data)
            offset += len(ids)

    # ------------------------------------------------------------------ writes
    def upsert(self, batch: pa.Table) -> None:
        count = batch.num_rows
        embedding = batch["embedding"].combine_chunks()
        vectors = embedding.flatten().to_numpy(zero_copy_only=False).reshape(count, -1)
        names = [name for name in batch.schema.names if name not in ("id", "embedding", "text")]
        values = [batch[name].to_pylist() for name in names]
        metadatas = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
        documents = batch["text"].to_pylist() if "text" in batch.schema.names else None
        self._collection.upsert(
            ids=batch["id"].to_pylist(),
            embeddings=vectors,
            metadatas=metadatas,
            documents=documents,
        )

    def delete(self, ids: list[str]) -> None:
        self._collection.delete(ids=ids)

    def swap_in(self) -> None:
        staging = self._get(self._name(staging=True))
        if staging is None:  # swapped in already by a run that stopped right after
            return
        if self._get(self._name(staging=False)) is not None:
            self.client().delete_collection(self._name(staging=False))
        staging.modify(name=self._name(staging=False))
        self._collection = staging

    def drop_staging(self) -> None:
        if self._get(self._name(staging=True)) is not None:
            self.client().delete_collection(self._name(staging=True))


def attached_function(embedding: dict[str, Any]) -> EmbeddingFunction:
    """The snapshot's function as Chroma should attach it: its provider and config, with
    ``precision="auto"`` pinned to the precision the vectors were made in. Built, not run."""
    provider = embedding.get("provider")
    if not provider:
        raise ConfigError("the snapshot records no embedding provider to attach to Chroma")
    config = dict(embedding.get("config") or {})
    resolved = embedding.get("precision")
    if config.get("precision") == "auto" and isinstance(resolved, str) and resolved != "auto":
        try:
            return registry.build(provider, {**config, "precision": resolved})
        except ConfigError:
            pass  # not a precision the config takes (e.g. "int8" on torch): keep "auto"
    return registry.build(provider, config)


def _state(metadata: dict[str, Any] | None) -> SyncState | None:
    metadata = metadata or {}
    if PREFIX + "output" not in metadata:
        return None
    return SyncState(
        output_id=str(metadata[PREFIX + "output"]),
        layout=str(metadata.get(PREFIX + "layout", "")),
        snapshot=metadata.get(PREFIX + "snapshot") or None,
        target=metadata.get(PREFIX + "target") or None,
    )


def _metadata(current: dict[str, Any], state: SyncState) -> dict[str, Any]:
    """The collection's metadata with the sync record (Chroma replaces it whole; its
    ``hnsw:*`` keys cannot be sent back)."""
    kept = {key: value for key, value in current.items() if not key.startswith("hnsw:")}
    return {
        **kept,
        PREFIX + "output": state.output_id,
        PREFIX + "layout": state.layout,
        PREFIX + "snapshot": state.snapshot or "",
        PREFIX + "target": state.target or "",
    }
