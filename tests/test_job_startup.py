"""A job's start-up: what overlaps, what is not started, and how it is reported."""

from __future__ import annotations

import json
import time

import pytest

from embedfleet.job import Job, JobSpec
from embedfleet.job.startup import Startup, describe_phases


def test_a_quick_plan_decides_before_ray_starts():
    """A run with nothing left to embed learns it from the plan without starting Ray."""
    started = []
    assert Startup().plan_beside_ray(lambda: "the plan", lambda: started.append("ray")) == (
        "the plan"
    )
    assert started == []


def test_ray_starts_while_a_slow_plan_lists_the_source():
    events, startup = [], Startup()

    def slow_plan():
        time.sleep(1.0)  # an object store's listing and row sample
        events.append("planned")
        return "the plan"

    assert startup.plan_beside_ray(slow_plan, lambda: events.append("ray started")) == "the plan"
    assert events == ["ray started", "planned"]
    assert startup.phases["plan"] >= 1.0


def test_a_plan_that_fails_fails_the_run_with_its_own_error():
    def broken_plan():
        time.sleep(0.5)
        raise FileNotFoundError("no such source")

    with pytest.raises(FileNotFoundError, match="no such source"):
        Startup().plan_beside_ray(broken_plan, lambda: None)


def test_phases_read_as_one_line_with_details_under_their_phase():
    phases = {"lock": 0.01, "ray_init": 3.94, "fleet": 4.8, "fleet.imports": 2.9, "plan": 0.1}
    assert describe_phases(phases) == "lock 0.0, ray_init 3.9, fleet 4.8 (imports 2.9), plan 0.1 s"


def small_job(tmp_path, rows: int = 5) -> Job:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(rows)))
    spec = JobSpec.from_dict(
        {
            "source": {"uri": str(data)},
            "embedding": {"provider": "hash", "config": {"dimension": 8}},
            "fleet": {"replicas": 2},
            "output": {"uri": str(tmp_path / "out")},
        }
    )
    return Job(spec)


def test_only_the_shard_workers_a_run_uses_are_started(tmp_path, local_ray, monkeypatch):
    """One shard to embed: one worker warmed up, not 2 x replicas."""
    warmed = []
    real = Startup.warm_workers
    monkeypatch.setattr(
        Startup,
        "warm_workers",
        lambda self, count, cpus: (warmed.append(count), real(self, count, cpus)),
    )
    result = small_job(tmp_path).run(progress=False)
    assert result.complete and warmed == [1]
    assert {"lock", "plan", "fleet", "metadata", "shard_workers"} <= set(result.startup_phases)


@pytest.mark.parametrize(
    ("spare", "order"), [(0.0, ["replicas up", "warm"]), (4.0, ["warm", "replicas up"])]
)
def test_shard_workers_start_beside_the_replicas_only_where_a_cpu_is_left(
    tmp_path, local_ray, monkeypatch, spare, order
):
    """On a machine the replicas fill, the workers' imports would slow the replicas' own:
    they start after the fleet is up; with a CPU to spare, while it loads."""
    events = []
    real_warm, real_replicas = Startup.warm_workers, Startup.add_replicas
    monkeypatch.setattr("embedfleet.job.run.spare_cpus", lambda fleet: spare)
    monkeypatch.setattr(
        Startup,
        "warm_workers",
        lambda self, count, cpus: (events.append("warm"), real_warm(self, count, cpus)),
    )
    monkeypatch.setattr(
        Startup,
        "add_replicas",
        lambda self, timed: (events.append("replicas up"), real_replicas(self, timed)),
    )
    assert small_job(tmp_path).run(progress=False).complete
    assert events == order
