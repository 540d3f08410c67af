"""Where a job's start-up goes: the quickstart (or any spec) from a cold process, phase by phase.

Usage: python scripts/bench_startup.py [--spec jobs/quickstart.toml] [--runs 3] [--report PATH]

Each run is a fresh Python process (imports included, as ``embedfleet run`` pays
them) that runs the job into a temporary output and prints its phases; the table
shows the median of each phase over the runs. Start-up is from the process's start
to the first shard embedding ("command" is the interpreter, imports and the spec,
before ``Job.run``); "end to end" is the process's whole life.

On code older than ``JobResult.startup_phases`` (to measure "before"), the phases
are taken from outside: ``ray.init``, ``Job.plan`` and the fleet's constructor are
wrapped with timers, and what start-up leaves unexplained (the shard workers'
warm-up, the metadata) is "rest".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time


def age():
    # seconds since this process started: /proc's start tick against the boot clock
    # (psutil's create_time reads up to a second late: the boot time is whole seconds)
    fields = open("/proc/self/stat").read().rpartition(")")[2].split()
    return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")


from embedfleet.job import Job, JobSpec
from embedfleet.job.result import JobResult

timed = {}
legacy = "startup_phases" not in JobResult.__dataclass_fields__  # code from before phases

def timer(owner, name, phase):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timed[phase] = timed.get(phase, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapped)

if legacy:  # only there: importing Ray would count against an in-process run
    import ray
    import embedfleet.fleet

    timer(ray, "init", "ray_init")
    timer(Job, "plan", "plan")
    timer(embedfleet.fleet.RemoteEmbeddingFunction, "__init__", "fleet")
spec = JobSpec.from_toml(sys.argv[1])
spec.output.uri, spec.output.mode = sys.argv[2], "overwrite"
job = Job(spec)
command = age()
result = job.run(progress=False)
phases = dict(getattr(result, "startup_phases", None) or timed)
if not getattr(result, "startup_phases", None):
    phases["rest"] = result.startup_seconds - sum(timed.values())
phases = {"command": command, **{k: v for k, v in phases.items() if k != "command"}}
print(json.dumps({
    "phases": phases,
    "startup": command + result.startup_seconds,
    "end_to_end": age(),
    "embedded": result.embedded,
    "run_seconds": result.seconds,
    "finish_seconds": result.finish_seconds,
    "steady_rows_per_second": result.steady_rows_per_second,
    "embedded_in": getattr(result, "embedded_in", "ray"),
}))
import gc
gc.freeze()  # as the embedfleet command exits (embedfleet.cli.command)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec", default=str(Path(__file__).parent.parent / "jobs/quickstart.toml")
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--fleet-mode",
        choices=("auto", "ray", "in_process"),
        help="where the job embeds ($EMBEDFLEET_FLEET_MODE in the child; default: the spec's)",
    )
    parser.add_argument("--report", metavar="PATH", help="write every run's phases as JSON")
    options = parser.parse_args(argv)
    runs = []
    environment = dict(os.environ)
    if options.fleet_mode:
        environment["EMBEDFLEET_FLEET_MODE"] = options.fleet_mode
    for index in range(options.runs):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            child = subprocess.run(
                [sys.executable, "-c", CHILD, options.spec, f"{folder}/out"],
                capture_output=True,
                text=True,
                check=False,
                env=environment,
            )
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return 1
            run = json.loads(child.stdout.strip().splitlines()[-1])
            run["wall"] = time.perf_counter() - start
            runs.append(run)
            print(
                f"run {index + 1}: start-up {run['startup']:.1f} s, end to end {run['wall']:.1f} s "
                f"(run() {run['run_seconds']:.1f} s, steady {run['steady_rows_per_second']:.1f} "
                f"rows/s, finish {run['finish_seconds']:.1f} s)"
            )
    names = list(dict.fromkeys(name for run in runs for name in run["phases"]))
    header = f"phase (median of {len(runs)} runs)"
    print(f"{header:<32}{'s':>7}")
    for name in names:
        values = [run["phases"].get(name, 0.0) for run in runs]
        print(f"{name:<32}{statistics.median(values):>7.1f}")
    startup = statistics.median(run["startup"] for run in runs)
    print(f"{'start-up (command to first shard)':<32}{startup:>7.1f}")
    print(f"{'end to end':<32}{statistics.median(r['wall'] for r in runs):>7.1f}")
    print(f"embedded in: {runs[-1]['embedded_in']}")
    if options.report:
        Path(options.report).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
