"""Where a snapshot is kept in sync: ``[[destination]]`` tables of a job spec, and the
``--to`` URIs of ``embedfleet sync``.

::

    [[destination]]
    kind = "chroma"
    url = "http://chroma.internal:8000"   # a Chroma server; or path = "chroma-data" (embedded)
    collection = "docs"
    tenant = "default_tenant"             # optional
    database = "default_database"         # optional
    headers_env_var = "CHROMA_HEADERS"    # optional: the NAME of a variable holding JSON headers

    [[destination]]
    kind = "lancedb"
    uri = "s3://bucket/lancedb"           # a LanceDB database: a local folder or an object store
    table = "docs"
    storage_options = { aws_region = "eu-west-1" }   # optional; keys come from the environment

A spec names secrets, never holds them: Chroma's auth headers are read at sync time from
the variable ``headers_env_var`` names, object-store credentials from the usual environment
(or ``storage_options``, redacted wherever a spec is recorded). The same destination as a
URI (query keys are the table's keys)::

    chroma:PATH?collection=NAME                       an embedded PersistentClient
    chroma+http://HOST:PORT?collection=NAME           a server (chroma+https for TLS)
    lancedb:PATH_OR_URL?table=NAME                    a LanceDB database
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from embedfleet.errors import ConfigError

_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class DestinationSpec:
    kind: str  # "chroma" | "lancedb" (destinations/registry.py)
    name: str | None = None  # how status and records name it; default "<kind>-<collection>"
    # chroma
    path: str | None = None  # an embedded chromadb.PersistentClient's folder
    url: str | None = None  # a Chroma server, http(s)://host:port
    collection: str | None = None
    tenant: str | None = None  # None: Chroma's default tenant / database
    database: str | None = None
    headers_env_var: str | None = None  # a variable holding a JSON object of HTTP headers
    # lancedb
    uri: str | None = None  # a LanceDB database: local folder, s3://..., gs://...
    table: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    # every kind
    columns: list[str] | None = None  # passthrough columns to send; None: all of them
    batch_size: int | None = None  # rows per write; capped by the store's own maximum
    max_retries: int = 5  # attempts after the first, per batch, with exponential backoff
    retry_backoff_seconds: float = 1.0

    @property
    def label(self) -> str:
        """The destination's name: given, or ``<kind>-<collection or table>``."""
        if self.name:
            return self.name
        return _NAME.sub("_", f"{self.kind}-{self.collection or self.table or 'default'}")

    def check(self, where: str = "destination") -> None:
        """Errors name the key. The kind's own checks are its class's (``check_spec``);
        nothing here imports a store's client."""
        from embedfleet.destinations.registry import destination_class

        cls = destination_class(self.kind)
        if self.name is not None and (not self.name or _NAME.search(self.name)):
            raise ConfigError(
                f"{where}.name may hold only letters, digits, '.', '_' and '-', got {self.name!r}"
            )
        foreign = sorted(key for key in KIND_KEYS - cls.keys if self.is_set(key))
        if foreign:
            raise ConfigError(f"{where}: {foreign[0]!r} is not a key of kind {self.kind!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size must be at least 1, got {self.batch_size}")
        if self.max_retries < 0 or self.retry_backoff_seconds < 0:
            raise ConfigError(f"{where}: max_retries and retry_backoff_seconds must be >= 0")
        cls.check_spec(self, where)

    def is_set(self, key: str) -> bool:
        value = getattr(self, key)
        return value not in (None, {}, [])

    def resolve_paths(self, resolve: Any) -> None:
        """Make local paths absolute with ``resolve`` (the spec's folder as base)."""
        if self.path is not None:
            self.path = resolve(self.path)
        if self.uri is not None:
            self.uri = resolve(self.uri)

    def to_public_dict(self) -> dict[str, Any]:
        """As recorded next to an output: storage credentials redacted."""
        data = dataclasses.asdict(self)
        data["storage_options"] = {
            key: "<redacted>" if _SECRET.search(key) else value
            for key, value in self.storage_options.items()
        }
        return data


# keys that belong to some kinds only (each class lists its own in ``keys``)
KIND_KEYS = frozenset(
    {"path", "url", "collection", "tenant", "database", "headers_env_var", "uri", "table"}
    | {"storage_options"}
)
_SECRET = re.compile(r"key|secret|token|password|credential|auth", re.IGNORECASE)
_SCALARS = {"batch_size": int, "max_retries": int, "retry_backoff_seconds": float}


def parse_uri(uri: str) -> DestinationSpec:
    """A destination from ``embedfleet sync --to URI`` (see the module docstring)."""
    scheme, separator, rest = uri.partition(":")
    if not separator:
        raise ConfigError(f"--to {uri!r}: expected KIND:LOCATION?KEY=VALUE (e.g. chroma:dir?...)")
    location, _, query = rest.partition("?")
    try:
        options: dict[str, Any] = dict(
            parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        )
    except ValueError:
        options = {} if not query else {"": query}
    allowed = {item.name for item in dataclasses.fields(DestinationSpec)} - {
        "kind",
        "storage_options",
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"--to {uri!r}: unknown key {unknown[0]!r} (known: {sorted(allowed)})")
    for key, kind in _SCALARS.items():
        if key in options:
            try:
                options[key] = kind(options[key])
            except ValueError as exc:
                raise ConfigError(f"--to {uri!r}: {key} must be a number") from exc
    if "columns" in options:
        options["columns"] = [item for item in options["columns"].split(",") if item]
    if scheme in ("chroma+http", "chroma+https"):
        host, _, collection = location.removeprefix("//").partition("/")
        options.setdefault("collection", collection or None)
        spec = DestinationSpec("chroma", url=f"{scheme.split('+')[1]}://{host}", **options)
    elif scheme == "chroma":
        spec = DestinationSpec("chroma", path=location, **options)
    elif scheme == "lancedb":
        spec = DestinationSpec("lancedb", uri=location, **options)
    else:
        raise ConfigError(f"--to {uri!r}: unknown kind {scheme!r} (chroma, chroma+http, lancedb)")
    spec.check(where=f"--to {uri!r}")
    return spec
