"""Planning a source of many small objects on S3 costs the listing plus a bounded sample:
s3fs against a moto server on 127.0.0.1 that counts every request it answers."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from embedfleet.job import Job, JobSpec, plan, sampling, sources
from embedfleet.job.spec import SourceSpec

FAKE = {"key": "AKIAFAKEFAKEFAKE0000", "secret": "fake-secret-key-never-written-0000"}


@pytest.fixture(scope="module")
def counting_s3():
    """A moto S3 server whose every request is recorded as (method, path, query)."""
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    requests: list[tuple[str, str, str]] = []
    app = DomainDispatcherApplication(create_backend_app)

    def counting(environ, start_response):
        query = environ.get("QUERY_STRING", "")
        requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), query))
        return app(environ, start_response)

    server = make_server(
        "127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = {"endpoint_url": f"http://127.0.0.1:{server.server_port}", **FAKE}
    yield options, requests
    server.shutdown()
    thread.join(timeout=10)


def kind(request: tuple[str, str, str]) -> str:
    method, _, query = request
    return "list" if method == "GET" and "list-type" in query else "other"


def test_planning_many_small_objects_costs_the_listing_and_a_bounded_sample(counting_s3):
    import s3fs
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    options, requests = counting_s3
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]  # the server's own: stored directly, fast
    backend.create_bucket("corpus-many", "us-east-1")

    def body(index: int) -> bytes:
        return b"".join(
            json.dumps({"id": f"{index}-{row}", "text": f"row {row} of {index}"}).encode() + b"\n"
            for row in range(20)
        )

    for index in range(5000):
        backend.put_object("corpus-many", f"big/d{index // 1000}/f{index:05d}.jsonl", body(index))
    for index in range(500):
        backend.put_object("corpus-many", f"small/f{index:05d}.jsonl", body(index))

    def planning(prefix: str) -> tuple[Counter[str], list[sources.Shard]]:
        spec = JobSpec.from_dict(
            {
                "source": {
                    "uri": f"s3://corpus-many/{prefix}",
                    "id_column": "id",
                    "storage_options": options,
                },
                "embedding": {"provider": "hash", "config": {"dimension": 8}},
                "output": {"uri": "memory://plan-only/out", "rows_per_shard": 10_000},
            }
        )
        s3fs.S3FileSystem.clear_instance_cache()
        requests.clear()
        shards = Job(spec).plan().shards
        return Counter(kind(request) for request in requests), shards

    many, many_shards = planning("big")
    listed = s3fs.S3FileSystem(**options)  # the listing streamed: s3fs cached none of it
    assert not [path for path in listed.dircache if "corpus-many/big" in path]
    few, few_shards = planning("small")
    print(f"requests: 5,000 objects {dict(many)}, 500 objects {dict(few)}")
    assert len(many_shards) <= 10 + 2 and len(few_shards) == 1
    assert many["list"] <= 5000 // 1000 + 2  # pages of 1,000 keys (and one to tell a folder)
    assert many["other"] == few["other"]  # the sample: the same however many objects
    assert many["other"] <= 3 * (sampling.SAMPLE_FILES + plan.PLAN_SAMPLE_PIECES)

    # a packed shard's objects are fetched ahead, a few at a time, and read in order
    (shard,) = few_shards
    part = sources.Shard.of(shard.root, shard.pieces[:40])
    source = SourceSpec(uri="s3://corpus-many/small", id_column="id", storage_options=options)
    requests.clear()
    ids = [id_ for rows in sources.read_shard(part, source) for id_ in rows.ids]
    assert ids == [f"{index}-{row}" for index in range(40) for row in range(20)]
    assert Counter(method for method, _, _ in requests) == {"GET": 40}  # one read per object
