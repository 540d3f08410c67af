"""Packed shards end to end on a real local Ray: many small files become few part files,
an incremental run over them sends exactly the new and changed rows and copies untouched
shards whole, rejects name their file, and outputs written before packing keep working."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import embedfleet
from embedfleet.job import Job, JobSpec, sources, store
from tests.fakes import tei
from tests.fakes.server import FakeServer

pytestmark = pytest.mark.usefixtures("local_ray")


server = pytest.fixture(tei.serving, name="server")
sent_texts = tei.sent_texts


def write_file(folder: Path, index: int, rows: int = 2, edit: str = "") -> None:
    lines = [
        json.dumps({"id": f"{index}-{row}", "text": f"{edit}row {row} of document file {index}"})
        for row in range(rows)
    ]
    (folder / f"f{index:05d}.jsonl").write_text("\n".join(lines) + "\n")


def make_spec(source: Path, output: Path, server: FakeServer, rows_per_shard: int) -> JobSpec:
    return JobSpec.from_dict(
        {
            "source": {"uri": str(source), "id_column": "id"},
            "embedding": {
                "provider": "huggingface_server",
                "config": {"url": f"{server.url}/embed", "max_retries": 0},
            },
            "fleet": {"replicas": 2, "num_cpus": 0, "batch_size": 256},
            "output": {"uri": str(output), "rows_per_shard": rows_per_shard},
        }
    )


def part_files(output: Path) -> list[Path]:
    latest = store.OutputStore(str(output)).latest()
    return sorted((output / "snapshots" / latest).glob("*.parquet"))


def test_small_files_incremental_run_sends_only_new_and_changed_rows_and_copies_shards(
    tmp_path, server
):
    folder, output = tmp_path / "docs", tmp_path / "out"
    folder.mkdir()
    for index in range(5000):
        write_file(folder, index)
    spec = make_spec(folder, output, server, rows_per_shard=500)
    first = Job(spec).run(progress=False)
    assert first.complete and first.embedded == 10_000
    assert len(part_files(output)) <= 10_000 // 500 + 3  # not one part per file
    before = {shard.shard_id: shard for shard in Job(spec).plan().shards}

    changed = range(7, 5000, 500)  # 10 files, spread over the corpus
    for index in changed:
        write_file(folder, index, edit="edited ")
    for index in range(5000, 5100):  # 100 new files, after the others in path order
        write_file(folder, index)
    server.requests.clear()
    second = Job(spec).run(progress=False)

    new_texts = [f"row {row} of document file {i}" for i in range(5000, 5100) for row in range(2)]
    edited = [f"edited row {row} of document file {i}" for i in changed for row in range(2)]
    assert sent_texts(server) == Counter(new_texts + edited)  # exactly those, once each
    assert (second.embedded, second.carried_over, second.deleted) == (220, 9980, 0)
    markers = store.OutputStore(str(output)).snapshot(second.run_id).commits()
    untouched = set(markers) & set(before)
    assert len(untouched) >= len(before) - 10 - 3  # the edits touched a few shards each
    for shard_id in untouched:  # ... and every shard they did not touch was copied whole
        assert markers[shard_id].copied_from, shard_id
        assert markers[shard_id].unit == "files" and markers[shard_id].end > 1
    table = embedfleet.read(str(output)).to_table(columns=["id"])
    assert sorted(table["id"].to_pylist()) == sorted(
        f"{index}-{row}" for index in range(5100) for row in range(2)
    )


def test_text_file_documents_become_a_handful_of_part_files(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    for index in range(3000):
        (folder / f"page{index:05d}.md").write_text(f"# Page {index}\n\nbody of page {index}\n")
    spec = JobSpec.from_dict(
        {
            "source": {"uri": str(folder), "format": "text_file"},
            "embedding": {"provider": "hash", "config": {"dimension": 8}},
            "fleet": {"replicas": 2, "num_cpus": 0, "batch_size": 1024},
            "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 1000},
        }
    )
    result = Job(spec).run(progress=False)
    assert result.complete and result.embedded == 3000
    assert len(part_files(tmp_path / "out")) <= 4
    ids = embedfleet.read(str(tmp_path / "out")).to_table(columns=["id"])["id"].to_pylist()
    assert sorted(ids) == [f"page{index:05d}.md" for index in range(3000)]


def test_a_reject_in_a_packed_shard_names_its_file_and_line(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for index in range(40):
        write_file(folder, index)
    with (folder / "f00023.jsonl").open("a") as handle:
        handle.write('{"id": "23-x", "text": ""}\n')
    spec = JobSpec.from_dict(
        {
            "source": {"uri": str(folder), "id_column": "id"},
            "embedding": {"provider": "hash", "config": {"dimension": 8}},
            "fleet": {"replicas": 1, "num_cpus": 0},
            "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 1000},
        }
    )
    result = Job(spec).run(progress=False)
    assert result.complete and result.rejected == 1 and result.embedded == 80
    snapshot = store.OutputStore(str(tmp_path / "out")).snapshot(result.run_id)
    (marker,) = snapshot.commits().values()
    assert marker.unit == "files" and marker.end == 40
    (reject,) = pq.read_table(snapshot.path(marker.rejects)).to_pylist()
    assert (reject["file"], reject["line"], reject["kind"]) == ("f00023.jsonl", 3, "empty_text")
    assert Job(spec).plan().up_to_date  # the same files plan the same packed shard again


# -- outputs written before packing -------------------------------------------------------------


def write_before_packing(monkeypatch, spec: JobSpec) -> embedfleet.job.JobResult:
    """Run ``spec`` the way embedfleet did before packed shards: one shard per file (the
    same planner, ids and markers) and a ``_run.json`` without ``packing``."""
    original = sources.plan_listing
    monkeypatch.setattr(
        sources,
        "plan_listing",
        lambda *args, **kwargs: original(*args, **{**kwargs, "packed": False}),
    )
    try:
        result = Job(spec).run(progress=False)
    finally:
        monkeypatch.setattr(sources, "plan_listing", original)
    snapshot = store.OutputStore(spec.output.uri).snapshot(result.run_id)
    info = snapshot.run_info()
    del info["packing"]
    snapshot.fs.pipe_file(snapshot.path(store.RUN_FILE), json.dumps(info).encode())
    return result


def test_an_update_from_a_snapshot_written_before_packing_carries_every_unchanged_row(
    tmp_path, server, monkeypatch
):
    folder, output = tmp_path / "docs", tmp_path / "out"
    folder.mkdir()
    for index in range(24):
        write_file(folder, index)
    spec = make_spec(folder, output, server, rows_per_shard=40)
    old = write_before_packing(monkeypatch, spec)
    assert old.complete and old.shards == 24  # one part per file
    write_file(folder, 5, edit="edited ")
    server.requests.clear()

    result = Job(spec).run(progress=False)
    assert result.complete and result.shards < 5  # packed now
    assert sent_texts(server) == Counter(f"edited row {row} of document file 5" for row in range(2))
    assert (result.embedded, result.carried_over) == (2, 46)


def test_a_resume_of_an_unfinished_snapshot_written_before_packing_continues_it(
    tmp_path, server, monkeypatch
):
    folder, output = tmp_path / "docs", tmp_path / "out"
    folder.mkdir()
    for index in range(16):
        write_file(folder, index)
    (folder / "f00012.jsonl").write_text("not json\n")
    spec = make_spec(folder, output, server, rows_per_shard=40)
    spec.source.on_bad_record = "error"
    old = write_before_packing(monkeypatch, spec)
    assert not old.complete and len(old.failed_shards) == 1  # 15 files committed, one each

    write_file(folder, 12)
    server.requests.clear()
    job = Job(spec)
    assert "written before packed shards" in job.plan().note
    result = job.run(progress=False)
    assert result.complete and result.run_id == old.run_id  # the same snapshot, finished
    assert (result.resumed, result.embedded) == (30, 2)
    assert sent_texts(server) == Counter(f"row {row} of document file 12" for row in range(2))
