"""LanceDB destinations, in a local database and on S3 (a moto server on 127.0.0.1): a
job's snapshots kept in a table from Arrow, exactly, sending only what changed;
resumable after SIGKILL; a rebuild swapped in by one commit; a pruned base."""

from __future__ import annotations

import json
import shutil

import pytest

lancedb = pytest.importorskip("lancedb")

from embedfleet.cli import main  # noqa: E402
from embedfleet.destinations import lancedb as lancedb_destination  # noqa: E402
from embedfleet.destinations.sync import sync_destination  # noqa: E402
from embedfleet.job import Job  # noqa: E402
from embedfleet.job.store import OutputStore  # noqa: E402
from tests.sync_helpers import (  # noqa: E402
    assert_lance_equals,
    destination,
    job_spec,
    run_cli_killed_after,
    snapshot_rows,
    two_snapshots,
)

pytestmark = pytest.mark.usefixtures("local_ray")

FAKE_KEY_ID = "AKIAFAKEFAKEFAKE0000"
FAKE_SECRET = "fake-secret-key-never-written-0000"


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=FAKE_KEY_ID,
        aws_secret_access_key=FAKE_SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="vectors")
    yield endpoint
    server.stop()


@pytest.fixture(params=["local", "s3"])
def database(request, tmp_path):
    """(uri, storage_options, environment for a CLI process) of an empty database."""
    if request.param == "local":
        return str(tmp_path / "lance"), {}, {}
    endpoint = request.getfixturevalue("s3_endpoint")
    options = {
        "aws_endpoint": endpoint,
        "aws_access_key_id": FAKE_KEY_ID,
        "aws_secret_access_key": FAKE_SECRET,
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    environment = {
        f"AWS_{key.removeprefix('aws_').upper()}": value for key, value in options.items()
    }
    return f"s3://vectors/{tmp_path.name}", options, environment


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    return two_snapshots(tmp_path_factory.getbasetemp() / "sync-corpus")


def open_table(uri: str, options: dict, name: str = "docs"):
    return lancedb.connect(uri, storage_options=options or None).open_table(name)


def test_first_incremental_and_repeated_syncs_equal_each_snapshot(database, snapshots):
    uri, options, _ = database
    store = OutputStore(str(snapshots.output))
    spec = destination("lancedb", uri=uri, table="docs", storage_options=options, batch_size=64)
    first = sync_destination(store, spec, run_id=snapshots.first)
    assert (first.base, first.inserted, first.batches) == ("empty", 200, 4)
    assert_lance_equals(open_table(uri, options), snapshot_rows(snapshots.output, snapshots.first))

    second = sync_destination(store, spec)
    assert second.base == f"snapshot {snapshots.first}"
    assert second.records_sent == snapshots.expected_sent == 40
    assert (second.upserted, second.inserted, second.deleted) == (30, 10, 10)
    table = open_table(uri, options)
    assert_lance_equals(table, snapshot_rows(snapshots.output))
    state = json.loads(table.schema.field("id").metadata[b"embedfleet.sync"])
    assert state["snapshot"] == snapshots.second and state["target"] is None

    again = sync_destination(store, spec)
    assert again.base == "up to date" and again.records_sent == 0


def test_a_sync_killed_half_way_resumes_to_equality(database, snapshots, tmp_path):
    uri, options, environment = database
    output = snapshots.copy(tmp_path / "out")
    args = ["sync", str(output), "--to", f"lancedb:{uri}?table=docs&batch_size=20", "--quiet"]
    module, cls = "embedfleet.destinations.lancedb", "LanceDBDestination"
    assert run_cli_killed_after(4, module, cls, args, environment) == -9
    table = open_table(uri, options)
    assert table.count_rows() == 80  # four batches are in, and the table knows it is behind
    assert json.loads(table.schema.field("id").metadata[b"embedfleet.sync"])["target"]

    spec = destination("lancedb", uri=uri, table="docs", storage_options=options, batch_size=20)
    resumed = sync_destination(OutputStore(str(output)), spec)
    assert resumed.base == "its own rows" and resumed.upserted == 120
    assert_lance_equals(open_table(uri, options), snapshot_rows(output))  # no duplicate


def test_a_changed_config_is_rebuilt_aside_and_swapped_in_by_one_commit(
    tmp_path, snapshots, monkeypatch
):
    output = snapshots.copy(tmp_path / "out")
    uri = str(tmp_path / "lance")
    spec = destination("lancedb", uri=uri, table="docs")
    sync_destination(OutputStore(str(output)), spec)
    assert Job(job_spec(snapshots.source, output, dimension=16)).run(progress=False).complete

    swap_in = lancedb_destination.LanceDBDestination.swap_in

    def swap_in_checked(self):  # until the swap the live table is the old one, whole
        live = open_table(uri, {})
        assert live.schema.field("vector").type.list_size == 8 and live.count_rows() == 200
        swap_in(self)

    monkeypatch.setattr(lancedb_destination.LanceDBDestination, "swap_in", swap_in_checked)
    result = sync_destination(OutputStore(str(output)), spec)
    assert result.rebuilt and result.upserted == 200
    assert_lance_equals(open_table(uri, {}), snapshot_rows(output))
    assert lancedb.connect(uri).list_tables().tables == ["docs"]  # the staging table is gone


def test_a_pruned_base_is_diffed_against_the_tables_own_rows(tmp_path, snapshots):
    output = snapshots.copy(tmp_path / "out")
    uri = str(tmp_path / "lance")
    spec = destination("lancedb", uri=uri, table="docs")
    store = OutputStore(str(output))
    sync_destination(store, spec, run_id=snapshots.first)
    shutil.rmtree(output / "snapshots" / snapshots.first)  # pruned by hand
    result = sync_destination(store, spec)
    assert result.base == "its own rows"
    assert (result.upserted, result.deleted) == (30, 10)  # still exactly what changed
    assert_lance_equals(open_table(uri, {}), snapshot_rows(output))


def test_the_cli_syncs_a_specs_destinations(tmp_path, snapshots, capsys):
    output = snapshots.copy(tmp_path / "out")
    uri = str(tmp_path / "lance")
    spec_file = tmp_path / "nightly.toml"
    spec_file.write_text(
        f'[source]\nuri = "{snapshots.source}"\n[output]\nuri = "{output}"\n'
        f'[[destination]]\nkind = "lancedb"\nuri = "{uri}"\ntable = "docs"\n'
    )
    assert main(["sync", str(spec_file)]) == 0
    assert "upserted        200 (200 new ids)" in capsys.readouterr().out
    assert main(["status", str(output)]) == 0
    assert "lancedb-docs" in capsys.readouterr().out.split("DESTINATION")[1]
    assert main(["plan", str(spec_file)]) == 0
    assert "up to date: a sync sends nothing" in capsys.readouterr().out
