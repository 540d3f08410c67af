"""Job specs: TOML <-> dataclasses, with errors that name the offending key.

The TOML shape is the contract users and scripts rely on::

    [source]      uri, format, text_column, template, id_column, columns, on_bad_record,
                  storage_options
                  (on_empty: the old name of on_bad_record, still read)
    [embedding]   provider, [embedding.config]
    [fleet]       mode, replicas, num_cpus, num_gpus, address, max_pending_per_replica,
                  batch_size, resources, start_timeout
    [output]      uri, rows_per_shard, mode, keep_snapshots, keep_text, storage_options
    [budget]      max_tokens, max_cost, price_per_million_tokens   (all optional)
    [[destination]]  kind, collection / table, ... (zero or more; see
                  :mod:`embedfleet.destinations.spec`)
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

``output.mode`` says what a re-run costs. ``update`` (the default): resume an
unfinished snapshot, else carry unchanged rows from the latest complete one and
embed only new and changed rows (nothing at all when the source is unchanged); a
changed provider or config re-embeds everything. ``overwrite``: a full rebuild.
``incremental`` and ``resume`` (older names) mean ``update``.

``source.on_bad_record``: what a record that cannot be embedded does (invalid
JSON, a CSV row with the wrong number of fields, bytes that are not UTF-8, a
missing, null, empty, blank or non-string text, an id that is missing or not a
string or integer). ``reject`` (the default) puts it in ``_rejects/`` and embeds
the rest of its shard; ``error`` fails the shard naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedfleet.destinations.spec import DestinationSpec
from embedfleet.errors import ConfigError
from embedfleet.job.chunking import CHUNKER_VERSION
from embedfleet.job.templates import Template
from embedfleet.job.toml_dataclasses import build_dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"key|secret|token|password|credential|auth", re.IGNORECASE)
FORMATS = ("parquet", "jsonl", "csv", "text", "text_file")
ON_BAD_RECORD = ("reject", "error")
MODES = ("update", "overwrite")  # what output.mode means; MODE_ALIASES are older names
MODE_ALIASES = {"incremental": "update", "resume": "update"}
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
    on_bad_record: str | None = None  # "reject" (None: the default) | "error"
    on_empty: str | None = None  # the old name of on_bad_record
    storage_options: dict[str, Any] = field(default_factory=dict)
    template: str | None = None  # "{title}\n\n{body}": the text from these columns

    @property
    def bad_record_policy(self) -> str:
        """``reject`` or ``error``: on_bad_record, else the old on_empty, else reject."""
        return self.on_bad_record or self.on_empty or "reject"

    def check(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"source.format must be one of {FORMATS}, got {self.format!r}")
        if self.on_bad_record is not None and self.on_bad_record not in ON_BAD_RECORD:
            raise ConfigError(
                f"source.on_bad_record must be one of {ON_BAD_RECORD}, got {self.on_bad_record!r}"
            )
        if self.on_empty is not None:
            self._check_on_empty()
        reserved = {"id", "embedding", "content_hash"} & set(self.columns)
        if reserved:
            raise ConfigError(f"source.columns cannot include output columns {sorted(reserved)}")
        self.template_fields()

    def template_fields(self) -> tuple[str, ...]:
        """The columns ``template`` names (none without a template)."""
        return () if self.template is None else Template.parse(self.template).fields

    def _check_on_empty(self) -> None:
        """``on_empty`` (null and empty texts) became ``on_bad_record`` (every record that
        cannot be embedded): still read (``JobSpec.from_dict`` warns, saying what to write)."""
        if self.on_empty not in ON_BAD_RECORD:
            raise ConfigError(
                f"source.on_empty is the old name of source.on_bad_record, which must be one "
                f"of {ON_BAD_RECORD}; got {self.on_empty!r}"
            )
        if self.on_bad_record is not None and self.on_bad_record != self.on_empty:
            raise ConfigError(
                f"source.on_empty = {self.on_empty!r} disagrees with source.on_bad_record = "
                f"{self.on_bad_record!r}: on_empty is the old name of on_bad_record; remove it"
            )


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


#: ``[fleet] mode``: see :mod:`embedfleet.job.in_process`
FLEET_MODES = ("auto", "ray", "in_process")


@dataclass
class FleetSpec:
    #: where shards embed: "ray" (a fleet of replicas), "in_process" (this process, no
    #: Ray), "auto" (unset: ``$EMBEDFLEET_FLEET_MODE``, else small jobs in this process;
    #: :mod:`embedfleet.job.in_process`)
    mode: str | None = None
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
        if self.mode not in (None, *FLEET_MODES):
            raise ConfigError(f"fleet.mode must be one of {FLEET_MODES}, got {self.mode!r}")


@dataclass
class OutputSpec:
    uri: str
    rows_per_shard: int = 10_000
    mode: str = "update"  # see the module docstring
    keep_snapshots: int = 3
    keep_text: bool = False  # a ``text`` column: the text each vector was made from
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> str:
        """``update`` or ``overwrite``: the mode, with older names read as what they mean."""
        return MODE_ALIASES.get(self.mode, self.mode)

    def check(self) -> None:
        if self.policy not in MODES:
            raise ConfigError(
                f"output.mode must be one of {MODES} (update: resume an unfinished snapshot, "
                "else embed only new and changed rows; overwrite: embed everything again; "
                f"incremental and resume are older names of update), got {self.mode!r}"
            )
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
    destination: list[DestinationSpec] = field(default_factory=list)  # [[destination]]
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
        for destination in spec.destination:
            destination.resolve_paths(lambda uri: _resolve_local(uri, base))
        return spec

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "spec") -> JobSpec:
        spec = build_dataclass(cls, data, "", where)
        spec.check()
        if spec.source.on_empty is not None:
            logger.warning(
                "%s: source.on_empty is deprecated: write source.on_bad_record = %r instead "
                "(it covers every record that cannot be embedded, not only null and empty texts)",
                where,
                spec.source.on_empty,
            )
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
            why = " ('text' holds the embedded text with output.keep_text)"
            raise ConfigError(
                f"source.columns cannot include output columns {sorted(taken)}"
                + (why if "text" in taken else "")
            )
        labels = [destination.label for destination in self.destination]
        for index, destination in enumerate(self.destination):
            destination.check(where=f"destination[{index}]")
            if labels.count(destination.label) > 1:
                raise ConfigError(
                    f"destination[{index}]: two destinations are named {destination.label!r}; "
                    "give each a distinct name"
                )

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
        data["destination"] = [item.to_public_dict() for item in self.destination]
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
