"""What a run would do, decided before any work: which snapshot it writes, what it
carries from, and how many tokens it would be billed.

``embedfleet plan`` shows this without embedding or writing anything, and ``run()``
acts on the same answer, so what a user reviewed is what runs. Tokens are counted on
real text with the provider's own counter: small datasets whole, larger ones from a
sample spread over the dataset, scaled to the planned rows (and said so): a bounded
estimate. ``plan --exact`` (``exact.py``) reads every record instead and counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from embedfleet import pricing
from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import EmbedfleetError
from embedfleet.job import sources
from embedfleet.job.billing import billed_tokens
from embedfleet.job.chunking import Chunker
from embedfleet.job.exact import ExactCounts
from embedfleet.job.sources import Shard
from embedfleet.job.spec import JobSpec, SourceSpec, changed_settings
from embedfleet.job.store import SNAPSHOTS, OutputStore, ShardMarker, Snapshot

PLAN_SAMPLE_ROWS = 2000  # at most this many rows are read by plan() to count tokens
PLAN_SAMPLE_PIECES = 16  # ... from this many files (or ranges) spread over the dataset


@dataclass
class JobPlan:
    fingerprint: str
    shards: list[Shard]
    estimated_rows: int
    estimated_tokens: int  # input tokens of every shard, as the provider counts them
    snapshot: str | None  # the snapshot this run would write (resume target) or None: new
    committed: int  # shards already committed in that snapshot
    note: str  # one line saying what the run would do
    token_basis: str = ""  # how estimated_tokens was found ("counted over all N rows", ...)
    price: pricing.Price = field(default_factory=lambda: pricing.Price(0.0, "local model"))
    token_limit: int | None = None  # this run's budget in tokens; None: no limit
    base: str | None = None  # incremental: the snapshot unchanged rows are carried from
    up_to_date: bool = False  # the latest snapshot holds the source as listed now: no run
    exact: ExactCounts | None = None  # plan --exact: every record read and counted
    estimated_chunks: int | None = None  # with [chunking]: rows the documents become
    packing: dict[str, Any] | None = None  # how small files were packed (None: one per shard)
    files: int = 0  # files listed

    @property
    def estimated_cost(self) -> float | None:
        """USD for every shard (None: the price is unknown)."""
        return self.price.cost(self.estimated_tokens)

    @property
    def counts(self) -> str:
        """Which of the two plans this is, in words."""
        if self.exact is not None:
            return "exact: every record of the source read and matched against the base"
        return "estimate (bounded reads); `embedfleet plan --exact` reads every record and counts"

    def budget_note(self) -> str | None:
        """Whether the estimate fits in the run's budget; None without a budget."""
        if self.token_limit is None:
            return None
        needed = self.estimated_tokens
        if self.exact is not None:
            needed = self.exact.tokens
        elif self.shards and self.committed:  # a resume pays only for what is left
            left = len(self.shards) - self.committed
            needed = math.ceil(needed * left / len(self.shards))
        verdict = "fits" if needed <= self.token_limit else "exceeds it: the run would stop early"
        return f"{self.token_limit:,} tokens this run; the estimate ({needed:,}) {verdict}"

    def table_rows(self) -> list[tuple[str, object]]:
        """The table ``embedfleet plan`` prints (labels and values, never a bare None)."""
        rows: list[tuple[str, object]] = [
            ("counts", self.counts),
            ("fingerprint", self.fingerprint),
            ("shards", f"{len(self.shards):,} ({self.files:,} files)"),
        ]
        if self.exact is None:
            rows += [
                ("estimated rows", f"{self.estimated_rows:,} documents"),
                *(
                    [("estimated chunks", f"{self.estimated_chunks:,}")]
                    if self.estimated_chunks is not None
                    else []
                ),
                ("estimated tokens", f"{self.estimated_tokens:,} ({self.token_basis})"),
                ("estimated cost", pricing.format_cost(self.estimated_cost)),
            ]
        rows.append(("price", self.price.describe()))
        budget = self.budget_note()
        if budget is not None:
            rows.append(("budget", budget))
        if self.up_to_date:
            snapshot = f"none: {SNAPSHOTS}/{self.base} is up to date"
        elif self.snapshot is None:
            snapshot = "a new snapshot"
        else:
            snapshot = f"{SNAPSHOTS}/{self.snapshot} (resumed)"
        base = f"{SNAPSHOTS}/{self.base}" if self.base else "none: every row is embedded"
        rows += [
            ("snapshot", snapshot),
            ("committed shards", self.committed),
            ("base", base),
            ("note", self.note),
        ]
        if self.exact is not None:
            rows += _exact_rows(self.exact, self.price)
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "shards": len(self.shards),
            "files": self.files,
            "estimated_rows": self.estimated_rows,
            "estimated_chunks": self.estimated_chunks,
            "estimated_tokens": self.estimated_tokens,
            "token_basis": self.token_basis,
            "estimated_cost": self.estimated_cost,
            "price_per_million_tokens": self.price.per_million_tokens,
            "price_source": self.price.source,
            "token_limit": self.token_limit,
            "budget": self.budget_note(),
            "snapshot": self.snapshot,
            "committed_shards": self.committed,
            "base": self.base,
            "up_to_date": self.up_to_date,
            "note": self.note,
            "counts": "exact" if self.exact is not None else "estimate",
            "exact": None if self.exact is None else self.exact.to_dict(),
            "exact_cost": None if self.exact is None else self.price.cost(self.exact.tokens),
        }


def _exact_rows(exact: ExactCounts, price: pricing.Price) -> list[tuple[str, object]]:
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in exact.rejected_by_kind.items())
    unit = " chunks" if exact.chunked else ""
    rows: list[tuple[str, object]] = [
        ("records read", f"{exact.records:,}"),
        ("new", f"{exact.new:,}{unit}"),
        ("changed", f"{exact.changed:,}{unit}"),
        ("unchanged", f"{exact.unchanged:,}{unit} (carried over)"),
        ("deleted", f"{exact.deleted:,}{unit}"),
        ("reused", f"{exact.reused:,} (new or changed texts the base has a vector for)"),
        ("rejected", f"{exact.rejected:,}" + (f" ({kinds})" if kinds else "")),
        ("resumed rows", f"{exact.committed:,} (in shards already committed)"),
        (
            "to embed",
            f"{exact.to_embed:,} {'chunks' if exact.chunked else 'rows'}, {exact.tokens:,} tokens",
        ),
        ("cost", pricing.format_cost(price.cost(exact.tokens))),
    ]
    for file, error in sorted(exact.unreadable.items()):
        rows.append(("unreadable", f"{file}: {error}"))
    return rows


@dataclass(frozen=True)
class SnapshotChoice:
    snapshot: str | None  # the unfinished snapshot to resume, or None for a new one
    committed: int  # its shards already committed
    note: str  # what the run would do
    base: str | None = None  # the complete snapshot to carry unchanged rows from
    up_to_date: bool = False  # base holds every planned shard's file as listed now: no run


def choose_snapshot(
    output: OutputStore,
    mode: str,
    fingerprint: str,
    shards: list[Shard],
    spec: JobSpec | None = None,
) -> SnapshotChoice:
    """``overwrite``: a new snapshot that embeds every row. ``update``: the newest
    unfinished snapshot newer than ``_latest`` if made with this fingerprint; else
    nothing when the latest snapshot is up to date; else a new snapshot carrying
    unchanged rows from the latest if made with this fingerprint, or embedding every
    row (no complete snapshot yet, or the provider, its config, the template or the
    chunking changed: ``spec``, the job's, lets a note say which)."""
    if mode == "overwrite":
        return SnapshotChoice(None, 0, "overwrite: a new snapshot embeds every row again")
    latest = output.latest()
    newest, info = _newest_unfinished(output, latest)
    left = ""
    if newest is not None:
        if info.get("fingerprint") == fingerprint:
            committed = len(still_committed(newest.commits(), shards))
            base = info.get("base")
            note = (
                f"resume {newest.relative}: {committed} of {len(shards)} shards already committed"
            )
            if base:
                note += f" (unchanged rows carried from {SNAPSHOTS}/{base})"
            return SnapshotChoice(newest.run_id, committed, note, base)
        left = (
            f"the unfinished {newest.relative} was made with other settings "
            f"({_what_changed(info, spec)}) and is left as it is; "
        )
    return _from_latest(output, fingerprint, latest, shards, left, spec)


def _newest_unfinished(
    output: OutputStore, latest: str | None
) -> tuple[Snapshot | None, dict[str, Any]]:
    """The newest unfinished snapshot newer than ``latest``, and its ``_run.json``."""
    unfinished = [
        run
        for run in output.snapshot_ids()
        if (latest is None or run > latest) and not output.snapshot(run).is_complete()
    ]
    if not unfinished:
        return None, {}
    newest = output.snapshot(unfinished[-1])
    return newest, newest.run_info() or {}


def plan_source(
    output: OutputStore, source: SourceSpec, rows_per_shard: int, mode: str, fingerprint: str
) -> sources.SourcePlan:
    """The source's shards as a run would cut them now.

    A resumed snapshot is planned as it was: with the bytes per row its ``_run.json``
    recorded, so its committed shards keep their ids, or, written before packed shards
    (no ``packing`` recorded), one file per shard as then, so the run continues it; the
    next snapshot packs. A new snapshot reuses the base's bytes per row where the sample
    agrees, so unchanged packed shards keep their ids and are copied whole.
    """
    listing = sources.list_source(source)
    if mode != "overwrite":
        newest, info = _newest_unfinished(output, output.latest())
        if newest is not None and info.get("fingerprint") == fingerprint:
            recorded = info.get("packing")
            if recorded is None:
                plan = sources.plan_listing(listing, source, rows_per_shard, packed=False)
                plan.notes.append(
                    f"{newest.relative} was written before packed shards: it is continued "
                    "one file per shard; the next snapshot packs small files"
                )
                return plan
            bytes_per_row = recorded.get("bytes_per_row", {})
            return sources.plan_listing(
                listing, source, rows_per_shard, recorded=bytes_per_row, exactly=True
            )
    latest = output.latest()
    info = (output.snapshot(latest).run_info() or {}) if latest and mode != "overwrite" else {}
    recorded = (info.get("packing") or {}).get("bytes_per_row")
    if info.get("fingerprint") != fingerprint:
        recorded = None
    return sources.plan_listing(listing, source, rows_per_shard, recorded=recorded)


def _from_latest(
    output: OutputStore,
    fingerprint: str,
    latest: str | None,
    shards: list[Shard],
    left: str,
    spec: JobSpec | None,
) -> SnapshotChoice:
    """A new snapshot of an ``update`` run, and what it carries unchanged rows from."""
    if latest is None:
        note = "no complete snapshot yet: every row is embedded" + (" (full re-embed)" * bool(left))
        return SnapshotChoice(None, 0, left + note)
    snapshot = output.snapshot(latest)
    info = snapshot.run_info() or {}
    if info.get("fingerprint") != fingerprint:
        note = (
            f"{_what_changed(info, spec)} changed since {SNAPSHOTS}/{latest} "
            f"(fingerprint {info.get('fingerprint')} -> {fingerprint}): every row is "
            "re-embedded (full re-embed)"
        )
        return SnapshotChoice(None, 0, left + note)
    if _holds_the_source(snapshot.commits(), shards):
        note = (
            f"up to date: {SNAPSHOTS}/{latest} holds every source file as listed now (same "
            "sizes and modification times or etags) with this provider and config; nothing "
            "is read, embedded or written"
        )
        return SnapshotChoice(None, 0, left + note, latest, up_to_date=True)
    note = (
        f"update from {SNAPSHOTS}/{latest}: unchanged rows are carried over, texts it "
        "already has are reused, new and changed rows are embedded, and ids no longer "
        "in the source are dropped"
    )
    return SnapshotChoice(None, 0, left + note, latest)


def _what_changed(info: dict[str, Any], spec: JobSpec | None) -> str:
    """The settings that changed since a snapshot's ``_run.json``, or the function."""
    changes = changed_settings(info.get("spec") or {}, spec) if spec is not None else []
    return "; ".join(changes) if changes else "the embedding function or its config"


def _holds_the_source(markers: dict[str, ShardMarker], shards: list[Shard]) -> bool:
    """Whether a complete snapshot's shards are exactly the planned ones, each committed
    from its file as listed now (a version with more than the size: an etag or mtime)."""
    planned = {shard.shard_id: shard.source_version for shard in shards}
    recorded = {marker.shard_id: marker.source_version for marker in markers.values()}
    return bool(planned) and planned == recorded and all(":" in v for v in planned.values())


def still_committed(markers: dict[str, ShardMarker], shards: list[Shard]) -> dict[str, ShardMarker]:
    """The markers of planned shards whose source file has not changed since they were
    committed: a resume re-embeds a shard whose file changed in between."""
    versions = {shard.shard_id: shard.source_version for shard in shards}
    return {
        shard_id: marker
        for shard_id, marker in markers.items()
        if shard_id in versions and marker.source_version == versions[shard_id]
    }


def estimate_tokens(
    shards: list[Shard],
    source: SourceSpec,
    counter: EmbeddingFunction,
    chunker: Chunker | None = None,
) -> tuple[int, str, int | None]:
    """Tokens of every shard, how they were found, and (with a ``chunker``) the chunks.

    Small datasets are read whole and counted. Larger ones are sampled: up to
    ``PLAN_SAMPLE_ROWS`` rows from the start of ``PLAN_SAMPLE_PIECES`` pieces (files, or
    ranges of large ones) spread over the dataset, scaled by the planned row count (an
    estimate, and said so): a few dozen reads, however many files there are. Texts are
    what a run embeds: templates rendered, documents cut into chunks.
    """
    if not shards:
        return 0, "no rows", 0 if chunker else None
    pieces = [(shard, piece) for shard in shards for piece in shard.pieces]
    picks = _spread(len(pieces), PLAN_SAMPLE_PIECES)
    per_piece = max(1, PLAN_SAMPLE_ROWS // len(picks))
    rows = counted = chunks = 0
    whole = len(picks) == len(pieces)
    for index in picks:
        shard, piece = pieces[index]
        try:
            found = _sample(shard.single(piece), source, counter, per_piece, chunker)
        except (EmbedfleetError, OSError):  # fails when run, naming the file
            whole = False
            continue
        rows, counted, chunks = rows + found[0], counted + found[1], chunks + found[2]
        whole = whole and found[3]
    if whole:
        return counted, f"counted over all {rows:,} rows", chunks if chunker else None
    if not rows:  # a token is at least one byte of UTF-8
        upper = sum(shard.estimated_bytes for shard in shards)
        return upper, "upper bound from text bytes (no rows could be sampled)", None
    total_rows = max(rows, sum(shard.estimated_rows for shard in shards))
    scaled_chunks = math.ceil(chunks * total_rows / rows) if chunker else None
    return (
        math.ceil(counted * total_rows / rows),
        f"estimated from {rows:,} sampled rows ({len(picks)} of {len(pieces)} files or "
        f"ranges), scaled to ~{total_rows:,} rows",
        scaled_chunks,
    )


def _sample(
    shard: Shard,
    source: SourceSpec,
    counter: EmbeddingFunction,
    limit: int,
    chunker: Chunker | None,
) -> tuple[int, int, int, bool]:
    """(records read, their tokens, the rows they become, whether that was the whole
    shard)."""
    rows, texts = 0, []
    stream = sources.read_shard(shard, source, batch_rows=min(limit, 2048))
    try:
        for piece in stream:
            rows += piece.records
            texts += piece.texts
            if rows >= limit:
                return rows, *_count(texts, counter, chunker), False
    finally:
        stream.close()
    return rows, *_count(texts, counter, chunker), True


def _count(
    texts: list[str], counter: EmbeddingFunction, chunker: Chunker | None
) -> tuple[int, int]:
    """Billed tokens of what ``texts`` are embedded as, and how many rows that is."""
    if chunker is not None:
        texts = [chunk.text for found in chunker.split(texts) for chunk in found]
    return billed_tokens(counter, texts), len(texts)


def _spread(count: int, picks: int) -> list[int]:
    """Up to ``picks`` indices of ``range(count)``: first, last and evenly between."""
    if count <= picks:
        return list(range(count))
    if picks == 1:
        return [0]
    return sorted({round(i * (count - 1) / (picks - 1)) for i in range(picks)})
