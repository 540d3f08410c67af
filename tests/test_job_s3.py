"""A job reading from and writing to S3: s3fs against a moto server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import embedfleet  # noqa: E402
from embedfleet.job import Job, JobSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("local_ray")

FAKE_KEY_ID = "AKIAFAKEFAKEFAKE0000"
FAKE_SECRET = "fake-secret-key-never-written-0000"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def storage_options(s3_endpoint):
    return {"endpoint_url": s3_endpoint, "key": FAKE_KEY_ID, "secret": FAKE_SECRET}


@pytest.fixture
def bucket(storage_options):
    import s3fs

    fs = s3fs.S3FileSystem(**storage_options)
    fs.mkdir("corpus")
    rows = [{"id": f"d{index}", "text": f"text number {index}"} for index in range(90)]
    for part in range(3):
        chunk = rows[part * 30 : (part + 1) * 30]
        fs.pipe_file(
            f"corpus/input/part{part}.jsonl",
            "".join(json.dumps(row) + "\n" for row in chunk).encode(),
        )
    yield fs
    fs.rm("corpus", recursive=True)


def s3_spec(storage_options: dict, **output: object) -> JobSpec:
    """A hash-provider job from s3://corpus/input to ``output`` (uri, rows_per_shard...)."""
    return JobSpec.from_dict(
        {
            "source": {
                "uri": "s3://corpus/input/*.jsonl",
                "id_column": "id",
                "storage_options": storage_options,
            },
            "embedding": {"provider": "hash", "config": {"dimension": 8}},
            "fleet": {"replicas": 1, "num_cpus": 0},
            "output": {**output, "storage_options": storage_options},
        }
    )


def test_job_round_trips_through_s3(bucket, storage_options):
    spec = s3_spec(storage_options, uri="s3://corpus/out", rows_per_shard=20)
    result = Job(spec).run(progress=False)
    assert result.complete and result.embedded == 90

    table = embedfleet.read("s3://corpus/out", storage_options).to_table()
    assert sorted(table["id"].to_pylist()) == sorted(f"d{index}" for index in range(90))
    written = [path for path in bucket.find("corpus/out")]
    assert any(path.endswith("_latest") for path in written)
    assert not [path for path in written if path.endswith(".tmp")]
    for path in written:
        content = bucket.cat_file(path)
        assert FAKE_SECRET.encode() not in content and FAKE_KEY_ID.encode() not in content


def test_an_incremental_rerun_on_s3_copies_unchanged_parts_server_side(bucket, storage_options):
    spec = s3_spec(storage_options, uri="s3://corpus/inc", mode="incremental", rows_per_shard=30)
    first = Job(spec).run(progress=False)
    assert first.complete and first.embedded == 90
    bucket.pipe_file(  # one file changes: one row edited, one added
        "corpus/input/part2.jsonl",
        "".join(
            json.dumps({"id": f"d{index}", "text": f"text number {index}"}) + "\n"
            for index in range(60, 89)
        ).encode()
        + b'{"id": "d89", "text": "edited"}\n{"id": "d90", "text": "added"}\n',
    )
    second = Job(spec).run(progress=False)
    assert second.complete and second.embedded == 2 and second.carried_over == 89
    markers = Job(spec).output.snapshot(second.run_id).commits().values()
    copied = [marker for marker in markers if marker.copied_from]
    assert len(copied) == 2  # part0 and part1 were unchanged: copied object to object
    table = embedfleet.read("s3://corpus/inc", storage_options).to_table()
    assert sorted(table["id"].to_pylist()) == sorted(f"d{index}" for index in range(91))
