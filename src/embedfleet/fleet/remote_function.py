"""``remote(ef)``: the same embedding function as a pool of Ray actors.

The returned :class:`RemoteEmbeddingFunction` is itself an embedding function:
``remote(texts)`` returns exactly what ``ef(texts)`` returns. The base class
still validates input, de-duplicates, sorts by length and checks every batch's
output; the fleet only replaces *where* batches run.

What Ray does and embedfleet does not re-implement:

* placement: each replica reserves ``num_cpus`` / ``num_gpus`` (Ray sets
  ``CUDA_VISIBLE_DEVICES``; fractional GPUs pack replicas on one device);
* faults: actors restart (``max_restarts``) and in-flight batches re-run
  (``max_task_retries``) when a replica's process dies;
* backpressure: each call keeps at most ``max_pending_per_replica`` batches in
  flight per replica, waits with ``ray.wait`` and sends the next batch to the
  replica with the fewest outstanding batches.

Replicas are built on the worker from the registry (``name`` + config), so models,
clients and sockets are never pickled (custom functions travel as a cloudpickle).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import (
    Documents,
    EmbeddingFunction,
    Embeddings,
    validate_documents,
)
from embedfleet.embedding_functions.batching import CallPlan
from embedfleet.errors import BatchFailedError, ConfigError, FleetError, FleetStartError
from embedfleet.fleet import live_fleets, placement
from embedfleet.fleet.placement import Reservation
from embedfleet.fleet.ray_start import cluster_can_grow, ensure_ray
from embedfleet.fleet.replica import (
    FunctionSpec,
    Replica,
    cause_of,
    concurrent_batches_of,
    kill_actors,
    merged_description,
    require_ray,
    startup_failure,
    workload_of,
)
from embedfleet.fleet.worker_output import NoteRelay

logger = logging.getLogger("embedfleet.fleet")

#: Texts per batch a fleet sends a replica (at least the function's own batch size):
#: replicas sort and cut within it, so it is wider than an in-process batch.
FLEET_BATCH_SIZE = 64


class RemoteEmbeddingFunction(EmbeddingFunction):
    """Run ``function`` as ``replicas`` Ray actors: a drop-in replacement for it.

    The function's declared :attr:`~EmbeddingFunction.workload` sets the defaults:
    ``"compute"`` (local models, and functions that do not declare one) reserves
    ``num_cpus=1`` per replica and runs one batch at a time; ``"io"`` (API
    providers) reserves no CPU and runs :meth:`~EmbeddingFunction.concurrent_batches`
    batches at once (an API provider's ``max_concurrency``).

    API keys are read from each worker's own environment; ``forward_env`` (opt-in)
    copies the named variables from this process to the replicas through Ray's
    runtime environment, where Ray's dashboard and logs show them. A fleet with the
    same function and parameters (or the same ``name``) as a live one of this process
    replaces it (re-running a notebook cell never leaks actors); others coexist, and one
    that the local instance cannot place beside them fails at once. ``address`` (or
    ``RAY_ADDRESS``) joins a running cluster; without either, a local Ray instance is
    started. ``resources``
    asks each replica for custom node resources (``{"gpu_node": 1}``), which pins
    replicas to the nodes started with them (``ray start --resources``). ``while_starting``
    is called with the fleet once its replicas are asked for, before waiting for them (a
    job may start its shard workers there: Ray starts worker processes a few at a time,
    replicas' first).
    """

    def __init__(
        self,
        function: Any,
        *,
        replicas: int = 1,
        num_cpus: float | None = None,
        num_gpus: float = 0,
        max_pending_per_replica: int = 2,
        batch_size: int | None = None,
        address: str | None = None,
        start_timeout: float = 120.0,
        max_restarts: int = 3,
        name: str | None = None,
        forward_env: list[str] | None = None,
        max_concurrency: int | None = None,
        resources: dict[str, float] | None = None,
        while_starting: Callable[[RemoteEmbeddingFunction], object] | None = None,
    ) -> None:
        if not callable(function):
            raise ConfigError(
                f"remote() needs an embedding function, got {type(function).__name__}"
            )
        for label, value in (
            ("replicas", replicas),
            ("max_pending_per_replica", max_pending_per_replica),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a positive integer, got {value!r}")
        if num_gpus < 0 or (num_cpus is not None and num_cpus < 0):
            raise ConfigError("num_cpus and num_gpus must not be negative")
        self.resources = dict(resources or {})
        for resource, amount in self.resources.items():
            if resource in ("CPU", "GPU") or not isinstance(amount, int | float) or amount <= 0:
                raise ConfigError(
                    f"resources must map custom resource names to positive amounts (use "
                    f"num_cpus / num_gpus for CPU and GPU), got {resource!r}: {amount!r}"
                )
        inner_batch = getattr(function, "batch_size", None)
        super().__init__(batch_size=batch_size or max(FLEET_BATCH_SIZE, inner_batch or 0))
        self._function = function
        self.replicas = replicas
        compute = workload_of(function) == "compute"
        self.num_cpus = (1.0 if compute else 0.0) if num_cpus is None else num_cpus
        self.num_gpus = num_gpus
        self.max_concurrency = max_concurrency or concurrent_batches_of(function)
        self.max_pending_per_replica = max(max_pending_per_replica, self.max_concurrency)
        self.fleet_name = name or getattr(function, "provider_name", "") or type(function).__name__
        self._spec = FunctionSpec.of(function)
        self.reservation = Reservation(replicas, self.num_cpus, num_gpus, self.resources)
        if isinstance(function, EmbeddingFunction):
            self._dimension = function.known_dimension
        self._actors: list[Any] = []
        self._outstanding = [0] * replicas
        self._balance_lock = threading.Lock()
        self._owner = True
        self.placement: list[dict[str, Any]] = []
        self.replica_startup: list[dict[str, float]] = []  # seconds per phase, per replica
        self._retired: str | None = None  # why calls are refused (replaced, shut down)
        self._notes = NoteRelay(self.fleet_name)
        self.forward_env = list(forward_env or [])
        missing = [variable for variable in self.forward_env if variable not in os.environ]
        if missing:
            raise ConfigError(f"forward_env names unset environment variables: {missing}")
        parameters = {
            "function": self._spec.identity(),
            "fleet": [replicas, self.num_cpus, num_gpus, self.resources, self.batch_size],
            "dispatch": [self.max_concurrency, self.max_pending_per_replica, max_restarts],
            "env": self.forward_env,
            "address": address,
        }
        self.fleet_key = name or live_fleets.identity_key(self.fleet_name, parameters)

        ray = require_ray()
        ensure_ray(address)
        replaced = live_fleets.replace(self.fleet_key, self)
        if not cluster_can_grow(ray):  # fail at once where waiting cannot help
            holders = partial(live_fleets.holders, exclude=self)
            placement.refuse_without_room(ray, self, holders, replaced, start_timeout)
        self._start(ray, start_timeout, max_restarts, while_starting or (lambda fleet: None))
        self._finalizer = weakref.finalize(self, kill_actors, list(self._actors))

    # ------------------------------------------------------------------ start / stop
    def _start(
        self, ray: Any, start_timeout: float, max_restarts: int, meanwhile: Callable[[Any], object]
    ) -> None:
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "max_restarts": max_restarts,
            "max_task_retries": max_restarts,
            "max_concurrency": self.max_concurrency,
        }
        if self.resources:  # custom node resources: pins replicas to the nodes that have them
            options["resources"] = self.resources
        if self.forward_env:  # opt-in: Ray shows runtime_env in its dashboard and logs
            env_vars = {variable: os.environ[variable] for variable in self.forward_env}
            options["runtime_env"] = {"env_vars": env_vars}
        actor_class = ray.remote(Replica).options(**options)
        threads = max(1, int(self.num_cpus)) if self.num_cpus >= 1 else None
        self._actors = [actor_class.remote(self._spec, threads) for _ in range(self.replicas)]
        probes = [actor.ready.remote() for actor in self._actors]
        meanwhile(self)
        _, waiting = ray.wait(probes, num_returns=len(probes), timeout=start_timeout)
        try:
            if waiting:
                raise FleetStartError(
                    placement.timeout_message(
                        self.fleet_name, self.reservation, ray, len(waiting), start_timeout
                    )
                )
            for index, probe in enumerate(probes):
                try:
                    ready = ray.get(probe)
                except ray.exceptions.RayActorError as exc:
                    raise FleetStartError(
                        f"replica {index} of {self.fleet_name!r} failed to start: "
                        f"{startup_failure(exc)}"
                    ) from exc
                self.replica_startup.append(ready.pop("startup"))
                self.placement.append(ready)
            self._notes.relay({i: ready.pop("notes") for i, ready in enumerate(self.placement)})
        except FleetStartError:
            kill_actors(self._actors)
            self._actors = []
            raise

    @property
    def label(self) -> str:
        """The fleet's name and, for a registered function, its config where it differs
        from the defaults: what tells this fleet from another of the same provider."""
        return self._spec.label(self.fleet_name)

    def shutdown(self) -> None:
        """Release the actors (also done when the object is garbage-collected)."""
        if self._owner and self._actors:
            self._finalizer()
        self._actors = []

    def retire(self, reason: str) -> None:
        """Shut down for ``reason``, which later calls raise at once."""
        self._retired = reason
        self.shutdown()

    @property
    def running(self) -> bool:
        """Whether this fleet still has its actors (not shut down or replaced)."""
        return bool(self._actors)

    def __enter__(self) -> RemoteEmbeddingFunction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles into Ray tasks as actor handles + spec; never the local model.
        A copy does not own the actors: only the creator shuts them down."""
        state = super().__getstate__()
        for key in ("_function", "_balance_lock", "_finalizer", "_notes"):
            state.pop(key, None)
        state["_owner"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._balance_lock, self._notes = threading.Lock(), NoteRelay(self.fleet_name)
        self._function = None

    @property
    def function(self) -> Any:
        """The wrapped function (rebuilt from its spec in an unpickled copy; no model
        is loaded until it is called)."""
        if self._function is None:
            self._function = self._spec.build()
        return self._function

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """The wrapped function's config (what a rebuilt in-process function needs)."""
        if self._spec.config is None:
            raise ConfigError(f"{self.fleet_name!r} is a custom function without a config")
        return dict(self._spec.config)

    @property
    def provider(self) -> str | None:
        """Registry name of the wrapped function (None for a pickled custom one)."""
        return self._spec.provider

    def describe(self) -> dict[str, Any]:
        """The wrapped function's description, as resolved on a replica. Where replicas
        resolved it differently (a mixed cluster: another device, or a precision guard
        that fails on one kind of hardware), a warning names what differs."""
        ray = require_ray()
        described = ray.get([actor.describe.remote() for actor in self._live_actors()])
        return merged_description(described, self.fleet_name)

    def __repr__(self) -> str:
        return (
            f"RemoteEmbeddingFunction({self.fleet_name!r}, replicas={self.replicas}, "
            f"num_cpus={self.num_cpus:g}, num_gpus={self.num_gpus:g})"
        )

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        plan = CallPlan(list(texts), query, [], counted=False)
        output = next(iter(self._embed_batches([texts], plan)))
        self.stats.record(plan.counts)
        return output

    def map(
        self, batches: Iterable[Documents | str], *, query: bool = False
    ) -> Iterator[Embeddings]:
        """Embed many batches, yielding each batch's vectors in order while later
        batches are still in flight on the replicas."""
        checked = [validate_documents(batch) for batch in batches]
        work = [batch for batch in checked if batch]
        plan = CallPlan([text for batch in work for text in batch], query, [], counted=False)
        outputs = self._embed_batches(work, plan)
        offset = 0
        for batch in checked:
            if not batch:
                yield []
                continue
            indices = list(range(offset, offset + len(batch)))
            offset += len(batch)
            yield list(self._check_output(next(outputs), indices))
        self.stats.record(plan.counts)

    # ------------------------------------------------------------------ dispatch
    def _live_actors(self) -> list[Any]:
        if not self._actors:
            raise FleetError(f"fleet {self.label} {self._retired or 'is shut down'}")
        return self._actors

    def _embed_batches(self, batches: list[Documents], plan: CallPlan) -> Iterator[Any]:
        """Spread batches over replicas, least outstanding first; yield in order. The
        replicas count tokens and truncations; their counts go into ``plan``."""
        ray = require_ray()
        query = plan.query
        actors = self._live_actors()
        results: dict[int, np.ndarray] = {}
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (batch, replica)
        mine = [0] * len(actors)
        next_batch = next_yield = 0
        try:
            while next_yield < len(batches):
                while next_batch < len(batches):
                    replica = self._choose_replica(mine)
                    if replica is None:
                        break
                    ref = actors[replica].embed.remote(batches[next_batch], query)
                    in_flight[ref] = (next_batch, replica)
                    next_batch += 1
                if next_yield not in results:
                    done, _ = ray.wait(list(in_flight), num_returns=1)
                    for ref in done:
                        batch, replica = in_flight.pop(ref)
                        self._release(mine, replica)
                        size = len(batches[batch])
                        results[batch] = self._collect(ray, ref, batch, size, replica, plan)
                    continue
                yield results.pop(next_yield)
                next_yield += 1
        finally:
            for _batch, replica in in_flight.values():
                self._release(mine, replica)

    def _choose_replica(self, mine: list[int]) -> int | None:
        with self._balance_lock:
            open_replicas = [
                i for i, count in enumerate(mine) if count < self.max_pending_per_replica
            ]
            if not open_replicas:
                return None
            replica = min(open_replicas, key=lambda i: (self._outstanding[i], mine[i]))
            self._outstanding[replica] += 1
            mine[replica] += 1
            return replica

    def _release(self, mine: list[int], replica: int) -> None:
        with self._balance_lock:
            self._outstanding[replica] -= 1
            mine[replica] -= 1

    def _collect(
        self, ray: Any, ref: Any, batch: int, size: int, replica: int, plan: CallPlan
    ) -> np.ndarray:
        try:
            matrix, counts, notes = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = cause_of(exc)
            raise BatchFailedError(
                f"batch {batch} ({size} texts) failed on fleet {self.fleet_name!r}: "
                f"{type(cause).__name__}: {cause}",
                batch_index=batch,
                cause=cause,
            ) from cause
        except ray.exceptions.RayActorError as exc:
            raise FleetError(
                f"batch {batch} of fleet {self.fleet_name!r} lost its replica after "
                f"all restarts: {exc}"
            ) from exc
        plan.counts.add(counts)
        if notes:
            self._notes.relay({replica: notes})
        return matrix


#: ``embedfleet.remote(ef, replicas=2, ...)`` reads best at call sites.
remote = RemoteEmbeddingFunction
