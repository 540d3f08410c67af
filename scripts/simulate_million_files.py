"""The driver at a million files: the real listing, planning and scheduling code over a
synthetic filesystem, with a stand-in executor in place of Ray.

Usage: python scripts/simulate_million_files.py [--files 1000000] [--rows-per-file 20]
           [--rows-per-shard 10000] [--replicas 800] [--no-tracemalloc] [--ray-tasks 0]

1. Lists and plans ``synthetic:///corpus`` (``embedfleet.testing.SyntheticFileSystem``:
   ``--files`` JSON Lines files of ``--rows-per-file`` rows, 1,000 to a directory, made up
   when listed or read, never stored) with ``list_source`` + ``plan_listing``: driver time,
   files opened (the sample), shards, and the memory planning holds and peaks at per file
   (tracemalloc: Python allocations, path strings included; it slows the run about 2x, so
   the times are also taken in a second pass without it).
2. Runs the scheduler (``schedule.Scheduler``, the loop ``Job.run`` uses) over those
   shards, and over one shard per file (what a run without packing would schedule), with a
   stand-in executor for a cluster of ``--replicas`` replicas: each pass finds the oldest
   eighth of the window finished, as when shards take about the same time. Each finished
   shard is counted into a real ``JobResult`` from a ``ShardMarker``, as a run does. It
   reports the driver's time per shard: what the loop itself costs, apart from Ray's own
   per-task cost.
3. With ``--ray-tasks N``: the same loop through ``RayExecutor`` on a local Ray instance,
   over N shards whose task returns a marker at once: the driver's CPU time per shard with
   Ray's submit, wait and get included (the part of a shard's cost a run's driver pays).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from typing import Any

import fsspec

from embedfleet.job.listing import list_source
from embedfleet.job.result import JobResult
from embedfleet.job.schedule import Scheduler, window_for
from embedfleet.job.shard_planner import plan_listing
from embedfleet.job.shards import Piece, Shard
from embedfleet.job.spec import SourceSpec
from embedfleet.job.store import ShardMarker
from embedfleet.testing import SyntheticFileSystem


class ClusterStandIn:
    """Shard tasks that finish oldest first, ``at_least`` per wait: no Ray, no work."""

    def __init__(self) -> None:
        self.submitted: dict[int, Shard] = {}
        self.next = 0
        self.waits = 0

    def submit(self, shard: Shard) -> int:
        self.next += 1
        self.submitted[self.next] = shard
        return self.next

    def wait(self, handles: list[int], at_least: int, timeout: float) -> list[int]:
        self.waits += 1
        return handles[:at_least]

    def result(self, handle: int) -> ShardMarker:
        shard = self.submitted.pop(handle)
        rows = shard.estimated_rows
        return ShardMarker(shard.shard_id, shard.source_version, rows=rows, embedded=rows)


def plan_once(source: SourceSpec, rows_per_shard: int, trace: bool) -> dict[str, Any]:
    SyntheticFileSystem.opened = 0
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    listing = list_source(source)
    listed = time.perf_counter()
    planned = plan_listing(listing, source, rows_per_shard)
    done = time.perf_counter()
    report: dict[str, Any] = {
        "list_seconds": round(listed - started, 2),
        "plan_seconds": round(done - listed, 2),
        "shards": len(planned.shards),
        "files_opened": SyntheticFileSystem.opened,
        "planned": planned,
        "listing": listing,
    }
    if trace:
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        files = len(listing.files)
        report["held_bytes_per_file"] = round(held / files)
        report["peak_bytes_per_file"] = round(peak / files)
    return report


def schedule(shards: list[Shard], replicas: int) -> dict[str, Any]:
    rows = sum(shard.estimated_rows for shard in shards) / max(1, len(shards))
    window = window_for(replicas, rows, 64, 2)
    executor = ClusterStandIn()
    result = JobResult(run_id="simulated", snapshot="simulated", complete=False)

    def on_done(shard: Shard, answer: Any, error: BaseException | None) -> None:
        result.count_committed(answer)

    scheduler = Scheduler(executor, window, on_done)
    started = time.perf_counter()
    scheduler.run(shards)
    seconds = time.perf_counter() - started
    assert result.rows_read == sum(shard.estimated_rows for shard in shards)
    return {
        "shards": len(shards),
        "window": window,
        "passes": scheduler.passes,
        "driver_seconds": round(seconds, 2),
        "driver_microseconds_per_shard": round(seconds / max(1, len(shards)) * 1e6, 1),
    }


def _instant_marker(shard: Shard) -> ShardMarker:
    return ShardMarker(shard.shard_id, shard.source_version, rows=1, embedded=1)


def ray_schedule(shards: list[Shard], window: int) -> dict[str, Any]:
    import ray

    from embedfleet.job.schedule import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    task = ray.remote(num_cpus=0, max_retries=0)(_instant_marker)
    ray.get([task.remote(shard) for shard in shards[:window]])  # workers started
    result = JobResult(run_id="ray", snapshot="ray", complete=False)
    scheduler = Scheduler(
        RayExecutor(task), window, lambda shard, answer, error: result.count_committed(answer)
    )
    wall, cpu = time.perf_counter(), time.process_time()
    scheduler.run(shards)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ray.shutdown()
    assert result.rows_read == len(shards)
    return {
        "shards": len(shards),
        "window": window,
        "passes": scheduler.passes,
        "wall_seconds": round(wall, 2),
        "driver_cpu_microseconds_per_shard": round(cpu / len(shards) * 1e6),
        "shards_per_second": round(len(shards) / wall),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--rows-per-file", type=int, default=20)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=800)
    parser.add_argument("--no-tracemalloc", action="store_true")
    parser.add_argument("--ray-tasks", type=int, default=0)
    arguments = parser.parse_args(argv)
    fsspec.register_implementation("synthetic", SyntheticFileSystem, clobber=True)
    options = {"files": arguments.files, "rows_per_file": arguments.rows_per_file}
    source = SourceSpec(uri="synthetic:///corpus", storage_options=options)

    traced = {} if arguments.no_tracemalloc else plan_once(source, arguments.rows_per_shard, True)
    traced.pop("planned", None), traced.pop("listing", None)
    timed = plan_once(source, arguments.rows_per_shard, False)
    planned, listing = timed.pop("planned"), timed.pop("listing")
    per_file = [
        Shard.of(
            listing.root, (Piece(file.relative_path, "jsonl", "bytes", 0, file.size or 0, 20),)
        )
        for file in listing.files
    ]
    report = {
        "files": arguments.files,
        "rows": arguments.files * arguments.rows_per_file,
        "rows_per_shard": arguments.rows_per_shard,
        "planning": timed,
        "planning_traced": traced,
        "schedule_packed": schedule(planned.shards, arguments.replicas),
        "schedule_one_shard_per_file": schedule(per_file, arguments.replicas),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if arguments.ray_tasks:
        report["schedule_on_ray"] = ray_schedule(per_file[: arguments.ray_tasks], 16)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
