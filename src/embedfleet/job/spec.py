"""Job specs: TOML <-> dataclasses, with errors that name the offending key.

The TOML shape is the contract users and scripts rely on::

    [source]      uri, format, text_column, template, id_column, columns, on_empty,
                  storage_options
    [embedding]   provider, [embedding.config]
    [fleet]       replicas, num_cpus, num_gpus, address, max_pending_per_replica, batch_size,
                  resources, start_timeout
    [output]      uri, rows_per_shard, mode, keep_snapshots, keep_text, storage_options
    [budget]      max_tokens, max_cost, price_per_million_tokens   (all optional)
    [chunking]    max_tokens, overlap, markdown   (absent: one vector per row)

Every option the job layer has is a key here; command-line flags override.

``[budget]`` limits one run (not the snapshot's total: a resumed run starts a
fresh budget). ``max_tokens`` counts input tokens as the provider counts them
(conservatively where its tokenizer is not at hand); ``max_cost`` is USD at
``price_per_million_tokens``, or at the estimate table in
:mod:`embedfleet.pricing` when that is unset. A run that reaches its budget
stops before the shard that would exceed it, commits what is in flight, and is
resumed by a re-run with a higher budget. The budget is not part of the
fingerprint: changing it never invalidates a snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from embedfleet.errors import ConfigError
from embedfleet.job.chunking import CHUNKER_VERSION
from embedfleet.job.templates import Template

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_SECRET_KEY = re.compile(r"key|secret|token|password|credential|auth", re.IGNORECASE)
FORMATS = ("parquet", "jsonl", "csv", "text", "text_file")
ON_EMPTY = ("reject", "error")
MODES = ("resume", "overwrite", "incremental")
#: A chunk row's columns after ``content_hash`` (``chunk_start``/``chunk_end``: offsets
#: into the document's text, so ``text[chunk_start:chunk_end]`` is the chunk).
CHUNK_COLUMNS = ("doc_id", "chunk_index", "chunk_start", "chunk_end")


@dataclass
class SourceSpec:
    uri: str
    format: str | None = None  # inferred from the extension when None
    text_column: str = "text"
    id_column: str | None = None
    columns: list[str] = field(default_factory=list)
    on_empty: str = "reject"
    storage_options: dict[str, Any] = field(default_factory=dict)
    template: str | None = (
        None  # "{title}\n\n{body}": the text from these columns (job/templates.py)
    )

    def check(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"source.format must be one of {FORMATS}, got {self.format!r}")
        if self.on_empty not in ON_EMPTY:
            raise ConfigError(f"source.on_empty must be one of {ON_EMPTY}, got {self.on_empty!r}")
        reserved = {"id", "embedding", "content_hash"} & set(self.columns)
        if reserved:
            raise ConfigError(f"source.columns cannot include output columns {sorted(reserved)}")
        self.template_fields()

    def template_fields(self) -> tuple[str, ...]:
        """The columns ``template`` names (none without a template)."""
        return () if self.template is None else Template.parse(self.template).fields


@dataclass
class ChunkingSpec:
    """``[chunking]``: one row per chunk of each document (see job/chunking.py)."""

    max_tokens: int | None = None  # a chunk's own tokens; None: all the model reads
    overlap: int = 0  # tokens a chunk repeats from the end of the one before
    markdown: bool = False  # keep headings and code blocks whole where they fit

    def check(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"chunking.max_tokens must be positive, got {self.max_tokens}")
        if self.overlap < 0:
            raise ConfigError(f"chunking.overlap must be 0 or more, got {self.overlap}")
        if self.max_tokens is not None and self.overlap > self.max_tokens // 2:
            raise ConfigError(
                f"chunking.overlap ({self.overlap}) must be at most half of chunking.max_tokens "
                f"({self.max_tokens})"
            )


@dataclass
class EmbeddingSpec:
    provider: str = "default"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class FleetSpec:
    replicas: int = 1
    num_cpus: float | None = None
    num_gpus: float = 0
    address: str | None = None
    max_pending_per_replica: int = 2
    batch_size: int | None = None
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray node resources
    start_timeout: float = 120.0  # seconds for every replica to start (GPU nodes scaling up)

    def check(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"fleet.replicas must be at least 1, got {self.replicas}")
        if self.start_timeout <= 0:
            raise ConfigError(f"fleet.start_timeout must be positive, got {self.start_timeout}")


@dataclass
class OutputSpec:
    uri: str
    rows_per_shard: int = 10_000
    mode: str = "resume"
    keep_snapshots: int = 3
    storage_options: dict[str, Any] = field(default_factory=dict)
    keep_text: bool = False  # a ``text`` column: the text each vector was made from

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"output.mode must be one of {MODES}, got {self.mode!r}")
        if self.rows_per_shard < 1:
            raise ConfigError(
                f"output.rows_per_shard must be at least 1, got {self.rows_per_shard}"
            )
        if self.keep_snapshots < 1:
            raise ConfigError(
                f"output.keep_snapshots must be at least 1, got {self.keep_snapshots}"
            )


@dataclass
class BudgetSpec:
    """Per-run limits; None: no limit. See the module docstring."""

    max_tokens: int | None = None
    max_cost: float | None = None  # USD
    price_per_million_tokens: float | None = None  # USD; overrides the estimate table

    def check(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(
                f"budget.max_tokens must be a positive integer, got {self.max_tokens}"
            )
        if self.max_cost is not None and not (self.max_cost > 0 and math.isfinite(self.max_cost)):
            raise ConfigError(f"budget.max_cost must be a positive number, got {self.max_cost}")
        price = self.price_per_million_tokens
        if price is not None and not (price >= 0 and math.isfinite(price)):
            raise ConfigError(
                "budget.price_per_million_tokens must be a non-negative number "
                f"(0 for a self-hosted server), got {price}"
            )

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None


@dataclass
class JobSpec:
    source: SourceSpec
    output: OutputSpec
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    fleet: FleetSpec = field(default_factory=FleetSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    chunking: ChunkingSpec | None = None

    @classmethod
    def from_toml(cls, path: str | Path) -> JobSpec:
        """Load a spec; relative local paths are resolved against the spec's folder."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"job spec not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        spec = cls.from_dict(data, where=str(path))
        base = path.resolve().parent
        spec.source.uri = _resolve_local(spec.source.uri, base)
        spec.output.uri = _resolve_local(spec.output.uri, base)
        return spec

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "spec") -> JobSpec:
        spec = _build(cls, data, "", where)
        spec.check()
        return spec

    def check(self) -> None:
        if "api_key" in self.embedding.config:
            raise ConfigError(
                "embedding.config.api_key: a job spec is recorded next to its output, so it "
                "must not hold a key; set api_key_env_var to the name of an environment "
                "variable that holds it"
            )
        self.source.check()
        self.fleet.check()
        self.output.check()
        self.budget.check()
        if self.chunking is not None:
            self.chunking.check()
        taken = set(self.source.columns) & set(self.output_columns())
        if taken:
            raise ConfigError(f"source.columns cannot include output columns {sorted(taken)}")

    def output_columns(self) -> tuple[str, ...]:
        """The columns a part has besides its passthrough columns, in order."""
        chunks = CHUNK_COLUMNS if self.chunking is not None else ()
        return (
            "id",
            "embedding",
            "content_hash",
            *chunks,
            *(("text",) if self.output.keep_text else ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_public_dict(self) -> dict[str, Any]:
        """The spec as recorded next to the output: storage credentials redacted."""
        data = self.to_dict()
        for section in ("source", "output"):
            options = data[section]["storage_options"]
            data[section]["storage_options"] = {
                key: "<redacted>" if _SECRET_KEY.search(key) else value
                for key, value in options.items()
            }
        return data

    def fingerprint(self, provider_name: str, provider_config: dict[str, Any]) -> str:
        """What decides whether two runs produce interchangeable vectors.

        The embedding provider and its config, the source's text and id columns, and,
        where set, the template, the chunking and ``keep_text``: changing any of them
        means a snapshot cannot be resumed into (an incremental run re-embeds all).
        """
        identity: dict[str, Any] = {
            "provider": provider_name,
            "config": provider_config,
            "text_column": self.source.text_column,
            "id_column": self.source.id_column,
            "columns": self.source.columns,
        }
        if self.source.template is not None:
            identity["template"] = self.source.template
        if self.chunking is not None:
            identity["chunking"] = {**dataclasses.asdict(self.chunking), "version": CHUNKER_VERSION}
        if self.output.keep_text:
            identity["keep_text"] = True
        blob = json.dumps(identity, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def changed_settings(recorded: dict[str, Any], spec: JobSpec) -> list[str]:
    """Which of the settings the fingerprint holds (besides the embedding function) differ
    between a snapshot's recorded spec and ``spec``, each as "key: old -> new"."""
    current = spec.to_public_dict()
    keys = [("chunking",), ("source", "template"), ("source", "text_column")]
    keys += [("source", "id_column"), ("source", "columns"), ("output", "keep_text")]
    changes = []
    for path in keys:
        old, new = _dig(recorded, path), _dig(current, path)
        if old != new:
            changes.append(f"{'.'.join(path)}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _resolve_local(uri: str, base: Path) -> str:
    if "://" in uri or uri.startswith("/"):
        return uri
    return str(base / uri)


def _build(cls: type, data: Any, prefix: str, origin: str) -> Any:
    """Instantiate a dataclass from a dict, naming unknown keys and wrong types."""
    where = f"{origin}: {prefix or 'top level'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{origin}: unknown key {key!r} (known here: {', '.join(fields)})")
    values = {
        name: _convert(hints[name], value, f"{prefix}.{name}" if prefix else name, origin)
        for name, value in data.items()
    }
    for name, item in fields.items():
        required = (
            item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        )
        if required and name not in values:
            key = f"{prefix}.{name}" if prefix else f"[{name}]"
            raise ConfigError(f"{origin}: missing required key {key!r}")
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, origin: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, origin)
    wrong = ConfigError(
        f"{origin}: {key}: expected {_name(hint)}, got {type(value).__name__} {value!r}"
    )
    origin_type = get_origin(hint)
    if origin_type in (Union, UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for option in get_args(hint):
            if option is type(None):
                continue
            if dataclasses.is_dataclass(option):  # a table: its own errors name the key
                return _convert(option, value, key, origin)
            try:
                return _convert(option, value, key, origin)
            except ConfigError:
                continue
        raise wrong
    if origin_type is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list):
            raise wrong
        return [_convert(item_type, item, f"{key}[{i}]", origin) for i, item in enumerate(value)]
    if origin_type is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    if hint is Any:
        return value
    if isinstance(value, bool) and hint is not bool:
        raise wrong
    if hint is float and isinstance(value, int):
        return float(value)
    if isinstance(value, hint):
        return value
    raise wrong


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
