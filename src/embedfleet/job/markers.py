"""A shard's commit marker, as one typed record.

The marker is what makes a shard's part and rejects exist: written after them, read
by a resume, rolled into the manifest. Every reader (the runner, the plan,
``embedfleet status``, the store's finish) sees this one record, and a marker written
by an earlier version, lacking fields added since, reads with their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ShardMarker:
    """A shard's commit marker: written after its part and rejects, it makes them exist.

    Fields are in the order they are written. A copied part (``copied_from``) ran no
    model, so its JSON has no embed time or model tokens; ``write_seconds`` is known
    only to the task that wrote the marker and is never on disk.
    """

    shard_id: str
    source_version: str = ""  # its files' sizes and etags/mtimes: a commit of others is stale
    relative_path: str = ""  # a packed shard's first file; unit "files", end: how many
    unit: str = ""
    start: int = 0
    end: int = 0
    rows: int = 0  # source records read: vector_rows + rejected
    characters: int = 0  # of the texts sent to the model
    tokens: int = 0  # input tokens of those texts, as the provider bills them
    carried: int = 0  # incremental: same id and text in the base, its vector copied
    reused: int = 0  # incremental: the text under another id in the base, its vector copied
    read_seconds: float = 0.0
    embedded: int = 0
    rejected: int = 0
    reject_kinds: dict[str, int] = field(default_factory=dict)  # rejected records per kind
    chunks: dict[str, int] | None = None  # chunking: rows (chunks) by kind; counts above: docs
    embed_seconds: float = 0.0
    model_tokens: int = 0  # tokens the model ran on, where it counts them (local models)
    padded_tokens: int = 0  # ... padding included
    copied_from: str | None = None  # the base part committed as this shard's, file to file
    part: str | None = None  # file name in the snapshot; None: every row was rejected
    rejects: str | None = None  # path in the snapshot of the rejected rows, if any
    write_seconds: float | None = None

    @property
    def vector_rows(self) -> int:
        """Rows with a vector in the shard's part (chunks, with chunking)."""
        if self.chunks is not None:
            return self.chunks["embedded"] + self.chunks["carried"] + self.chunks["reused"]
        return self.embedded + self.carried + self.reused

    def to_json(self) -> dict[str, Any]:
        """The marker as the JSON object written to ``_commits/`` and the manifest."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        if not self.reject_kinds:
            del data["reject_kinds"]
        if self.copied_from is None:
            del data["copied_from"]
        else:
            del data["embed_seconds"], data["model_tokens"], data["padded_tokens"]
        for name in ("chunks", "write_seconds"):
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardMarker:
        """A marker as written by any version: missing fields take their defaults."""
        return cls(**{key: value for key, value in data.items() if key in _MARKER_FIELDS})


_MARKER_FIELDS = frozenset(item.name for item in fields(ShardMarker))
