"""Where a run's start-up goes, and the start-up work that runs side by side.

Start-up is everything before the first shard embeds: the output's lock, the
plan, Ray, the fleet (each replica's process, imports, model load, precision
guard), the metadata read from a replica, and the shard tasks' worker processes.
What can overlap does: Ray starts while a slow plan lists and samples the source,
and the workers start while the fleet does (they reserve no CPU) where a CPU is left
beside the replicas (on a 2-CPU machine with two 1-CPU replicas their imports only
slowed the replicas' own: 17 s of fleet against 11), only as many as will run at
once. Each phase's seconds end up in ``JobResult.startup_phases``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any, TypeVar

from embedfleet import timings

T = TypeVar("T")

#: Seconds a plan may take before Ray starts beside it (see ``Startup.plan_beside_ray``).
PLAN_PATIENCE = 0.25
#: What a replica times in itself (``Replica.ready()``), reported for the slowest one.
REPLICA_PHASES = ("replica", "imports", "model_load", "precision_guard")


class Startup:
    """A run's start-up phases (seconds), in the order they were timed."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._warming: list[Any] = []
        self._warm_started = 0.0

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's seconds to phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def plan_beside_ray(self, plan: Callable[[], T], start_ray: Callable[[], object]) -> T:
        """``plan()`` on a helper thread; when it is not done within
        :data:`PLAN_PATIENCE` seconds (listing an object store, sampling its rows), Ray
        starts meanwhile on this thread. A quick plan decides first, so a run with
        nothing left to embed never starts Ray."""

        def timed_plan() -> T:
            with self.timed("plan"):
                return plan()

        with ThreadPoolExecutor(1, thread_name_prefix="embedfleet-plan") as pool:
            planned = pool.submit(timed_plan)
            try:
                return planned.result(timeout=PLAN_PATIENCE)
            except FutureTimeout:
                start_ray()
                return planned.result()

    def warm_in_process(self, function: Any) -> None:
        """Load ``function``'s model in this process (no fleet): ``fleet`` with its
        ``fleet.<phase>`` details, as a replica times them."""
        from embedfleet.fleet.worker_output import libraries_quiet

        before = timings.snapshot()
        with self.timed("fleet"), libraries_quiet():
            function.warm_up()
        after = timings.snapshot()
        for phase in REPLICA_PHASES[1:]:
            self.phases[f"fleet.{phase}"] = after.get(phase, 0.0) - before.get(phase, 0.0)

    def add_replicas(self, replica_startup: list[dict[str, float]]) -> None:
        """The slowest replica's own phases, as ``fleet.<phase>`` (inside ``fleet``)."""
        for phase in REPLICA_PHASES:
            seconds = [timed.get(phase, 0.0) for timed in replica_startup]
            self.phases[f"fleet.{phase}"] = max(seconds, default=0.0)

    def warm_workers(self, count: int, num_cpus: float) -> None:
        """Start ``count`` worker processes for shard tasks now (imports included)."""
        if count < 1:
            return
        import ray

        warm = ray.remote(num_cpus=num_cpus)(_warm_worker)
        self._warm_started = time.time()
        self._warming = [warm.remote() for _ in range(count)]

    @property
    def warming(self) -> bool:
        """Whether shard workers were started and not yet waited for."""
        return bool(self._warming)

    def workers_ready(self) -> None:
        """Wait for the warm-up tasks: ``shard_workers`` is how long they took from their
        start (beside the fleet or after it), ``shard_workers.after_fleet`` what was left
        once the fleet was up."""
        if not self._warming:
            return
        import ray

        start = time.perf_counter()
        ran = ray.get(self._warming)
        self.phases["shard_workers"] = max(ran) - self._warm_started
        self.phases["shard_workers.after_fleet"] = time.perf_counter() - start
        self._warming = []


def spare_cpus(fleet: Any) -> float:
    """CPUs of the cluster that ``fleet``'s replicas do not reserve."""
    import ray

    held = fleet.reservation.total().get("CPU", 0.0)
    return float(ray.cluster_resources().get("CPU", 0.0)) - held


def describe_phases(phases: dict[str, float]) -> str:
    """'lock 0.0, plan 0.1, ray_init 3.9, fleet 4.8 (replica 4.1, imports 2.9, ...), ...
    s': a phase ``a.b`` is a detail of phase ``a``."""
    details: dict[str, list[str]] = {}
    for name, seconds in phases.items():
        outer, _, inner = name.partition(".")
        if inner:
            details.setdefault(outer, []).append(f"{inner} {seconds:.1f}")
    parts = [
        f"{name} {seconds:.1f}" + (f" ({', '.join(details[name])})" if name in details else "")
        for name, seconds in phases.items()
        if "." not in name
    ]
    return ", ".join(parts) + " s" if parts else "-"


def _warm_worker() -> float:
    """Running it starts a worker process with the job code imported; returns when."""
    return time.time()
