"""The output layout: lease, commit markers, manifest, _latest, pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from embedfleet.errors import LockedError
from embedfleet.job import store


def table(ids):
    return pa.table({"id": ids, "value": list(range(len(ids)))})


def test_second_lock_is_refused_with_the_owner_named(tmp_path):
    output = store.OutputStore(str(tmp_path / "out"))
    lease = output.acquire()
    with pytest.raises(LockedError, match=f"locked by {lease.owner}"):
        store.OutputStore(str(tmp_path / "out")).acquire()
    output.release(lease)
    store.OutputStore(str(tmp_path / "out")).acquire()


def test_expired_lease_may_be_taken_over(tmp_path):
    output = store.OutputStore(str(tmp_path / "out"))
    output.acquire(lease_seconds=-1)
    assert output.acquire().owner != ""


def test_lease_of_a_dead_process_on_this_host_is_stale(tmp_path):
    output = store.OutputStore(str(tmp_path / "out"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lease = output.acquire()
    lease.pid = int(dead.stdout)
    output._write_lock(lease)
    assert output.acquire().pid == os.getpid()


def test_part_exists_only_with_its_marker_and_latest_moves_last(tmp_path):
    output = store.OutputStore(str(tmp_path / "out"))
    snapshot = output.snapshot(store.new_run_id())
    snapshot.start({"fingerprint": "f"})
    snapshot.commit_shard("aaa", table(["1", "2"]), None, {"rows": 2, "embedded": 2, "rejected": 0})
    assert set(snapshot.commits()) == {"aaa"}
    assert output.latest() is None and not snapshot.is_complete()
    snapshot.commit_shard(
        "bbb",
        None,
        pa.table({"id": ["3"], "reason": ["text is empty"]}),
        {"rows": 1, "embedded": 0, "rejected": 1},
    )
    manifest = snapshot.finish({"rows": 3})
    assert output.latest() == snapshot.run_id
    assert [shard["shard_id"] for shard in manifest["shards"]] == ["aaa", "bbb"]
    files = sorted(os.listdir(snapshot.root))
    assert files == ["_commits", "_manifest.json", "_rejects", "_run.json", "part-aaa.parquet"]
    assert not [name for name in os.listdir(snapshot.root) if name.endswith(".tmp")]
    assert store.read(str(tmp_path / "out")).to_table().num_rows == 2


def test_read_without_a_complete_snapshot_says_so(tmp_path):
    with pytest.raises(Exception, match="no complete snapshot"):
        store.read(str(tmp_path / "nothing"))


def test_prune_keeps_the_newest_complete_snapshots(tmp_path):
    output = store.OutputStore(str(tmp_path / "out"))
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
    import re

    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", store.new_run_id())


def test_lease_file_is_json_with_owner_and_expiry(tmp_path):
    output = store.OutputStore(str(tmp_path / "out"))
    output.acquire()
    data = json.loads((tmp_path / "out" / "_lock").read_text())
    assert {"owner", "expires", "host", "pid"} <= set(data)
