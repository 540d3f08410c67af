"""Small jobs embed in the driver's process (``job/in_process.py``): where ``auto``
chooses to, and that such a run writes what a Ray fleet writes, rejects included, and
stops, resumes and keeps to its budget the same way."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

import embedfleet
from embedfleet.errors import ConfigError
from embedfleet.fleet.worker_output import libraries_quiet
from embedfleet.job import Job, JobSpec
from embedfleet.job.in_process import IN_PROCESS_MAX_ROWS, MODE_VARIABLE, choose_mode
from embedfleet.job.spec import FleetSpec
from embedfleet.testing import HashEmbeddingFunction

HASH = {"provider": "hash", "config": {"dimension": 8}}


@pytest.fixture
def default_mode(monkeypatch):
    """The user's default: neither the spec nor the environment choose."""
    monkeypatch.delenv(MODE_VARIABLE, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def write_source(path: Path, count: int, bad_lines: tuple[int, ...] = ()) -> Path:
    lines = [
        json.dumps({"id": f"d{i}", "text": f"document {i} " * (1 + i % 5)}) for i in range(count)
    ]
    for line in bad_lines:
        lines[line] = '{"id": "broken", "text": '  # invalid JSON: a reject
    path.write_text("\n".join(lines) + "\n")
    return path


def make_spec(tmp_path: Path, source: Path, name: str, **fleet) -> JobSpec:
    return JobSpec.from_dict(
        {
            "source": {"uri": str(source), "id_column": "id"},
            "embedding": HASH,
            "fleet": {"replicas": 2, "num_cpus": 0, **fleet},
            "output": {"uri": str(tmp_path / name), "rows_per_shard": 10},
        }
    )


class ComputeFunction(HashEmbeddingFunction):
    workload = "compute"  # as a local model: one batch at a time


@pytest.mark.usefixtures("default_mode")
@pytest.mark.parametrize(
    ("fleet", "rows", "environment", "expected", "reason"),
    [
        ({}, 240, {}, "in_process", "a small job, about 240 rows"),
        ({}, 10, {}, "in_process", "a small job, about 10 rows"),  # API providers too
        ({}, IN_PROCESS_MAX_ROWS + 1, {}, "ray", "over 5,000"),
        ({"address": "ray://head:10001"}, 10, {}, "ray", "Ray cluster is configured"),
        ({}, 10, {"RAY_ADDRESS": "auto"}, "ray", "Ray cluster is configured"),
        ({"num_gpus": 1}, 10, {}, "ray", "asks for GPUs"),
        ({}, 10**6, {MODE_VARIABLE: "in_process"}, "in_process", "$EMBEDFLEET"),
        ({"mode": "ray"}, 10, {MODE_VARIABLE: "in_process"}, "ray", "[fleet] mode"),
        ({"mode": "in_process"}, 10**6, {}, "in_process", "[fleet] mode"),
    ],
)
def test_auto_embeds_small_jobs_here_unless_something_asks_for_ray(
    monkeypatch, fleet, rows, environment, expected, reason
):
    """Where a run embeds depends on the fleet and the rows, not on the provider: a small
    API job embeds here too (tests below)."""
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    mode, why = choose_mode(FleetSpec(**fleet), rows)
    assert mode == expected and reason in why


def test_a_wrong_mode_is_a_config_error_naming_where_it_came_from(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"fleet\.mode must be one of .*'in-process'"):
        make_spec(tmp_path, write_source(tmp_path / "d.jsonl", 1), "out", mode="in-process")
    monkeypatch.setenv(MODE_VARIABLE, "local")
    with pytest.raises(ConfigError, match=f"{MODE_VARIABLE} must be one of"):
        choose_mode(FleetSpec(), 10)


@pytest.mark.usefixtures("default_mode", "local_ray")
def test_a_small_job_embeds_here_and_writes_what_a_fleet_writes(tmp_path):
    source = write_source(tmp_path / "docs.jsonl", 45, bad_lines=(7, 31))
    here = Job(make_spec(tmp_path, source, "here")).run(progress=False)
    assert here.embedded_in.startswith("this process (a small job, about")
    assert "ray_init" not in here.startup_phases and here.placement == []
    assert {"fleet", "fleet.imports", "fleet.model_load"} <= set(here.startup_phases)
    fleet = Job(make_spec(tmp_path, source, "fleet", mode="ray")).run(progress=False)
    assert fleet.embedded_in.startswith('2 Ray replicas ([fleet] mode = "ray")')
    assert "ray_init" in fleet.startup_phases and len(fleet.placement) == 2

    for result in (here, fleet):
        assert result.complete and (result.embedded, result.rejected) == (43, 2)
    tables = [embedfleet.read(str(tmp_path / name)).to_table() for name in ("here", "fleet")]
    by_id = [
        dict(zip(t["id"].to_pylist(), t["embedding"].to_pylist(), strict=True)) for t in tables
    ]
    assert by_id[0].keys() == by_id[1].keys() and len(by_id[0]) == 43
    for key, vector in by_id[0].items():
        np.testing.assert_array_equal(vector, by_id[1][key])
    manifests = [
        json.loads(next((tmp_path / name).glob("snapshots/*/_manifest.json")).read_text())
        for name in ("here", "fleet")
    ]
    for key in ("rows", "embedded", "rejected", "rejected_by_kind", "vectors", "fingerprint"):
        assert manifests[0][key] == manifests[1][key], key
    rejects = [sorted((tmp_path / n).glob("snapshots/*/_rejects/*")) for n in ("here", "fleet")]
    assert [path.name for path in rejects[0]] == [path.name for path in rejects[1]] != []


@pytest.mark.usefixtures("default_mode")
def test_a_signal_stops_after_the_shard_in_hand_and_a_rerun_resumes(tmp_path):
    source = write_source(tmp_path / "docs.jsonl", 60)
    spec = make_spec(tmp_path, source, "out")
    committed: list[str] = []

    def interrupt_after_the_first(marker):
        committed.append(marker.shard_id)
        if len(committed) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    with pytest.raises(KeyboardInterrupt):
        Job(spec).run(progress=False, on_shard=interrupt_after_the_first)
    (snapshot,) = (tmp_path / "out").glob("snapshots/*")
    markers = list(snapshot.glob("_commits/*.json"))
    assert 1 <= len(markers) < 6  # the shard in hand finished; the rest never started
    assert not (tmp_path / "out" / "_latest").exists()
    again = Job(spec).run(progress=False)
    assert again.complete and again.embedded_in.startswith("this process")
    done = sum(json.loads(path.read_text())["rows"] for path in markers)
    assert again.resumed == done and again.embedded == 60 - done
    assert sorted(embedfleet.read(str(tmp_path / "out")).to_table()["id"].to_pylist()) == sorted(
        f"d{i}" for i in range(60)
    )


@pytest.mark.usefixtures("default_mode")
def test_the_budget_stops_a_run_here_as_it_does_on_ray(tmp_path):
    source = write_source(tmp_path / "docs.jsonl", 40)
    spec = make_spec(tmp_path, source, "out")
    per_shard = Job(spec).plan().estimated_tokens // 4
    spec.budget.max_tokens = int(per_shard * 2.5)  # two shards fit, the third does not
    stopped = Job(spec).run(progress=False)
    assert stopped.budget_stopped and not stopped.complete
    assert 0 < stopped.embedded < 40 and stopped.tokens <= spec.budget.max_tokens
    spec.budget.max_tokens = None
    resumed = Job(spec).run(progress=False)
    assert resumed.complete and resumed.resumed == stopped.embedded
    assert resumed.resumed + resumed.embedded == 40


def test_loading_a_model_here_draws_no_library_bars_and_leaves_them_as_they_were():
    hub = pytest.importorskip("huggingface_hub.utils")
    assert not hub.are_progress_bars_disabled()
    with libraries_quiet():
        assert hub.are_progress_bars_disabled()
    assert not hub.are_progress_bars_disabled()


@pytest.mark.usefixtures("default_mode")
def test_plan_says_where_a_run_would_embed(tmp_path, capsys):
    from embedfleet.cli import main

    source = write_source(tmp_path / "docs.jsonl", 30)
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'[source]\nuri = "{source}"\nid_column = "id"\n[embedding]\nprovider = "hash"\n'
        f'[embedding.config]\ndimension = 8\n[output]\nuri = "{tmp_path / "out"}"\n'
    )
    assert main(["plan", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embeds_in"].startswith("this process")
    assert main(["plan", str(spec), "--fleet-mode", "ray", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embeds_in"].startswith("1 Ray replica (")


@pytest.mark.usefixtures("default_mode")
def test_a_run_told_to_embed_here_never_starts_ray_even_beside_a_slow_plan(tmp_path, monkeypatch):
    from embedfleet.fleet import ray_start
    from embedfleet.job import startup

    monkeypatch.setattr(startup, "PLAN_PATIENCE", 0.0)  # every plan is "slow"
    monkeypatch.setattr(ray_start, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    source = write_source(tmp_path / "docs.jsonl", 20)
    result = Job(make_spec(tmp_path, source, "out", mode="in_process")).run(progress=False)
    assert result.complete and "ray_init" not in result.startup_phases


@pytest.mark.usefixtures("default_mode")
def test_a_signal_ends_the_shard_in_hand_between_slices_uncommitted(tmp_path, monkeypatch):
    """Ctrl-C waits for one slice of texts, not for a whole shard: the shard is left
    uncommitted and the re-run embeds it."""
    from embedfleet.job import in_process
    from embedfleet.job.run_control import StopOnSignal

    monkeypatch.setattr(in_process, "stop_slice", lambda function: 8)
    calls: list[int] = []
    embed_batch = HashEmbeddingFunction.embed_batch
    handled = threading.Event()
    handle = StopOnSignal._handle

    def handle_and_tell(self, signum, frame):
        handle(self, signum, frame)
        handled.set()

    def signalling(self, texts, *, query=False):
        calls.append(len(texts))
        if len(calls) == 1:  # Ctrl-C while the first slice embeds, as a slow model would
            os.kill(os.getpid(), signal.SIGINT)
            assert handled.wait(timeout=30), "the driver never handled the signal"
        return embed_batch(self, texts, query=query)

    monkeypatch.setattr(StopOnSignal, "_handle", handle_and_tell)

    monkeypatch.setattr(HashEmbeddingFunction, "embed_batch", signalling)
    source = write_source(tmp_path / "docs.jsonl", 40)
    spec = make_spec(tmp_path, source, "out")
    spec.output.rows_per_shard = 1000  # one shard of 40 rows: 5 slices
    with pytest.raises(KeyboardInterrupt):
        Job(spec).run(progress=False)
    assert sum(calls) <= 8  # nothing embedded after the slice in hand
    assert not list((tmp_path / "out").glob("snapshots/*/_commits/*.json"))
    monkeypatch.setattr(HashEmbeddingFunction, "embed_batch", embed_batch)
    again = Job(spec).run(progress=False)
    assert again.complete and (again.resumed, again.embedded) == (0, 40)


def test_slices_never_cut_what_one_call_sends_at_once():
    """A local model in slices of STOP_SLICE texts; an API provider in slices of what it
    keeps in flight (batch_size x max_concurrency), so no request carries fewer texts."""
    from embedfleet.embedding_functions import OpenAIEmbeddingFunction
    from embedfleet.job.in_process import STOP_SLICE, stop_slice

    assert stop_slice(ComputeFunction(dimension=8, batch_size=16)) == STOP_SLICE
    api = OpenAIEmbeddingFunction(
        api_key="sk-fake", batch_size=100, max_concurrency=4, api_base="http://127.0.0.1:9"
    )
    assert stop_slice(api) == 400


@pytest.mark.usefixtures("default_mode")
def test_a_small_api_job_embeds_here_in_whole_requests(tmp_path, monkeypatch):
    """No Ray for a few hundred rows to send: the function's own requests, paced by this
    process's ledger, none cut smaller by the stop slices (300 rows in batches of 100:
    three requests, not 100 + 100 + 56 + 44)."""
    from tests.fakes import openai_api
    from tests.fakes.server import FakeServer

    server = FakeServer(openai_api.answer, api_key="sk-fake-in-process")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-in-process")
    source = write_source(tmp_path / "docs.jsonl", 300)
    config = {"model_name": "text-embedding-3-small", "api_base": f"{server.url}/v1"}
    config.update(batch_size=100, max_concurrency=4, max_requests_per_minute=6000)
    spec = JobSpec.from_dict(
        {
            "source": {"uri": str(source), "id_column": "id"},
            "embedding": {"provider": "openai", "config": config},
            "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 300},
        }
    )
    try:
        result = Job(spec).run(progress=False)
    finally:
        server.stop()
    assert result.complete and result.embedded == 300 and result.quota is not None
    assert result.embedded_in.startswith("this process (a small job, about 300 rows")
    assert "ray_init" not in result.startup_phases
    assert sorted(len(request.body["input"]) for request in server.requests) == [100] * 3
    table = embedfleet.read(str(tmp_path / "out")).to_table()
    texts = {row["id"]: row["text"] for row in map(json.loads, source.read_text().splitlines())}
    ids = table["id"].to_pylist()
    expected = openai_api.expected_vectors([texts[key] for key in ids])
    np.testing.assert_allclose(table["embedding"].to_pylist(), expected, rtol=1e-6)
