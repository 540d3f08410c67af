"""``Job``: plan a run, then embed every shard not yet committed, on Ray or, for a small
job, in this process (:mod:`.in_process`).

The driver only decides and schedules: it holds the output's lock, picks the
snapshot, starts the fleet, and keeps a bounded window of shard tasks in flight
(``schedule.py``: ``2 x replicas`` for shards of the default size, more for small
shards), collecting finished ones in bulk, so neither memory nor Ray's queue grows
with the dataset.
``_latest`` moves only when every planned shard committed; a failed shard, a
signal or the budget leave the snapshot resumable, and a re-run embeds only what
is missing. A re-run over a source that has not changed since the latest
snapshot (``plan.up_to_date``) reads, embeds and writes nothing. A complete run then
brings the spec's ``[[destination]]`` stores to the latest snapshot
(:mod:`embedfleet.destinations`), still holding the lock.

Budgets (``[budget]``, per run): each shard task reserves its tokens in one
``TokenBudget`` actor before embedding. The actor serialises reservations, so
shards running in parallel can never together go over; after the first refusal
the driver submits nothing more, shards already embedding finish and commit, and
the run ends incomplete with ``budget_stopped``. The budget is not in the
fingerprint, so a re-run with a higher budget resumes the same snapshot.
A shard failing on a provider error may be tried again later in the run, or stop
it (``provider_stopped``): :mod:`.retries`. The quota's learned limit is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedfleet import pricing
from embedfleet.embedding_functions import registry
from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.job import incremental
from embedfleet.job.budgets import LockedBudget, RayBudget
from embedfleet.job.embed_rows import chunker_for
from embedfleet.job.exact import count_exactly
from embedfleet.job.in_process import (
    IN_PROCESS_WINDOW,
    InProcessExecutor,
    StoppableFunction,
    choose_mode,
    configured_mode,
    where,
)
from embedfleet.job.plan import (
    JobPlan,
    choose_snapshot,
    estimate_tokens,
    plan_source,
    still_committed,
)
from embedfleet.job.progress import ShardProgress
from embedfleet.job.result import JobResult, chunk_totals
from embedfleet.job.retries import quota_stats
from embedfleet.job.run_control import StopOnSignal, locked_run
from embedfleet.job.run_state import RunState
from embedfleet.job.schedule import Executor, RayExecutor, Scheduler, window_for
from embedfleet.job.shard_task import SHARD_TASK_CPUS, ShardContext, embed_shard
from embedfleet.job.spec import JobSpec
from embedfleet.job.startup import Startup, spare_cpus
from embedfleet.job.store import OutputStore, ShardMarker, check_unique_ids, new_run_id, prune
from embedfleet.output_format import embedding_metadata

if TYPE_CHECKING:
    from embedfleet.fleet import RemoteEmbeddingFunction

logger = logging.getLogger(__name__)


class Job:
    """``Job(spec)`` / ``Job.from_toml(path)``; ``plan()`` and ``run()``."""

    def __init__(self, spec: JobSpec) -> None:
        spec.check()
        self.spec = spec
        self.function: EmbeddingFunction = registry.build(
            spec.embedding.provider, spec.embedding.config, where="embedding.config"
        )
        self.fingerprint = spec.fingerprint(
            self.function.provider_name, self.function.vector_config()
        )
        self.output = OutputStore(spec.output.uri, spec.output.storage_options)
        self.budget()  # a max_cost without a price fails here, before any work

    def budget(self) -> tuple[pricing.Price, int | None]:
        """The provider's price and this run's token limit, from the spec's ``[budget]``."""
        budget = self.spec.budget
        price = pricing.price_for(
            self.function.provider_name,
            getattr(self.function, "model_name", None),
            api=self.function.bills_per_token,
            override=budget.price_per_million_tokens,
        )
        return price, pricing.token_limit(budget.max_tokens, budget.max_cost, price)

    @classmethod
    def from_toml(cls, path: str | Path) -> Job:
        return cls(JobSpec.from_toml(path))

    def plan(self, *, exact: bool = False) -> JobPlan:
        """What ``run()`` would do, reading only the source's listing, a sample of its
        rows and the output's markers: nothing is embedded or written. ``exact``: read
        every record and the base's ids and hashes, and count (``exact.py``)."""
        price, limit = self.budget()
        output = self.spec.output
        planned = plan_source(
            self.output, self.spec.source, output.rows_per_shard, output.policy, self.fingerprint
        )
        shards = planned.shards
        choice = choose_snapshot(self.output, output.policy, self.fingerprint, shards, self.spec)
        chunker = chunker_for(self.spec, self.function)  # a bad [chunking] fails here
        tokens, basis, chunks = 0, "up to date: nothing to embed", None
        if not choice.up_to_date:
            tokens, basis, chunks = estimate_tokens(
                shards, self.spec.source, self.function, chunker
            )
        if choice.base is not None and not choice.up_to_date:
            basis += "; an upper bound: this run embeds only new and changed rows"
        plan = JobPlan(
            fingerprint=self.fingerprint,
            shards=shards,
            estimated_rows=sum(shard.estimated_rows for shard in shards),
            estimated_tokens=tokens,
            estimated_chunks=chunks,
            snapshot=choice.snapshot,
            committed=choice.committed,
            note="; ".join([choice.note, *planned.notes]),
            token_basis=basis,
            price=price,
            token_limit=limit,
            base=choice.base,
            up_to_date=choice.up_to_date,
            packing=planned.packing,
            files=planned.files,
        )
        if exact:
            done = self.output.snapshot(choice.snapshot).commits() if choice.snapshot else {}
            base = self.output.snapshot(choice.base) if choice.base else None
            committed = set(still_committed(done, shards))
            plan.exact = count_exactly(
                shards, self.spec.source, self.function, base, committed, chunker
            )
        return plan

    def run(
        self,
        *,
        progress: bool = True,
        on_shard: Callable[[ShardMarker], None] | None = None,
    ) -> JobResult:
        """Embed every shard not yet committed (``on_shard`` gets each new marker);
        see the module docstring."""
        started = time.perf_counter()
        with locked_run(self.output) as signals:
            locked = time.perf_counter() - started
            result = self._run_locked(signals, progress, on_shard, started)
            if result.complete and self.spec.destination:  # clients load only then
                from embedfleet.destinations.sync import sync_all

                specs = self.spec.destination
                synced = sync_all(self.output, specs, progress=progress, stop=signals.stop)
                result.destinations = [item.to_dict() for item in synced]
        result.startup_phases = {"lock": locked, **result.startup_phases}
        result.seconds = time.perf_counter() - started
        return result

    def _run_locked(
        self,
        signals: StopOnSignal,
        progress: bool,
        on_shard: Callable[[ShardMarker], None] | None,
        started: float,
    ) -> JobResult:
        startup = Startup()
        here = configured_mode(self.spec.fleet)[0] == "in_process"  # no Ray, even beside
        start_ray = (lambda: None) if here else (lambda: self._start_ray(signals, startup))
        plan = startup.plan_beside_ray(self.plan, start_ray)
        if plan.up_to_date and plan.base is not None:
            logger.info("%s", plan.note)
            unchanged = JobResult.unchanged(plan.base, len(plan.shards))
            unchanged.startup_phases = startup.phases
            return unchanged
        snapshot = self.output.snapshot(plan.snapshot or new_run_id())
        committed = still_committed(snapshot.commits(), plan.shards)
        todo = [shard for shard in plan.shards if shard.shard_id not in committed]
        recorded = (snapshot.run_info() or {}).get("embedding") if plan.snapshot else None
        result = JobResult(
            run_id=snapshot.run_id,
            snapshot=snapshot.relative,
            complete=False,
            shards=len(plan.shards),
            shards_skipped=len(plan.shards) - len(todo),
            estimated_tokens=plan.estimated_tokens,
            token_limit=plan.token_limit,
            chunked=self.spec.chunking is not None,
        )
        for marker in committed.values():
            result.count_resumed(marker)
        run = RunState(plan, snapshot, result, todo, signals, progress, on_shard, started, startup)
        result.startup_phases = startup.phases
        try:
            # the fleet first: the metadata comes from a replica (see _metadata)
            if todo or recorded is None:
                run.fleet = self._start_fleet(run)
            with startup.timed("metadata"):
                run.metadata = self._metadata(run.fleet, recorded)
            if plan.snapshot is None:
                snapshot.start(self._run_info(run))
            if plan.base is not None:
                run.base = incremental.build_index(self.output.snapshot(plan.base))
            embedded_at = self._embed_shards(run) if todo else time.perf_counter()
            result.quota = quota_stats(self.function, since=run.quota_before)
        finally:
            run.release()
        if run.stop.is_set():
            raise KeyboardInterrupt
        self._finish(run)
        result.finish_seconds = time.perf_counter() - embedded_at
        return result

    def _start_fleet(self, run: RunState) -> EmbeddingFunction:
        """Where shards embed (``in_process.choose_mode``): this process, with the model
        loaded now, or Ray and the job's fleet, with shard workers started beside it (a
        CPU to spare) or after."""
        fleet_spec, startup = self.spec.fleet, run.startup
        rows = sum(shard.estimated_rows for shard in run.todo)
        mode, reason = choose_mode(fleet_spec, rows)
        run.result.embedded_in = where(mode, reason, fleet_spec)
        if mode == "in_process":
            run.in_process = True
            startup.warm_in_process(self.function)
            return self.function
        from embedfleet.fleet import RemoteEmbeddingFunction

        self._start_ray(run.signals, startup)
        workers = min(len(run.todo), 2 * fleet_spec.replicas)

        def beside_replicas(fleet: RemoteEmbeddingFunction) -> None:
            if spare_cpus(fleet) >= 1:  # else their imports slow the replicas' own
                startup.warm_workers(workers, SHARD_TASK_CPUS)

        with startup.timed("fleet"):
            fleet = RemoteEmbeddingFunction(
                self.function,
                replicas=fleet_spec.replicas,
                num_cpus=fleet_spec.num_cpus,
                num_gpus=fleet_spec.num_gpus,
                max_pending_per_replica=fleet_spec.max_pending_per_replica,
                batch_size=fleet_spec.batch_size,
                resources=fleet_spec.resources,
                start_timeout=fleet_spec.start_timeout,
                name=f"job:{self.output.uri}",
                while_starting=beside_replicas,
            )
        startup.add_replicas(fleet.replica_startup)
        if not startup.warming:  # else started beside the replicas
            startup.warm_workers(workers, SHARD_TASK_CPUS)
        return fleet

    def _start_ray(self, signals: StopOnSignal, startup: Startup) -> None:
        """Join the configured cluster or start the local instance, once."""
        from embedfleet.fleet.ray_start import ensure_ray

        with startup.timed("ray_init"):
            if ensure_ray(self.spec.fleet.address):
                signals.install()  # ray.init sets its own SIGTERM handler

    def _metadata(
        self, fleet: EmbeddingFunction | None, recorded: dict[str, Any] | None
    ) -> dict[str, Any]:
        """What the vectors are recorded with: the function as a replica resolved it (the
        device, precision and quality guards of where it runs; the driver never loads the
        model), or, when a resumed snapshot has nothing left to embed, what it recorded."""
        if fleet is None:
            assert recorded is not None
            return dict(recorded)
        return {**embedding_metadata(fleet), "job_fingerprint": self.fingerprint}

    def _run_info(self, run: RunState) -> dict[str, Any]:
        """``_run.json`` of a new snapshot: what a resume checks and a reader trusts."""
        return {
            "run_id": run.snapshot.run_id,
            "fingerprint": self.fingerprint,
            "spec": self.spec.to_public_dict(),
            "embedding": run.metadata,
            "shards": [shard.shard_id for shard in run.plan.shards],
            "mode": self.spec.output.policy,
            "base": run.plan.base,
            "packing": run.plan.packing,
        }

    def _embed_shards(self, run: RunState) -> float:
        """Keep a window of shard tasks in flight (on Ray, ``schedule.window_for``: ``2 x
        replicas`` for shards of the default size, more for small ones; in this process,
        one embedding and one queued) until every shard is in, the budget refused one or
        a signal came; returns when the last shard was in."""
        result, fleet, limit = run.result, run.fleet, run.plan.token_limit
        assert fleet is not None
        run.startup.workers_ready()
        result.startup_seconds = time.perf_counter() - run.started
        if limit is not None:  # one ledger per run: shards reserve tokens in it
            run.budget = LockedBudget(limit) if run.in_process else RayBudget.start(limit)
        run.bar = ShardProgress(sum(shard.estimated_rows for shard in run.todo), run.progress)
        context = ShardContext(
            spec=self.spec,
            fleet=StoppableFunction(fleet, run.stop) if run.in_process else fleet,
            run_id=run.snapshot.run_id,
            metadata=run.metadata,
            function=self.function,
            budget=run.budget,
            base=run.base,
        )
        run.quota_before = quota_stats(self.function)
        run.executor, window = self._executor(run, context)
        scheduler = Scheduler(
            run.executor,
            window,
            run.collect,
            halted=lambda: run.halted,
            stopped=run.stop.is_set,
            after_pass=run.show_progress,
        )
        run.pending = scheduler.pending  # what release() cancels
        scheduler.run(run.todo)
        return time.perf_counter()  # the last shard is in; what follows is the finish

    def _executor(self, run: RunState, context: ShardContext) -> tuple[Executor, int]:
        """Where shard tasks run, and how many are kept in flight."""
        if run.in_process:
            return InProcessExecutor(embed_shard, context), IN_PROCESS_WINDOW
        fleet, replicas = run.fleet, self.spec.fleet.replicas
        run.result.placement = list(getattr(fleet, "placement", []))
        rows = sum(shard.estimated_rows for shard in run.todo) / max(1, len(run.todo))
        pending = self.spec.fleet.max_pending_per_replica
        window = window_for(replicas, rows, getattr(fleet, "batch_size", 1), pending)
        return RayExecutor.of(embed_shard, SHARD_TASK_CPUS, context), window

    def _finish(self, run: RunState) -> None:
        """Count what is left; when nothing is, make the snapshot complete: drop stale
        commits, check ids, roll up the manifest, move ``_latest``, prune."""
        plan, snapshot, result = run.plan, run.snapshot, run.result
        result.estimated_cost = plan.price.cost(result.tokens)
        valid = still_committed(snapshot.commits(), plan.shards)
        result.shards_remaining = len({shard.shard_id for shard in plan.shards} - set(valid))
        if result.budget_stopped:
            logger.warning(
                "stopped at the budget (%s tokens this run): %d tokens used, %d of %d shards "
                "remain; re-run to resume, with a fresh per-run budget",
                plan.token_limit,
                result.tokens,
                result.shards_remaining,
                result.shards,
            )
        if result.failed_shards or result.budget_stopped or result.provider_stopped:
            return
        for path in snapshot.keep_only(set(valid)):
            logger.info("removed %s: its shard is no longer in the source as committed", path)
        check_unique_ids(snapshot, self.spec.source.id_column)
        markers = list(valid.values())
        total_tokens = sum(marker.tokens for marker in markers)
        if run.base is not None:
            result.deleted = incremental.deleted(run.base, snapshot)
            if self.spec.chunking is not None:  # base ids are chunks: count documents apart
                result.chunks_deleted = result.deleted
                base = self.output.snapshot(run.base.run_id)
                result.deleted = incremental.deleted_documents(base, snapshot)
        snapshot.finish(
            {
                "fingerprint": self.fingerprint,
                "embedding": run.metadata,
                "mode": self.spec.output.policy,
                "base": plan.base,
                "rows": result.rows_read,
                "vectors": sum(marker.vector_rows for marker in markers),
                "embedded": sum(marker.embedded for marker in markers),
                "carried_over": sum(marker.carried for marker in markers),
                "reused": sum(marker.reused for marker in markers),
                "deleted": result.deleted,
                "rejected": result.rejected,
                "rejected_by_kind": result.rejected_by_kind,
                "tokens": total_tokens,
                "estimated_cost": plan.price.cost(total_tokens),
                "price": plan.price.to_dict(),
                **({"chunks": chunk_totals(markers, result)} if self.spec.chunking else {}),
                "quota": result.quota,
            }
        )
        result.complete = True
        from embedfleet.destinations.records import pinned_snapshots

        prune(self.output, self.spec.output.keep_snapshots, pinned_snapshots(self.output))
