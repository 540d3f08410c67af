"""Run a job: plan shards, embed them on the fleet as Ray tasks, commit, resume.

The driver holds the output's lease for the whole run (renewed by a heartbeat
thread), decides which snapshot to write (resume, overwrite), plans shards from
metadata, and keeps a bounded number of shard tasks in flight. Each shard task
reads its rows, rejects null/empty texts, sends the texts through the fleet
(sorted by length there, back in row order), and commits its part file and
marker. Shard tasks reserve no CPU, so ``replicas = 2, num_cpus = 1`` on a
2-CPU machine cannot deadlock. ``_latest`` moves only when every shard
committed; a failed shard leaves the snapshot resumable.

Budgets (``[budget]``, per run): each shard task counts its texts' tokens as the
provider bills them, right after reading them, and reserves them in a
``TokenBudget`` Ray actor before embedding. Reservations are serialised by the
actor, so shards running in parallel can never together go over; the first
shard that does not fit is not embedded, the actor refuses every later one, the
driver submits nothing more, shards already embedding finish and commit, and
the run ends incomplete with ``budget_stopped`` set. A re-run with a higher
budget resumes the same snapshot (the budget is not in the fingerprint).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedfleet import pricing, tokens
from embedfleet.embedding_functions import registry
from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import BadRequestError, ConfigError, EmbedfleetError
from embedfleet.job import incremental, sources, store
from embedfleet.job.sources import Shard, ShardRows
from embedfleet.job.spec import JobSpec
from embedfleet.output import METADATA_KEY, content_hash, embedding_metadata, embeddings_table

logger = logging.getLogger(__name__)

SHARD_TASK_CPUS = 0  # reading and writing wait on I/O; the replicas own the cores
RENEW_EVERY_SECONDS = 60.0
PLAN_SAMPLE_ROWS = 2000  # at most this many rows are read by plan() to count tokens
PLAN_SAMPLE_SHARDS = 8  # ... from this many shards spread over the dataset


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

    @property
    def estimated_cost(self) -> float | None:
        """USD for every shard (None: the price is unknown)."""
        return self.price.cost(self.estimated_tokens)

    def budget_note(self) -> str | None:
        """Whether the estimate fits in the run's budget; None without a budget."""
        if self.token_limit is None:
            return None
        needed = self.estimated_tokens
        if self.shards and self.committed:  # a resume pays only for what is left
            left = len(self.shards) - self.committed
            needed = math.ceil(needed * left / len(self.shards))
        verdict = "fits" if needed <= self.token_limit else "exceeds it: the run would stop early"
        return f"{self.token_limit:,} tokens this run; the estimate ({needed:,}) {verdict}"

    def summary(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "shards": len(self.shards),
            "estimated_rows": self.estimated_rows,
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
            "note": self.note,
        }


@dataclass
class JobResult:
    run_id: str
    snapshot: str  # relative path under the output
    complete: bool
    rows_read: int = 0
    embedded: int = 0
    rejected: int = 0
    resumed: int = 0  # rows in shards committed by an earlier, interrupted run
    carried_over: int = 0  # incremental: unchanged rows whose vectors came from the base
    reused: int = 0  # incremental: rows whose text had a vector under another id in the base
    deleted: int = 0  # incremental: ids of the base no longer in the source
    shards: int = 0
    shards_skipped: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard id -> error
    estimated_tokens: int = 0
    tokens: int = 0  # input tokens of the shards this run embedded, as the provider counts
    model_tokens: int = 0  # tokens the model ran on, where it counts them (local models)
    padded_tokens: int = 0  # ... padding included: padded_tokens / model_tokens = padding waste
    estimated_cost: float | None = 0.0  # USD for ``tokens``; None: the price is unknown
    token_limit: int | None = None  # this run's budget in tokens; None: no limit
    budget_stopped: bool = False  # stopped before a shard that would have gone over it
    shards_remaining: int = 0  # planned shards without a commit: a re-run resumes them
    seconds: float = 0.0
    startup_seconds: float = 0.0  # lock, plan, Ray and fleet start (models loaded)
    finish_seconds: float = 0.0  # after the last shard: fleet stop, checks, manifest, prune
    placement: list[dict[str, Any]] = field(default_factory=list)  # node, pid, GPUs per replica

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0

    @property
    def steady_rows_per_second(self) -> float:
        """Throughput between start-up and finish (fixed costs per run, reported apart):
        what a larger job approaches."""
        working = self.seconds - self.startup_seconds - self.finish_seconds
        return self.embedded / working if working > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows_per_second": self.rows_per_second,
            "steady_rows_per_second": self.steady_rows_per_second,
        }


class Job:
    """``Job(spec)`` / ``Job.from_toml(path)``; ``plan()`` and ``run()``."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.function: EmbeddingFunction = registry.build(
            spec.embedding.provider, spec.embedding.config
        )
        self.fingerprint = spec.fingerprint(self.function.provider_name, self.function.get_config())
        self.output = store.OutputStore(spec.output.uri, spec.output.storage_options)
        # API providers count tokens as they bill them; local models cost nothing per token.
        self.counter = (
            self.function if callable(getattr(self.function, "request_tokens", None)) else None
        )
        self.budget()  # a max_cost without a price fails here, before any work

    def budget(self) -> tuple[pricing.Price, int | None]:
        """The provider's price and this run's token limit, from the spec's ``[budget]``."""
        budget = self.spec.budget
        price = pricing.price_for(
            self.function.provider_name,
            getattr(self.function, "model_name", None),
            api=self.counter is not None,
            override=budget.price_per_million_tokens,
        )
        return price, pricing.token_limit(budget.max_tokens, budget.max_cost, price)

    @classmethod
    def from_toml(cls, path: str | Path) -> Job:
        return cls(JobSpec.from_toml(path))

    # ------------------------------------------------------------------ planning
    def plan(self) -> JobPlan:
        price, limit = self.budget()
        shards = sources.plan(self.spec.source, self.spec.output.rows_per_shard)
        target, committed, note, base = self._choose_snapshot(shards)
        estimated_tokens, basis = self._estimate_tokens(shards)
        if base is not None:
            basis += "; an upper bound: this incremental run embeds only new and changed rows"
        return JobPlan(
            fingerprint=self.fingerprint,
            shards=shards,
            estimated_rows=sum(shard.estimated_rows for shard in shards),
            estimated_tokens=estimated_tokens,
            snapshot=target,
            committed=committed,
            note=note,
            token_basis=basis,
            price=price,
            token_limit=limit,
            base=base,
        )

    def _estimate_tokens(self, shards: list[Shard]) -> tuple[int, str]:
        """Tokens of every shard, counted on real text with the provider's counter.

        Small datasets are read whole and counted. Larger ones are sampled: up to
        ``PLAN_SAMPLE_ROWS`` rows from the start of ``PLAN_SAMPLE_SHARDS`` shards spread
        over the dataset, scaled by the planned row count (an estimate, and said so).
        """
        if not shards:
            return 0, "no rows"
        picks = _spread(len(shards), PLAN_SAMPLE_SHARDS)
        per_shard = max(1, PLAN_SAMPLE_ROWS // len(picks))
        rows = counted = 0
        whole = len(picks) == len(shards)
        for index in picks:
            try:
                shard_rows, shard_tokens, complete = self._sample_shard(shards[index], per_shard)
            except (EmbedfleetError, OSError):  # fails when run, naming the file
                whole = False
                continue
            rows, counted, whole = rows + shard_rows, counted + shard_tokens, whole and complete
        if whole:
            return counted, f"counted over all {rows:,} rows"
        if not rows:  # a token is at least one byte of UTF-8
            upper = sum(shard.estimated_bytes for shard in shards)
            return upper, "upper bound from text bytes (no rows could be sampled)"
        total_rows = max(rows, sum(shard.estimated_rows for shard in shards))
        return math.ceil(counted * total_rows / rows), (
            f"estimated from {rows:,} sampled rows ({len(picks)} of {len(shards)} shards), "
            f"scaled to ~{total_rows:,} rows"
        )

    def _sample_shard(self, shard: Shard, limit: int) -> tuple[int, int, bool]:
        """(rows read, their tokens, whether that was the whole shard)."""
        rows, texts = 0, []
        stream = sources.read_shard(shard, self.spec.source, batch_rows=min(limit, 2048))
        try:
            for piece in stream:
                rows += len(piece.ids)
                texts += [text for text in piece.texts if text is not None and text.strip()]
                if rows >= limit:
                    return rows, count_tokens(self.counter, texts), False
        finally:
            stream.close()
        return rows, count_tokens(self.counter, texts), True

    def _choose_snapshot(self, shards: list[Shard]) -> tuple[str | None, int, str, str | None]:
        """(snapshot to resume or None for a new one, its committed shards, what the run
        would do, the base snapshot of an incremental run)."""
        mode = self.spec.output.mode
        if mode == "overwrite":
            return None, 0, "overwrite: a new snapshot embeds every shard", None
        latest = self.output.latest()
        unfinished = [
            run
            for run in self.output.snapshot_ids()
            if (latest is None or run > latest) and not self.output.snapshot(run).is_complete()
        ]
        if not unfinished:
            if mode == "incremental":
                base, note = self._incremental_base(latest)
                return None, 0, note, base
            return None, 0, "a new snapshot embeds every shard", None
        newest = self.output.snapshot(unfinished[-1])
        info = newest.run_info() or {}
        if info.get("fingerprint") != self.fingerprint and mode == "incremental":
            note = (
                f"incremental: the unfinished {newest.relative} was made with another "
                "provider or config, so a new snapshot re-embeds every row (full re-embed)"
            )
            return None, 0, note, None
        if info.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"the unfinished snapshot {newest.relative} was made with another provider or "
                f"config (fingerprint {info.get('fingerprint')}, this spec {self.fingerprint}); "
                "resuming would mix vectors. Run with mode 'overwrite' to start a new snapshot."
            )
        committed = len(still_committed(newest.commits(), shards))
        base = info.get("base")
        note = f"resume {newest.relative}: {committed} of {len(shards)} shards already committed"
        if base:
            note += f" (incremental from {store.SNAPSHOTS}/{base})"
        return newest.run_id, committed, note, base

    def _incremental_base(self, latest: str | None) -> tuple[str | None, str]:
        """The snapshot an incremental run carries unchanged rows from, and why (not)."""
        if latest is None:
            return None, "incremental: no complete snapshot yet, so every row is embedded"
        info = self.output.snapshot(latest).run_info() or {}
        if info.get("fingerprint") != self.fingerprint:
            return None, (
                f"incremental: the embedding function or its config changed since "
                f"{store.SNAPSHOTS}/{latest} (fingerprint {info.get('fingerprint')} -> "
                f"{self.fingerprint}), so every row is re-embedded (full re-embed)"
            )
        return latest, (
            f"incremental from {store.SNAPSHOTS}/{latest}: unchanged rows are carried over, "
            "texts it already has are reused, new and changed rows are embedded, and ids "
            "no longer in the source are dropped"
        )

    # ------------------------------------------------------------------ running
    def run(
        self,
        *,
        progress: bool = True,
        on_shard: Callable[[dict[str, Any]], None] | None = None,
    ) -> JobResult:
        """Embed every shard not yet committed; see the module docstring."""
        started = time.perf_counter()
        lease = self.output.acquire()
        stop = threading.Event()
        heartbeat = threading.Thread(
            target=self._renew_lease, args=(lease, stop), name="embedfleet-lease", daemon=True
        )
        heartbeat.start()
        signals = _StopOnSignal(stop)
        signals.install()
        try:
            result = self._run_locked(progress, on_shard, signals, started)
        finally:
            signals.restore()
            stop.set()
            heartbeat.join(timeout=5)
            self.output.release(lease)
        result.seconds = time.perf_counter() - started
        return result

    def _renew_lease(self, lease: store.OutputLock, stop: threading.Event) -> None:
        while not stop.wait(RENEW_EVERY_SECONDS):
            try:
                self.output.renew(lease)
            except EmbedfleetError as exc:  # taken over: the run's commits still stand
                logger.error("%s", exc)
                return

    def _run_locked(
        self,
        progress: bool,
        on_shard: Callable[[dict[str, Any]], None] | None,
        signals: _StopOnSignal,
        started: float,
    ) -> JobResult:
        plan = self.plan()
        snapshot = self.output.snapshot(plan.snapshot or store.new_run_id())
        committed = still_committed(snapshot.commits(), plan.shards)
        todo = [shard for shard in plan.shards if shard.shard_id not in committed]
        recorded = (snapshot.run_info() or {}).get("embedding") if plan.snapshot else None
        # the fleet first: the metadata comes from a replica (see _metadata)
        fleet = self._start_fleet(signals) if todo or recorded is None else None
        try:
            metadata = self._metadata(fleet, recorded)
            return self._run_planned(
                plan,
                snapshot,
                metadata,
                committed,
                todo,
                fleet,
                progress,
                on_shard,
                signals,
                started,
            )
        finally:
            if fleet is not None:
                fleet.shutdown()

    def _start_fleet(self, signals: _StopOnSignal) -> Any:
        """Ray (local, or the configured cluster) and the job's fleet of replicas."""
        import ray

        from embedfleet.fleet import RemoteEmbeddingFunction

        fleet_spec = self.spec.fleet
        if not ray.is_initialized():
            ray.init(
                address=fleet_spec.address, include_dashboard=False, logging_level=logging.WARNING
            )
            signals.install()
        return RemoteEmbeddingFunction(
            self.function,
            replicas=fleet_spec.replicas,
            num_cpus=fleet_spec.num_cpus,
            num_gpus=fleet_spec.num_gpus,
            max_pending_per_replica=fleet_spec.max_pending_per_replica,
            batch_size=fleet_spec.batch_size,
            resources=fleet_spec.resources,
            start_timeout=fleet_spec.start_timeout,
            name=f"job:{self.output.uri}",
        )

    def _metadata(self, fleet: Any, recorded: dict[str, Any] | None) -> dict[str, Any]:
        """What the vectors are recorded with: the function as a replica resolved it (the
        device, precision and quality guards of where it runs; the driver never loads the
        model), or, when a resumed snapshot has nothing left to embed, what it recorded."""
        if fleet is None:
            assert recorded is not None
            return dict(recorded)
        return {**embedding_metadata(fleet), "job_fingerprint": self.fingerprint}

    def _run_planned(
        self,
        plan: JobPlan,
        snapshot: store.Snapshot,
        metadata: dict[str, Any],
        committed: dict[str, dict[str, Any]],
        todo: list[Shard],
        fleet: Any,
        progress: bool,
        on_shard: Callable[[dict[str, Any]], None] | None,
        signals: _StopOnSignal,
        started: float,
    ) -> JobResult:
        stop = signals.stop
        price, limit = plan.price, plan.token_limit
        run_id = snapshot.run_id
        if plan.snapshot is None:
            snapshot.start(
                {
                    "run_id": run_id,
                    "fingerprint": self.fingerprint,
                    "spec": self.spec.to_public_dict(),
                    "embedding": metadata,
                    "shards": [shard.shard_id for shard in plan.shards],
                    "mode": self.spec.output.mode,
                    "base": plan.base,
                }
            )
        planned = {shard.shard_id for shard in plan.shards}
        result = JobResult(
            run_id=run_id,
            snapshot=snapshot.relative,
            complete=False,
            shards=len(plan.shards),
            shards_skipped=len(plan.shards) - len(todo),
            estimated_tokens=plan.estimated_tokens,
            token_limit=limit,
        )
        for marker in committed.values():
            result.resumed += marker["embedded"] + marker.get("carried", 0)
            result.resumed += marker.get("reused", 0)
            result.rejected += marker["rejected"]
            result.rows_read += marker["rows"]
        base = None
        if plan.base is not None:
            base = incremental.build_index(self.output.snapshot(plan.base))
        embedded_at = time.perf_counter()
        if todo:
            embedded_at = self._embed_shards(
                fleet,
                todo,
                snapshot,
                metadata,
                result,
                progress,
                on_shard,
                signals,
                started,
                limit,
                base,
            )
        if stop.is_set():
            raise KeyboardInterrupt
        result.estimated_cost = price.cost(result.tokens)
        committed_now = still_committed(snapshot.commits(), plan.shards)
        result.shards_remaining = len(planned - set(committed_now))
        if result.budget_stopped:
            logger.warning(
                "stopped at the budget (%s tokens this run): %d tokens used, %d of %d shards "
                "remain; re-run to resume, with a fresh per-run budget",
                limit,
                result.tokens,
                result.shards_remaining,
                result.shards,
            )
        if not result.failed_shards and not result.budget_stopped:
            valid = still_committed(snapshot.commits(), plan.shards)
            for path in snapshot.keep_only(set(valid)):
                logger.info("removed %s: its shard is no longer in the source as committed", path)
            self._check_unique_ids(snapshot, plan.shards)
            markers = list(valid.values())
            total_tokens = sum(marker.get("tokens", 0) for marker in markers)
            if base is not None:  # base ids with no row in the new snapshot or its rejects
                present = pa.concat_arrays(
                    [self._snapshot_ids(snapshot), self._snapshot_ids(snapshot, store.REJECTS)]
                )
                kept = pa.compute.is_in(base.table["id"], value_set=present)
                result.deleted = base.rows - pa.compute.sum(kept).as_py()
            snapshot.finish(
                {
                    "fingerprint": self.fingerprint,
                    "embedding": metadata,
                    "mode": self.spec.output.mode,
                    "base": plan.base,
                    "rows": result.rows_read,
                    "vectors": sum(vector_rows(marker) for marker in markers),
                    "embedded": sum(marker["embedded"] for marker in markers),
                    "carried_over": sum(marker.get("carried", 0) for marker in markers),
                    "reused": sum(marker.get("reused", 0) for marker in markers),
                    "deleted": result.deleted,
                    "rejected": result.rejected,
                    "tokens": total_tokens,
                    "estimated_cost": price.cost(total_tokens),
                    "price": price.to_dict(),
                }
            )
            result.complete = True
            store.prune(self.output, self.spec.output.keep_snapshots)
        result.finish_seconds = time.perf_counter() - embedded_at
        return result

    def _embed_shards(
        self,
        fleet: Any,
        todo: list[Shard],
        snapshot: store.Snapshot,
        metadata: dict[str, Any],
        result: JobResult,
        progress: bool,
        on_shard: Callable[[dict[str, Any]], None] | None,
        signals: _StopOnSignal,
        started: float,
        limit: int | None,
        base: incremental.BaseIndex | None,
    ) -> float:
        import ray

        fleet_spec = self.spec.fleet
        stop = signals.stop
        result.placement = list(fleet.placement)
        window = max(2, 2 * fleet_spec.replicas)
        # Start the shard tasks' worker processes now (imports included): part of
        # start-up, not of the first shards' time.
        warm = ray.remote(num_cpus=SHARD_TASK_CPUS)(_warm_worker)
        ray.get([warm.remote() for _ in range(window)])
        result.startup_seconds = time.perf_counter() - started
        task = ray.remote(num_cpus=SHARD_TASK_CPUS, max_retries=0)(embed_shard)
        budget = None
        if limit is not None:  # one ledger per run: shards reserve their tokens in it
            budget = ray.remote(num_cpus=0)(pricing.TokenBudget).remote(limit)
        bar = _progress_bar(sum(shard.estimated_rows for shard in todo), progress)
        base_ref = ray.put(base) if base is not None else None  # one copy, shared by tasks
        pending: dict[Any, Shard] = {}
        queue = list(todo)
        done_count = 0
        try:
            while ((queue and not result.budget_stopped) or pending) and not stop.is_set():
                while queue and len(pending) < window and not result.budget_stopped:
                    shard = queue.pop(0)
                    ref = task.remote(
                        shard,
                        self.spec,
                        fleet,
                        snapshot.run_id,
                        metadata,
                        self.counter,
                        budget,
                        base_ref,
                    )
                    pending[ref] = shard
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    shard = pending.pop(ref)
                    try:
                        marker = ray.get(ref)
                    except Exception as exc:  # one shard's failure never stops the others
                        cause = getattr(exc, "cause", None) or exc
                        result.failed_shards[shard.shard_id] = f"{shard.uri}: {cause}"
                        logger.error("shard %s (%s) failed: %s", shard.shard_id, shard.uri, cause)
                        done_count += 1
                        _advance(bar, shard.estimated_rows, result, done_count, len(todo))
                        continue
                    if marker.get("over_budget"):  # not embedded: no further shard starts
                        result.budget_stopped = True
                        continue
                    result.rows_read += marker["rows"]
                    result.embedded += marker["embedded"]
                    result.carried_over += marker.get("carried", 0)
                    result.reused += marker.get("reused", 0)
                    result.rejected += marker["rejected"]
                    result.tokens += marker["tokens"]
                    result.model_tokens += marker.get("model_tokens", 0)
                    result.padded_tokens += marker.get("padded_tokens", 0)
                    done_count += 1
                    _advance(bar, marker["rows"], result, done_count, len(todo))
                    if on_shard is not None:
                        on_shard(marker)
            return time.perf_counter()  # the last shard is in; what follows is the finish
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            fleet.shutdown()
            if budget is not None:
                ray.kill(budget)
            if bar is not None:
                bar.close()

    @staticmethod
    def _snapshot_ids(snapshot: store.Snapshot, folder: str | None = None) -> pa.Array:
        """Ids of the snapshot's parts (or of its ``_rejects`` folder)."""
        import pyarrow.dataset as ds

        snapshot.output.refresh()
        root = snapshot.path(folder) if folder else snapshot.root
        if folder and not snapshot.fs.exists(root):
            return pa.array([], pa.string())
        dataset = ds.dataset(root, format="parquet", filesystem=snapshot.fs)
        ids = dataset.to_table(columns=["id"])["id"]
        return ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())

    def _check_unique_ids(self, snapshot: store.Snapshot, shards: list[Shard]) -> None:
        """Ids from different shards must not collide (within a shard, reading checks)."""
        if self.spec.source.id_column is None:
            return  # derived ids are unique by construction
        import pyarrow.dataset as ds

        snapshot.output.refresh()
        dataset = ds.dataset(snapshot.root, format="parquet", filesystem=snapshot.fs)
        ids = dataset.to_table(columns=["id"])["id"]
        counts = pa.compute.value_counts(ids)
        duplicates = [item["values"] for item in counts.to_pylist() if item["counts"] > 1]
        if duplicates:
            raise ConfigError(
                f"id column {self.spec.source.id_column!r} has duplicate values across "
                f"files: {sorted(map(str, duplicates))[:10]}"
            )


def embed_shard(
    shard: Shard,
    spec: JobSpec,
    fleet: EmbeddingFunction,
    run_id: str,
    metadata: dict[str, Any],
    counter: EmbeddingFunction | None = None,
    budget: Any = None,
    base: incremental.BaseIndex | None = None,
) -> dict[str, Any]:
    """Read one shard, count its tokens, reserve them in ``budget`` (a TokenBudget actor,
    if any), embed its texts on the fleet, commit part + rejects + marker.

    With ``base`` (an incremental run), rows whose vectors the base snapshot already
    holds are taken from it, and only the rest is counted, reserved and embedded.
    A shard whose tokens the budget refuses is neither embedded nor committed: the
    answer is ``{"shard_id", "over_budget": True, "tokens"}``.
    """
    started = time.perf_counter()
    ids: list[str] = []
    texts: list[str] = []
    columns: dict[str, list[Any]] = {name: [] for name in spec.source.columns}
    reject_ids: list[str] = []
    reasons: list[str] = []
    rows = 0
    for piece in sources.read_shard(shard, spec.source):
        rows += len(piece.ids)
        for index, text in _accepted(piece, reject_ids, reasons, spec.source.on_empty, shard):
            ids.append(piece.ids[index])
            texts.append(text)
            for name in columns:
                columns[name].append(piece.columns[name][index])
    read_done = time.perf_counter()
    output = store.OutputStore(spec.output.uri, spec.output.storage_options)
    snapshot = output.snapshot(run_id)
    matches = None
    to_embed = list(range(len(texts)))
    if base is not None:
        matches = incremental.match(ids, [content_hash(text) for text in texts], base)
        to_embed = np.flatnonzero(matches.kinds == incremental.EMBED).tolist()
    shard_tokens = count_tokens(counter, [texts[i] for i in to_embed])
    if budget is not None and to_embed:
        import ray

        if not ray.get(budget.reserve.remote(shard_tokens)):
            return {"shard_id": shard.shard_id, "over_budget": True, "tokens": shard_tokens}
    info = {
        "source_version": shard.source_version,
        "relative_path": shard.relative_path,
        "unit": shard.unit,
        "start": shard.start,
        "end": shard.end,
        "rows": rows,
        "characters": sum(len(texts[i]) for i in to_embed),
        "tokens": shard_tokens,
        "carried": matches.count(incremental.CARRY) if matches else 0,
        "reused": matches.count(incremental.REUSE) if matches else 0,
        "read_seconds": round(read_done - started, 3),
    }
    if base is not None and matches is not None and not reject_ids:
        part = incremental.whole_part(matches, base)
        base_snapshot = output.snapshot(base.run_id)
        if part is not None and _same_columns(base_snapshot, part, columns, metadata):
            info.update(embedded=0, rejected=0, copied_from=f"{base_snapshot.relative}/{part}")
            return snapshot.adopt_part(shard.shard_id, base_snapshot.path(part), info)
    vectors: list[Any] = [None] * len(texts)
    counted_before = (fleet.stats.tokens, fleet.stats.padded_tokens)
    fresh, refused = embed_or_isolate(fleet, [texts[i] for i in to_embed])
    if len(to_embed) > 1 and len(refused) == len(to_embed):  # a setup problem, not bad rows
        raise BadRequestError(
            f"{shard.uri}: the provider refused every one of the shard's {len(to_embed)} rows "
            f"(check the key and the config); first refusal: {next(iter(refused.values()))}"
        )
    for position, vector in zip(to_embed, fresh, strict=True):
        vectors[position] = vector
    if matches is not None and base is not None:
        taken = np.flatnonzero(matches.kinds != incremental.EMBED)
        old = incremental.fetch_vectors(output.snapshot(base.run_id), base, matches.sources[taken])
        for position, vector in zip(taken.tolist(), old, strict=True):
            vectors[position] = vector
    refused = {to_embed[index]: reason for index, reason in refused.items()}
    if refused:  # poison rows: rejected with the provider's message, the rest kept
        keep = [index for index in range(len(texts)) if index not in refused]
        for index, reason in sorted(refused.items()):
            reject_ids.append(ids[index])
            reasons.append(reason)
        ids, texts, vectors = ([items[i] for i in keep] for items in (ids, texts, vectors))
        columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    embed_done = time.perf_counter()
    part = (
        embeddings_table(ids, texts, vectors, columns=columns, metadata=metadata) if texts else None
    )
    rejects = (
        pa.table(
            {"id": pa.array(reject_ids, pa.string()), "reason": pa.array(reasons, pa.string())}
        )
        if reject_ids
        else None
    )
    info.update(
        embedded=len(to_embed) - len(refused),
        rejected=len(reject_ids),
        embed_seconds=round(embed_done - read_done, 3),
        model_tokens=fleet.stats.tokens - counted_before[0],  # as the model counted them
        padded_tokens=fleet.stats.padded_tokens - counted_before[1],
    )
    marker = snapshot.commit_shard(shard.shard_id, part, rejects, info)
    marker["write_seconds"] = round(time.perf_counter() - embed_done, 3)
    return marker


def still_committed(
    markers: dict[str, dict[str, Any]], shards: list[Shard]
) -> dict[str, dict[str, Any]]:
    """The markers of planned shards whose source file has not changed since they were
    committed: a resume re-embeds a shard whose file changed in between."""
    versions = {shard.shard_id: shard.source_version for shard in shards}
    return {
        shard_id: marker
        for shard_id, marker in markers.items()
        if shard_id in versions and marker.get("source_version", "") == versions[shard_id]
    }


def vector_rows(marker: dict[str, Any]) -> int:
    """Rows with a vector in a committed shard's part."""
    return int(marker["embedded"] + marker.get("carried", 0) + marker.get("reused", 0))


def _same_columns(
    base: store.Snapshot, part: str, columns: dict[str, list[Any]], metadata: dict[str, Any]
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


def count_tokens(counter: EmbeddingFunction | None, texts: list[str]) -> int:
    """Input tokens of ``texts``: the API provider's own ``request_tokens`` (what it
    bills: tiktoken for OpenAI, a conservative estimate elsewhere), or, for local
    models (free per token), ``tokens.estimate_tokens``, which never undercounts."""
    if not texts:
        return 0
    if counter is not None:
        return int(sum(counter.request_tokens(texts)))  # type: ignore[attr-defined]
    return sum(tokens.estimate_tokens(text) for text in texts)


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


def _warm_worker() -> None:
    """Nothing to do: running it starts a worker process with the job code imported."""


def _accepted(
    piece: ShardRows, reject_ids: list[str], reasons: list[str], on_empty: str, shard: Shard
) -> Iterator[tuple[int, str]]:
    for index, text in enumerate(piece.texts):
        if text is None or not text.strip():
            reason = "text is null" if text is None else "text is empty"
            if on_empty == "error":
                raise ConfigError(
                    f"{shard.uri}: row {piece.ids[index]!r}: {reason} (source.on_empty = 'error')"
                )
            reject_ids.append(piece.ids[index])
            reasons.append(reason)
            continue
        yield index, text


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", unit_scale=True, dynamic_ncols=True, desc="embedding")


def _spread(count: int, picks: int) -> list[int]:
    """Up to ``picks`` indices of ``range(count)``: first, last and evenly between."""
    if count <= picks:
        return list(range(count))
    if picks == 1:
        return [0]
    return sorted({round(i * (count - 1) / (picks - 1)) for i in range(picks)})


def _advance(bar: Any, rows: int, result: JobResult, shards_done: int, shards: int) -> None:
    """Rows/s and the ETA come from tqdm; tokens/s from the shards' counted tokens."""
    if bar is None:
        return
    bar.update(rows)
    elapsed = max(bar.format_dict["elapsed"], 1e-9)
    bar.set_postfix(
        tokens_per_s=f"{result.tokens / elapsed:.0f}",
        shards=f"{shards_done}/{shards}",
        failed=len(result.failed_shards),
    )


class _StopOnSignal:
    """SIGINT/SIGTERM set ``stop``: the run stops submitting, releases actors and lock.

    ``install`` is called again after ``ray.init``, which sets its own SIGTERM handler.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping after cleanup; committed shards stay", signum)
        self.stop.set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self.previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
