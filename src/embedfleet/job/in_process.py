"""Small jobs embed in this process: no Ray, no fleet to start.

Starting Ray and a fleet costs seconds a small job never earns back: on the
2-core development machine Ray's local instance took 7 s to start, each replica
process imported torch and sentence-transformers again (10 s with two at once),
and the shard tasks' worker processes 4 s more, while the quickstart's 240
documents embed in about 5 s in fp32 (docs/benchmarks.md). So ``[fleet] mode``
chooses where shards embed:

* ``"ray"``: a fleet of ``replicas`` Ray actors, shards as Ray tasks (``run.py``);
* ``"in_process"``: the job's own function in this process, one shard at a time on
  one worker thread (the model uses the machine's cores), through the same shard
  task (read, embed, commit), the same scheduler loop, budget and retries; the output
  is the same snapshot, vectors and manifest;
* ``"auto"`` (the default, when the key is unset): ``$EMBEDFLEET_FLEET_MODE`` where
  set, else ``in_process`` when the run has at most :data:`IN_PROCESS_MAX_ROWS` rows
  to embed and nothing asks for Ray: no ``address`` (or ``RAY_ADDRESS``) and no GPUs.
  An API provider embeds here too (a nightly re-run with a few changed rows, a
  notebook's sample): its function keeps ``max_concurrency`` requests in flight itself,
  paced by this process's ledger of its quota, which is the whole quota when one
  process sends.

What a run chose, and why, is in its summary (``embedded in``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import ConfigError, RunStoppedError
from embedfleet.job.shards import Shard
from embedfleet.job.spec import FLEET_MODES, FleetSpec

#: Rows to embed up to which ``auto`` embeds in this process.
IN_PROCESS_MAX_ROWS = 5_000
#: Shard tasks in flight: one embedding, the next queued behind it.
IN_PROCESS_WINDOW = 2
#: Texts per call of a local model: a stop (a signal) ends a shard between two calls.
STOP_SLICE = 256
#: Overrides ``auto`` for specs that leave ``[fleet] mode`` unset (cron, CI).
MODE_VARIABLE = "EMBEDFLEET_FLEET_MODE"


def configured_mode(fleet: FleetSpec) -> tuple[str, str]:
    """The mode the spec or ``$EMBEDFLEET_FLEET_MODE`` names ("auto" when neither), and
    which of them named it."""
    if fleet.mode is None and os.environ.get(MODE_VARIABLE):
        mode = os.environ[MODE_VARIABLE]
        if mode not in FLEET_MODES:
            raise ConfigError(f"{MODE_VARIABLE} must be one of {FLEET_MODES}, got {mode!r}")
        return mode, f"${MODE_VARIABLE}"
    return fleet.mode or "auto", "[fleet] mode"


def choose_mode(fleet: FleetSpec, rows: int) -> tuple[str, str]:
    """Where this run's shards embed, ``"ray"`` or ``"in_process"``, and why (for the
    summary); ``rows`` is the estimated rows left to embed."""
    mode, source = configured_mode(fleet)
    if mode != "auto":
        return mode, f'{source} = "{mode}"'
    if fleet.address or os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray cluster is configured"
    if fleet.num_gpus:
        return "ray", "the fleet asks for GPUs"
    if rows > IN_PROCESS_MAX_ROWS:
        return "ray", f"about {rows:,} rows to embed, over {IN_PROCESS_MAX_ROWS:,}"
    return "in_process", (
        f'a small job, about {rows:,} rows to embed; [fleet] mode = "ray" starts a fleet'
    )


def where(mode: str, reason: str, fleet: FleetSpec) -> str:
    """The summary's ``embedded in`` line."""
    if mode == "in_process":
        return f"this process ({reason})"
    return f"{fleet.replicas} Ray replica{'s' * (fleet.replicas != 1)} ({reason})"


class InProcessExecutor:
    """Shard tasks on one worker thread of this process (the scheduler's
    :class:`~embedfleet.job.schedule.Executor`): the driver's thread stays free for
    signals and progress while a shard embeds."""

    def __init__(self, task: Any, *args: Any) -> None:
        self.task = task
        self.args = args
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="embedfleet-shard")

    def submit(self, shard: Shard) -> Hashable:
        return self._pool.submit(self.task, shard, *self.args)

    def wait(self, handles: list[Any], at_least: int, timeout: float) -> list[Any]:
        wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)  # one runs at a time
        return [handle for handle in handles if handle.done()]

    def result(self, handle: Future[Any]) -> Any:
        return handle.result()

    def cancel(self, handles: list[Any]) -> None:
        """Drop the shards not started; the one embedding finishes and commits (it
        holds no lock of its own: the run's output lock is held until this returns)."""
        for handle in handles:
            handle.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def stop_slice(function: EmbeddingFunction) -> int:
    """Texts per call of ``function`` between two looks at the stop: :data:`STOP_SLICE`,
    or what one call sends at once where that is more (an API provider's
    ``batch_size x max_concurrency``), so slices never cut its batches smaller."""
    return max(STOP_SLICE, function.batch_size * function.concurrent_batches())


class StoppableFunction:
    """The job's function as in-process shard tasks call it: a shard's texts in slices
    of :func:`stop_slice`, and once ``stop`` is set (a signal) the next slice raises
    :class:`~embedfleet.errors.RunStoppedError`, so Ctrl-C waits for one slice, not a
    whole shard (which is left uncommitted for a re-run). ``stats`` are the function's."""

    def __init__(self, function: EmbeddingFunction, stop: threading.Event) -> None:
        self.function = function
        self.stop = stop
        self.slice = stop_slice(function)

    @property
    def stats(self) -> Any:
        return self.function.stats

    def __call__(self, texts: list[str]) -> list[Any]:
        vectors: list[Any] = []
        for start in range(0, len(texts), self.slice):
            if self.stop.is_set():
                raise RunStoppedError("the run was asked to stop; this shard is not committed")
            vectors.extend(self.function(texts[start : start + self.slice]))
        return vectors
