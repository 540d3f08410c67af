"""Destinations without a store: specs and URIs, the diff, pins against pruning, status,
and that no store's client is imported unless a destination of that kind is used."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from embedfleet.cli import main
from embedfleet.destinations import DestinationSpec, parse_uri
from embedfleet.destinations import diff as diffing
from embedfleet.destinations.records import pinned_snapshots, write_record
from embedfleet.errors import ConfigError
from embedfleet.job import JobSpec
from embedfleet.job.store import OutputStore, prune
from tests.sync_helpers import REPO, synthetic_snapshot

SPEC = """
[source]
uri = "docs.jsonl"
[output]
uri = "out"
keep_text = true
[[destination]]
kind = "chroma"
path = "chroma-data"
collection = "docs"
[[destination]]
kind = "lancedb"
uri = "s3://bucket/lancedb"
table = "docs"
storage_options = { aws_region = "eu-west-1", aws_secret_access_key = "never-recorded" }
"""


# ----------------------------------------------------------------------- specs
def test_destination_tables_load_with_paths_resolved_and_secrets_redacted(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(SPEC)
    spec = JobSpec.from_toml(path)
    chroma, lance = spec.destination
    assert (chroma.kind, chroma.path, chroma.label) == (
        "chroma",
        str(tmp_path / "chroma-data"),
        "chroma-docs",
    )
    assert (lance.uri, lance.label) == ("s3://bucket/lancedb", "lancedb-docs")
    recorded = json.dumps(spec.to_public_dict())
    assert "never-recorded" not in recorded and "eu-west-1" in recorded


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "pinecone"}, "unknown destination kind 'pinecone'"),
        ({"kind": "chroma", "collection": "docs"}, "exactly one of path"),
        ({"kind": "chroma", "path": "x", "url": "http://h:1", "collection": "d"}, "exactly one"),
        ({"kind": "chroma", "path": "x"}, "collection must be"),
        (
            {"kind": "chroma", "path": "x", "collection": "docs", "table": "t"},
            "'table' is not a key",
        ),
        ({"kind": "lancedb", "uri": "x"}, "needs uri and table"),
        (
            {"kind": "lancedb", "uri": "x", "table": "t", "colour": 1},
            r"unknown key 'destination\[0\]\.colour'",
        ),
        ({"kind": "lancedb", "uri": "x", "table": "t", "batch_size": 0}, "batch_size must be"),
    ],
)
def test_a_bad_destination_table_is_refused_naming_the_key(table, message):
    data = {"source": {"uri": "x"}, "output": {"uri": "y"}, "destination": [table]}
    with pytest.raises(ConfigError, match=message):
        JobSpec.from_dict(data)


def test_two_destinations_need_distinct_names():
    table = {"kind": "lancedb", "uri": "x", "table": "t"}
    data = {"source": {"uri": "x"}, "output": {"uri": "y"}, "destination": [table, table]}
    with pytest.raises(ConfigError, match="two destinations are named 'lancedb-t'"):
        JobSpec.from_dict(data)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("chroma:/data/chroma?collection=docs", {"kind": "chroma", "path": "/data/chroma"}),
        (
            "chroma+http://127.0.0.1:8000?collection=docs&tenant=t&headers_env_var=H",
            {"url": "http://127.0.0.1:8000", "tenant": "t", "headers_env_var": "H"},
        ),
        (
            "chroma+https://chroma.example/docs",
            {"url": "https://chroma.example", "collection": "docs"},
        ),
        (
            "lancedb:s3://bucket/db?table=docs&batch_size=500",
            {"uri": "s3://bucket/db", "batch_size": 500},
        ),
    ],
)
def test_sync_to_uris_parse_into_destination_specs(uri, expected):
    spec = parse_uri(uri)
    assert {key: getattr(spec, key) for key in expected} == expected


@pytest.mark.parametrize(
    "uri", ["docs", "redis://h?collection=x", "chroma:dir?collection=docs&colour=red", "lancedb:db"]
)
def test_bad_sync_to_uris_are_refused(uri):
    with pytest.raises(ConfigError):
        parse_uri(uri)


def test_keep_text_changes_the_fingerprint_only_when_set():
    plain = JobSpec.from_dict({"source": {"uri": "x"}, "output": {"uri": "y"}})
    kept = JobSpec.from_dict({"source": {"uri": "x"}, "output": {"uri": "y", "keep_text": True}})
    assert plain.fingerprint("hash", {}) != kept.fingerprint("hash", {})
    assert plain.fingerprint("hash", {}) == "68adf97dd2ca0709"  # as before keep_text existed
    with pytest.raises(ConfigError, match=r"'text' holds the embedded text with output\.keep_text"):
        JobSpec.from_dict(
            {"source": {"uri": "x", "columns": ["text"]}, "output": {"uri": "y", "keep_text": True}}
        )


# ----------------------------------------------------------------------- the diff
def diff_table(rows: dict[str, tuple[str, int]]) -> pa.Table:
    return pa.table(
        {
            "id": list(rows),
            "content_hash": [text for text, _ in rows.values()],
            "n": [value for _, value in rows.values()],
        }
    )


def test_rows_compare_by_id_hash_and_values_even_when_every_id_key_collides(monkeypatch):
    monkeypatch.setattr(diffing, "_id_key", lambda id_: 7)  # every id has the same key
    base = diffing.RowIndex.build(
        [diff_table({"a": ("h1", 1), "b": ("h2", 2), "c": ("h3", 3)})], ["n"]
    )
    target = diff_table({"c": ("h3", 3), "a": ("h1", 9), "d": ("h4", 4)})
    found = base.find(target["id"])
    assert found.tolist() == [2, 0, -1]
    same = base.row_keys[found[:2]] == diffing.row_keys(target, ["n"])[:2]
    assert same.tolist() == [True, False]  # "a" changed only in its passthrough value


def test_the_diff_of_two_snapshots(tmp_path):
    output = tmp_path / "out"
    first = synthetic_snapshot(output, {"n": [0, 1, 2, 3]})
    second = synthetic_snapshot(output, {"n": [0, 1, 5]})  # d2 changed, d3 gone
    store = OutputStore(str(output))
    base = diffing.snapshot_index(store.snapshot(first), ["n"])
    changes = diffing.diff(store.snapshot(second), base, ["n"])
    assert (changes.upserts, changes.inserts, changes.unchanged) == (1, 0, 2)
    assert changes.deletes.to_pylist() == ["d3"]
    assert np.array_equal(changes.parts[0].rows, [2])
    everything = diffing.diff(store.snapshot(second), None, ["n"])
    assert (everything.upserts, everything.inserts) == (3, 3)


# ----------------------------------------------------------------------- pins, status
def test_prune_keeps_the_snapshot_a_destination_holds_and_status_says_it_is_behind(
    tmp_path, capsys
):
    output = tmp_path / "out"
    runs = [synthetic_snapshot(output, {"n": [index]}) for index in range(3)]
    store = OutputStore(str(output))
    write_record(store, "chroma-docs", {"kind": "chroma", "where": "x", "snapshot": runs[0]})
    assert pinned_snapshots(store) == {runs[0]}
    assert prune(store, 1, pinned_snapshots(store)) == [runs[1]]
    assert store.snapshot_ids() == [runs[0], runs[2]]

    assert main(["status", str(output)]) == 0
    status = capsys.readouterr().out.split("DESTINATION")[1]
    assert f"chroma-docs  chroma  {runs[0]}  behind (latest {runs[2]})" in status


def test_nothing_imports_a_store_client_before_a_destination_connects(tmp_path):
    code = f"""
import sys
from embedfleet.cli import main
from embedfleet.destinations import DestinationSpec
from embedfleet.destinations.sync import sync_destination
from embedfleet.job import Job, JobSpec
spec = JobSpec.from_dict({{"source": {{"uri": "x"}}, "output": {{"uri": {str(tmp_path)!r}}},
                          "destination": [{{"kind": "lancedb", "uri": "db", "table": "t"}}],
                          "embedding": {{"provider": "hash"}}}})
Job(spec)
print(sorted(name for name in ("chromadb", "lancedb") if name in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_destination_spec_label_defaults_to_kind_and_collection():
    assert DestinationSpec("chroma", path="p", collection="my docs").label == "chroma-my_docs"
    assert DestinationSpec("lancedb", uri="u", table="t", name="nightly").label == "nightly"
