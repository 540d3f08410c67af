"""The output store: lock, commit markers, manifest, _latest, pruning."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from embedfleet.errors import LockedError
from embedfleet.job import store
from embedfleet.job.store import OutputStore, ShardMarker


def table(ids):
    return pa.table({"id": ids, "value": list(range(len(ids)))})


def lock_file(output: Path) -> dict:
    return json.loads((output / "_lock").read_text())


def test_second_lock_is_refused_with_the_owner_named(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    lock = output.acquire()
    with pytest.raises(LockedError, match=f"locked by {lock.owner}"):
        OutputStore(str(tmp_path / "out")).acquire()
    output.release(lock)
    OutputStore(str(tmp_path / "out")).acquire()


def test_an_expired_lock_is_taken_over_by_this_process(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    expired = output.acquire(lease_seconds=-1)
    lock = output.acquire()
    on_disk = lock_file(tmp_path / "out")
    assert on_disk["owner"] == lock.owner != expired.owner
    assert (on_disk["host"], on_disk["pid"]) == (socket.gethostname(), os.getpid())
    assert on_disk["expires"] > time.time()


def test_release_removes_the_lock_file_only_for_its_owner(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    taken_over = output.acquire(lease_seconds=-1)
    lock = output.acquire()
    output.release(taken_over)
    assert lock_file(tmp_path / "out")["owner"] == lock.owner
    output.release(lock)
    assert not (tmp_path / "out" / "_lock").exists() and output.read_lock() is None


def test_lock_of_a_dead_process_on_this_host_is_stale(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock = output.acquire()
    lock.pid = int(dead.stdout)
    output._write_lock(lock)
    assert output.acquire().pid == os.getpid()


def test_lock_file_is_json_with_owner_and_expiry(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    output.acquire()
    assert {"owner", "expires", "host", "pid"} <= set(lock_file(tmp_path / "out"))


def test_part_exists_only_with_its_marker_and_latest_moves_last(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    snapshot = output.snapshot(store.new_run_id())
    snapshot.start({"fingerprint": "f"})
    snapshot.commit_shard(ShardMarker("aaa", rows=2, embedded=2), table(["1", "2"]), None)
    assert set(snapshot.commits()) == {"aaa"}
    assert output.latest() is None and not snapshot.is_complete()
    snapshot.commit_shard(
        ShardMarker("bbb", rows=1, rejected=1),
        None,
        pa.table({"id": ["3"], "reason": ["text is empty"]}),
    )
    manifest = snapshot.finish({"rows": 3})
    assert output.latest() == snapshot.run_id
    assert [shard["shard_id"] for shard in manifest["shards"]] == ["aaa", "bbb"]
    files = sorted(os.listdir(snapshot.root))
    assert files == ["_commits", "_manifest.json", "_rejects", "_run.json", "part-aaa.parquet"]
    assert not [name for name in os.listdir(snapshot.root) if name.endswith(".tmp")]
    assert store.read(str(tmp_path / "out")).to_table().num_rows == 2


def test_a_committed_marker_reads_back_as_written(tmp_path):
    snapshot = OutputStore(str(tmp_path / "out")).snapshot(store.new_run_id())
    snapshot.start({})
    marker = ShardMarker("aaa", source_version="12:abc", rows=3, embedded=2, rejected=1)
    written = snapshot.commit_shard(
        marker, table(["1", "2"]), pa.table({"id": ["3"], "reason": ["text is null"]})
    )
    assert (written.part, written.rejects) == ("part-aaa.parquet", "_rejects/aaa.parquet")
    assert snapshot.commits() == {"aaa": written}
    on_disk = json.loads(Path(snapshot.path("_commits", "aaa.json")).read_text())
    assert on_disk == written.to_json()
    assert list(on_disk) == [  # what markers have held, in order, since carried and reused
        "shard_id",
        "source_version",
        "relative_path",
        "unit",
        "start",
        "end",
        "rows",
        "characters",
        "tokens",
        "carried",
        "reused",
        "read_seconds",
        "embedded",
        "rejected",
        "embed_seconds",
        "model_tokens",
        "padded_tokens",
        "part",
        "rejects",
    ]


def test_a_copied_part_marker_records_no_embedding_time_or_model_tokens(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    base, snapshot = output.snapshot("20260101T000000Z-0000"), output.snapshot(store.new_run_id())
    base.start({})
    base.commit_shard(ShardMarker("aaa", rows=2, embedded=2), table(["1", "2"]), None)
    snapshot.start({})
    copied = f"{base.relative}/part-aaa.parquet"
    snapshot.adopt_part(
        ShardMarker("aaa", rows=2, carried=2, copied_from=copied), base.path("part-aaa.parquet")
    )
    on_disk = json.loads(Path(snapshot.path("_commits", "aaa.json")).read_text())
    assert list(on_disk)[-5:] == ["embedded", "rejected", "copied_from", "part", "rejects"]
    assert not {"embed_seconds", "model_tokens", "padded_tokens"} & set(on_disk)
    assert snapshot.commits()["aaa"].vector_rows == 2


def test_a_marker_written_before_carried_and_reused_existed_reads_with_zeros(tmp_path):
    snapshot = OutputStore(str(tmp_path / "out")).snapshot(store.new_run_id())
    snapshot.start({})
    old = {"shard_id": "aaa", "rows": 5, "embedded": 4, "rejected": 1, "part": "part-aaa.parquet"}
    Path(snapshot.path("_commits", "aaa.json")).write_text(json.dumps({**old, "rejects": None}))
    marker = snapshot.commits()["aaa"]
    assert (marker.carried, marker.reused, marker.model_tokens, marker.tokens) == (0, 0, 0, 0)
    assert (marker.copied_from, marker.source_version) == (None, "")
    assert marker.vector_rows == 4


def test_vector_rows_count_embedded_carried_and_reused_rows():
    assert ShardMarker("aaa", embedded=3, carried=5, reused=2, rejected=7).vector_rows == 10


def test_summaries_say_each_snapshots_state_shards_and_vectors(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    done = output.snapshot("20260101T000000Z-0000")
    unfinished = output.snapshot("20260102T000000Z-0000")
    done.start({"shards": ["aaa"]})
    done.commit_shard(ShardMarker("aaa", rows=3, embedded=1, carried=2), table(list("123")), None)
    done.finish({})
    unfinished.start({"shards": ["aaa", "bbb"]})
    unfinished.commit_shard(ShardMarker("aaa", rows=2, embedded=1, rejected=1), table(["1"]), None)
    assert output.summaries() == [
        store.SnapshotSummary(done.run_id, "latest", 1, 1, vectors=3, rejected=0),
        store.SnapshotSummary(unfinished.run_id, "unfinished", 1, 2, vectors=1, rejected=1),
    ]


def test_read_without_a_complete_snapshot_says_so(tmp_path):
    with pytest.raises(Exception, match="no complete snapshot"):
        store.read(str(tmp_path / "nothing"))


def test_prune_keeps_the_newest_complete_snapshots(tmp_path):
    output = OutputStore(str(tmp_path / "out"))
    runs = []
    for index in range(4):
        run = f"2026010{index}T000000Z-0000"
        snapshot = output.snapshot(run)
        snapshot.start({})
        snapshot.finish({})
        runs.append(run)
    unfinished = output.snapshot("20260100T000001Z-0000")
    unfinished.start({})
    removed = store.prune(output, keep=2)
    assert sorted(removed) == sorted([runs[0], runs[1], "20260100T000001Z-0000"])
    assert output.snapshot_ids() == runs[2:]


def test_run_ids_start_with_a_utc_timestamp_so_they_sort_by_time():
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", store.new_run_id())
