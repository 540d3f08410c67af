"""One fleet replica: the actor that rebuilds an embedding function on its worker.

Replicas are built from the registry (``name`` + config), so models, clients and
sockets are never pickled; custom, unregistered functions travel as a
cloudpickle instead. API keys are read from the worker's own environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedfleet import timings
from embedfleet.embedding_functions import registry
from embedfleet.embedding_functions.base import (
    DEFAULT_IO_CONCURRENCY,
    Documents,
    EmbeddingFunction,
)
from embedfleet.embedding_functions.config_keys import non_default
from embedfleet.errors import ConfigError, MissingDependencyError
from embedfleet.fleet.worker_output import keep_replica_output

logger = logging.getLogger("embedfleet.fleet")

RAY_INSTALL_HINT = 'pip install "embedfleet[ray]"'


@dataclass(frozen=True)
class FunctionSpec:
    """How a replica rebuilds the function: by registry name + config, or a pickle."""

    provider: str | None
    config: dict[str, Any] | None
    pickled: bytes | None = None

    @classmethod
    def of(cls, function: Any) -> FunctionSpec:
        if isinstance(function, EmbeddingFunction) and function.provider_name:
            try:
                registered = registry.get(function.provider_name)
            except KeyError:
                registered = None
            if registered is type(function):
                return cls(function.provider_name, function.get_config())
        import cloudpickle

        try:
            return cls(None, None, cloudpickle.dumps(function))
        except Exception as exc:
            raise ConfigError(
                f"{type(function).__name__} is not registered and cannot be pickled ({exc}); "
                "register it with @embedding_functions.register(name) so replicas can "
                "build it from its config"
            ) from exc

    def identity(self) -> dict[str, Any]:
        """What makes two specs the same function: name + config, or the pickle's hash."""
        if self.pickled is not None:
            return {"pickle_sha256": hashlib.sha256(self.pickled).hexdigest()}
        return {"provider": self.provider, "config": self.config}

    def label(self, name: str) -> str:
        """``name`` and the config entries that differ from the provider's defaults."""
        if self.provider is None or self.config is None:
            return repr(name)
        changed = non_default(registry.get(self.provider), self.config)
        settings = ", ".join(f"{key}={value!r}" for key, value in changed.items())
        return f"{name!r} ({settings})" if settings else repr(name)

    def build(self) -> Any:
        if self.pickled is not None:
            import cloudpickle

            return cloudpickle.loads(self.pickled)
        assert self.provider is not None
        return registry.build(self.provider, self.config)


class Replica:
    """The actor: one embedding function, built on the worker."""

    def __init__(self, spec: FunctionSpec, threads: int | None) -> None:
        # What this process prints goes back to the driver as notes (worker_output).
        self._output = keep_replica_output()
        started = time.perf_counter()
        self.function = spec.build()
        if isinstance(self.function, EmbeddingFunction):
            if threads:
                self.function.set_num_threads(threads)
            self.function.warm_up()  # a model that cannot load fails the start, not a batch
        self._startup = {**timings.snapshot(), "replica": time.perf_counter() - started}

    def ready(self) -> dict[str, Any]:
        """Where the replica runs, its start-up seconds per phase (``replica``: the whole
        constructor; ``imports``, ``model_load``, ``precision_guard`` where timed), and what
        it printed while starting."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": _torch_threads(),
            "startup": self._startup,
            "notes": self._output.drain(),
        }

    def embed(self, texts: Documents, query: bool) -> tuple[np.ndarray, dict[str, int], list[str]]:
        """Vectors for one batch, what it added to the function's counters (truncated
        texts, tokens, padded tokens) for the driver's ``stats``, and what was printed."""
        function = self.function
        if not isinstance(function, EmbeddingFunction):
            call = getattr(function, "embed_query", function) if query else function
            return np.asarray(call(texts), dtype=np.float32), {}, self._output.drain()
        vectors, counts = function.embed_counted(texts, query=query)
        return np.stack(vectors), counts.as_dict(), self._output.drain()

    def describe(self) -> dict[str, Any]:
        function = self.function
        return function.describe() if isinstance(function, EmbeddingFunction) else {}


def require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"fleets need Ray: {RAY_INSTALL_HINT}") from exc
    return ray


def kill_actors(actors: list[Any]) -> None:
    """Kill ``actors`` for good (no restart); a gone cluster has nothing left to free."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # a dead actor or a gone cluster: nothing left to free
            continue


def startup_failure(exc: BaseException) -> str:
    """'ErrorClass: message' of what a replica's constructor raised.

    Ray keeps only the text of an actor's creation error, so the last line that
    names an exception is what the user needs (e.g. a ModelNotFoundError)."""
    text = getattr(exc, "error_msg", "") or str(exc)
    raised = re.findall(
        r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.*)$", text, re.M
    )
    if raised:
        name, message = raised[-1]
        return f"{name}: {message}"
    return f"{type(exc).__name__}: {exc}"


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def cause_of(exc: BaseException) -> BaseException:
    """What a replica raised, from the ``RayTaskError`` that carries it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def workload_of(function: Any) -> str:
    """The declared workload; plain callables (not EmbeddingFunctions) count as compute."""
    return str(getattr(function, "workload", "compute"))


def concurrent_batches_of(function: Any) -> int:
    """Batches one replica serves at once, as the function declares it."""
    if isinstance(function, EmbeddingFunction):
        return function.concurrent_batches()
    return 1 if workload_of(function) == "compute" else DEFAULT_IO_CONCURRENCY


def merged_description(described: list[dict[str, Any]], fleet_name: str) -> dict[str, Any]:
    """Replica 0's description; where replicas resolved the function differently (a mixed
    cluster: another device, a precision guard failing on one kind of hardware), a
    warning names what differs."""
    first = described[0]
    differ = sorted(
        {
            key
            for other in described[1:]
            for key in {*first, *other}
            if first.get(key) != other.get(key)
        }
    )
    if differ:
        values = {key: sorted({repr(each.get(key)) for each in described}) for key in differ}
        logger.warning(
            "the replicas of fleet %r describe the function differently (%s); the "
            "metadata records replica 0's",
            fleet_name,
            "; ".join(f"{key}: {', '.join(found)}" for key, found in values.items()),
        )
    return first
