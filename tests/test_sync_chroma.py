"""Chroma destinations against a real `chroma run` server on 127.0.0.1 (one per module)
and an embedded PersistentClient: a job's snapshots kept in a collection, exactly, by
sending only what changed; resumable after SIGKILL; refusals and rebuilds; queries in a
new process embedded with the attached function."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

chromadb = pytest.importorskip("chromadb")

from embedfleet.cli import main  # noqa: E402
from embedfleet.destinations import chroma as chroma_destination  # noqa: E402
from embedfleet.destinations.records import records  # noqa: E402
from embedfleet.destinations.sync import sync_destination  # noqa: E402
from embedfleet.errors import ConfigError, DestinationError  # noqa: E402
from embedfleet.job import Job  # noqa: E402
from embedfleet.job.store import OutputStore  # noqa: E402
from tests.sync_helpers import (  # noqa: E402
    REPO,
    assert_chroma_equals,
    corpus,
    destination,
    job_spec,
    nightly_change,
    run_cli_killed_after,
    snapshot_rows,
    synthetic_snapshot,
    two_snapshots,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """`chroma run --path DIR --port N` on 127.0.0.1, as its users start it."""
    executable = Path(sys.executable).parent / "chroma"
    if not executable.exists():
        pytest.skip("the chroma CLI is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("chroma-server")
    process = subprocess.Popen(
        [str(executable), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"chroma run did not answer on {url}")
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    return two_snapshots(tmp_path_factory.getbasetemp() / "sync-corpus")


def server_collection(url: str, name: str):
    host, port = url.removeprefix("http://").split(":")
    return chromadb.HttpClient(host=host, port=int(port)).get_collection(name)


# ----------------------------------------------------------------------- a nightly job
def test_a_job_keeps_a_server_collection_equal_to_each_snapshot(tmp_path, chroma_server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(source, corpus())
    target = {"kind": "chroma", "url": chroma_server, "collection": "nightly", "batch_size": 64}
    first = Job(job_spec(source, output, target)).run(progress=False)
    [synced] = first.destinations
    assert synced["error"] is None and synced["upserted"] == 200 and synced["batches"] == 4
    assert_chroma_equals(server_collection(chroma_server, "nightly"), snapshot_rows(output))

    after, counts = nightly_change(corpus())
    write_corpus(source, after)
    second = Job(job_spec(source, output, target)).run(progress=False)
    [synced] = second.destinations
    assert synced["base"] == f"snapshot {first.run_id}"
    assert synced["upserted"] == counts["changed"] + counts["new"] == 30
    assert synced["inserted"] == counts["new"] and synced["deleted"] == counts["deleted"] == 10
    assert synced["records_sent"] == 40
    assert_chroma_equals(server_collection(chroma_server, "nightly"), snapshot_rows(output))

    spec = job_spec(source, output, target).destination[0]
    again = sync_destination(OutputStore(str(output)), spec)
    assert again.base == "up to date" and again.records_sent == 0
    metadata = server_collection(chroma_server, "nightly").metadata
    assert metadata["embedfleet:snapshot"] == second.run_id and metadata["embedfleet:target"] == ""


def test_a_query_in_a_new_process_uses_the_attached_function(chroma_server, snapshots):
    spec = destination("chroma", url=chroma_server, collection="query")
    sync_destination(OutputStore(str(snapshots.output)), spec)
    rows = snapshot_rows(snapshots.output)
    wanted = "doc-0013"
    script = f"""
import json, chromadb, embedfleet
collection = chromadb.HttpClient(host="127.0.0.1", port={chroma_server.rsplit(":", 1)[1]})
collection = collection.get_collection("query")  # no embedding_function passed
found = collection.query(query_texts=[{rows[wanted]["text"]!r}], n_results=1)
print(json.dumps([found["ids"][0], collection.configuration_json["embedding_function"]]))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids, attached = json.loads(done.stdout.strip().splitlines()[-1])
    assert ids == [wanted]
    assert attached["name"] == "embedfleet.hash"
    assert attached["config"]["dimension"] == 8 and attached["config"]["query_prefix"] == ""


# ----------------------------------------------------------------------- embedded client
def test_first_and_incremental_syncs_into_a_persistent_client(tmp_path, snapshots):
    store = OutputStore(str(snapshots.output))
    path = tmp_path / "chroma"
    spec = destination("chroma", path=str(path), collection="docs", batch_size=50)
    first = sync_destination(store, spec, run_id=snapshots.first)
    assert (first.base, first.upserted, first.deleted) == ("empty", 200, 0)
    collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert_chroma_equals(collection, snapshot_rows(snapshots.output, snapshots.first))

    report = tmp_path / "report.json"
    uri = f"chroma:{path}?collection=docs&batch_size=50"
    assert (
        main(["sync", str(snapshots.output), "--to", uri, "--quiet", "--report", str(report)]) == 0
    )
    [synced] = json.loads(report.read_text())
    assert synced["base"] == f"snapshot {snapshots.first}"
    assert synced["records_sent"] == snapshots.expected_sent == 40
    assert synced["unchanged"] == 170
    assert_chroma_equals(collection, snapshot_rows(snapshots.output))

    assert (
        main(["sync", str(snapshots.output), "--to", uri, "--quiet", "--report", str(report)]) == 0
    )
    assert json.loads(report.read_text())[0]["records_sent"] == 0


def test_a_sync_killed_half_way_resumes_to_equality(tmp_path, snapshots):
    output = snapshots.copy(tmp_path / "out")
    path = tmp_path / "chroma"
    uri = f"chroma:{path}?collection=docs&batch_size=20"
    args = ["sync", str(output), "--to", uri, "--quiet"]
    killed = run_cli_killed_after(4, "embedfleet.destinations.chroma", "ChromaDestination", args)
    assert killed == -9
    collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert collection.count() == 80  # four batches of the first sync are in ...
    assert collection.metadata["embedfleet:target"] == snapshots.second  # ... and it knows
    assert not records(OutputStore(str(output)))  # nothing recorded as synced

    report = tmp_path / "report.json"
    assert main([*args, "--report", str(report)]) == 0
    [resumed] = json.loads(report.read_text())
    assert resumed["base"] == "its own rows" and resumed["upserted"] == 120  # only what was missing
    collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert_chroma_equals(collection, snapshot_rows(output))
    assert collection.metadata["embedfleet:target"] == ""


# ----------------------------------------------------------------------- refusals, rebuilds
def test_another_outputs_collection_is_refused_and_force_rebuilds_it(tmp_path, snapshots):
    path = tmp_path / "chroma"
    spec = destination("chroma", path=str(path), collection="docs", batch_size=100)
    sync_destination(OutputStore(str(snapshots.output)), spec, run_id=snapshots.first)
    other = OutputStore(str(snapshots.copy(tmp_path / "other", same_output=False)))
    with pytest.raises(DestinationError, match=r"another output.*--force"):
        sync_destination(other, spec)
    collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert collection.metadata["embedfleet:snapshot"] == snapshots.first  # nothing written

    rebuilt = sync_destination(other, spec, force=True)
    assert rebuilt.rebuilt and rebuilt.upserted == 200
    client = chromadb.PersistentClient(path=str(path))
    assert [item.name for item in client.list_collections()] == ["docs"]  # staging swapped in
    assert_chroma_equals(client.get_collection("docs"), snapshot_rows(snapshots.output))


def test_a_changed_config_rebuilds_aside_and_swaps_in(tmp_path, snapshots, monkeypatch):
    output = snapshots.copy(tmp_path / "out")
    path = tmp_path / "chroma"
    spec = destination("chroma", path=str(path), collection="docs", batch_size=100)
    sync_destination(OutputStore(str(output)), spec)
    wider = Job(job_spec(snapshots.source, output, dimension=16)).run(progress=False)
    assert wider.complete and wider.embedded == 200  # another config: every vector changed

    swap_in = chroma_destination.ChromaDestination.swap_in

    def swap_in_checked(self):  # until the swap, the live collection is the old one, whole
        live = chromadb.PersistentClient(path=str(path)).get_collection("docs")
        assert live.metadata["embedfleet:snapshot"] == snapshots.second
        assert len(live.get(limit=1, include=["embeddings"])["embeddings"][0]) == 8
        swap_in(self)

    monkeypatch.setattr(chroma_destination.ChromaDestination, "swap_in", swap_in_checked)
    result = sync_destination(OutputStore(str(output)), spec)
    assert result.rebuilt and result.upserted == 200
    collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert_chroma_equals(collection, snapshot_rows(output))
    assert collection.configuration_json["embedding_function"]["config"]["dimension"] == 16


def test_a_refused_batch_fails_naming_destination_and_batch_and_the_next_sync_resumes(
    tmp_path, snapshots, monkeypatch
):
    output = OutputStore(str(snapshots.output))
    path = tmp_path / "chroma"
    spec = destination(
        "chroma", path=str(path), collection="docs", batch_size=50, retry_backoff_seconds=0.01
    )
    upsert, calls = chroma_destination.ChromaDestination.upsert, []

    def refuse_the_second_batch(self, batch):
        calls.append(batch.num_rows)
        if len(calls) >= 2:
            raise ValueError("the server refused it")
        upsert(self, batch)

    monkeypatch.setattr(chroma_destination.ChromaDestination, "upsert", refuse_the_second_batch)
    with pytest.raises(
        DestinationError, match=r"chroma-docs .*upsert batch 2 \(50 rows.*6 attempt"
    ):
        sync_destination(output, spec)
    assert len(calls) == 1 + 6  # the first batch, then the second tried 1 + max_retries times
    monkeypatch.setattr(chroma_destination.ChromaDestination, "upsert", upsert)
    resumed = sync_destination(output, spec)
    assert resumed.base == "its own rows" and resumed.upserted == 150
    collection = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert_chroma_equals(collection, snapshot_rows(snapshots.output))


def test_a_server_that_is_down_fails_naming_it(snapshots):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    spec = destination(
        "chroma",
        url=f"http://127.0.0.1:{port}",
        collection="docs",
        max_retries=1,
        retry_backoff_seconds=0.01,
    )
    with pytest.raises(DestinationError, match=rf"chroma-docs .*127.0.0.1:{port}.*connect"):
        sync_destination(OutputStore(str(snapshots.output)), spec)


def test_passthrough_columns_chroma_cannot_hold_are_refused_by_name(tmp_path):
    output = tmp_path / "out"
    synthetic_snapshot(output, {"tags": [["a", "b"], ["c"]], "n": [1, 2]})
    spec = destination("chroma", path=str(tmp_path / "chroma"), collection="docs")
    with pytest.raises(
        ConfigError, match=r"column 'tags' has type list<.*Chroma metadata cannot hold"
    ):
        sync_destination(OutputStore(str(output)), spec)
    assert not (tmp_path / "chroma").exists()  # refused before any write
    spec.columns = ["n"]  # leave it out
    assert sync_destination(OutputStore(str(output)), spec).upserted == 2


def test_auth_headers_come_from_the_named_variable_and_are_never_recorded(
    tmp_path, chroma_server, snapshots, monkeypatch
):
    spec = destination(
        "chroma", url=chroma_server, collection="auth", headers_env_var="EF_TEST_CHROMA_HEADERS"
    )
    monkeypatch.delenv("EF_TEST_CHROMA_HEADERS", raising=False)
    with pytest.raises(ConfigError, match="set EF_TEST_CHROMA_HEADERS"):
        sync_destination(OutputStore(str(snapshots.output)), spec)
    secret = "Bearer not-a-real-token-0123456789"
    monkeypatch.setenv("EF_TEST_CHROMA_HEADERS", json.dumps({"Authorization": secret}))
    assert chroma_destination.ChromaDestination(spec)._headers() == {"Authorization": secret}
    output = snapshots.copy(tmp_path / "out")
    assert sync_destination(OutputStore(str(output)), spec).upserted == 200
    for path in output.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()


def test_a_rebuild_stopped_before_its_rename_is_finished_by_the_next_sync(tmp_path, snapshots):
    path = tmp_path / "chroma"
    spec = destination("chroma", path=str(path), collection="docs", batch_size=100)
    sync_destination(OutputStore(str(snapshots.output)), spec)
    client = chromadb.PersistentClient(path=str(path))
    client.get_collection("docs").modify(
        name="docs-embedfleet-staging"
    )  # live deleted, not renamed
    result = sync_destination(OutputStore(str(snapshots.output)), spec)
    assert (result.base, result.upserted, result.deleted) == ("staged rebuild", 0, 0)
    assert [item.name for item in client.list_collections()] == ["docs"]
    assert_chroma_equals(client.get_collection("docs"), snapshot_rows(snapshots.output))


def test_the_attached_function_pins_the_precision_and_no_model_loads(tmp_path):
    output = tmp_path / "out"
    run_id = synthetic_snapshot(output, {"n": [1, 2]})
    info_path = output / "snapshots" / run_id / "_run.json"
    info = json.loads(info_path.read_text())
    info["embedding"] = {
        "provider": "default",
        "config": {"precision": "auto"},
        "precision": "bf16",
    }
    info_path.write_text(json.dumps(info))
    script = f"""
import json, sys
from embedfleet.destinations import DestinationSpec
from embedfleet.destinations.sync import sync_destination
from embedfleet.job.store import OutputStore
spec = DestinationSpec("chroma", path={str(tmp_path / "chroma")!r}, collection="docs")
sync_destination(OutputStore({str(output)!r}), spec)
import chromadb
collection = chromadb.PersistentClient(path={str(tmp_path / "chroma")!r}).get_collection("docs")
attached = collection.configuration_json["embedding_function"]
print(json.dumps([attached, "torch" in sys.modules, "sentence_transformers" in sys.modules]))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    attached, torch_loaded, model_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert attached["name"] == "embedfleet.default"
    assert attached["config"]["precision"] == "bf16"  # as the vectors were made
    assert not torch_loaded and not model_loaded


def test_a_collection_in_another_tenants_database(tmp_path, chroma_server, snapshots):
    from chromadb.config import Settings

    host, port = chroma_server.removeprefix("http://").split(":")
    settings = Settings(
        chroma_api_impl="chromadb.api.fastapi.FastAPI",
        chroma_server_host=host,
        chroma_server_http_port=int(port),
    )
    admin = chromadb.AdminClient(settings)
    admin.create_tenant("team")
    admin.create_database("vectors", tenant="team")
    uri = f"chroma+{chroma_server}?collection=scoped&tenant=team&database=vectors"
    output = snapshots.copy(tmp_path / "out")
    assert main(["sync", str(output), "--to", uri, "--quiet"]) == 0
    scoped = chromadb.HttpClient(host=host, port=int(port), tenant="team", database="vectors")
    assert_chroma_equals(scoped.get_collection("scoped"), snapshot_rows(output))
    default = chromadb.HttpClient(host=host, port=int(port))
    assert "scoped" not in [item.name for item in default.list_collections()]
