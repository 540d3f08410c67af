"""Incremental re-embedding end to end: a real local Ray fleet calling a real HTTP
provider (a TEI fake on 127.0.0.1) that records every text it is sent."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import embedfleet
from embedfleet.cli import EXIT_LOCKED, main
from embedfleet.job import Job, JobSpec, OutputSpec, store
from embedfleet.output_format import content_hash
from tests.fakes import tei
from tests.fakes.server import FakeServer, Fault

pytestmark = pytest.mark.usefixtures("local_ray")


server = pytest.fixture(tei.serving, name="server")
sent_texts = tei.sent_texts


def corpus(count: int) -> dict[str, str]:
    return {f"doc-{index:04d}": f"original text of document {index}" for index in range(count)}


def write_corpus(path: Path, documents: dict[str, str]) -> None:
    lines = [
        json.dumps({"id": id_, "text": text, "length": len(text)})
        for id_, text in documents.items()
    ]
    path.write_text("\n".join(lines) + "\n")


def make_spec(source: Path, output: Path, server: FakeServer, **config: object) -> JobSpec:
    return JobSpec.from_dict(
        {
            "source": {"uri": str(source), "id_column": "id", "columns": ["length"]},
            "embedding": {
                "provider": "huggingface_server",
                "config": {"url": f"{server.url}/embed", "max_retries": 0, **config},
            },
            "fleet": {"replicas": 2, "num_cpus": 0},
            "output": {"uri": str(output), "rows_per_shard": 40, "mode": "incremental"},
        }
    )


def default_mode_spec(source: Path, output: Path, server: FakeServer) -> JobSpec:
    """The spec a nightly cron job runs: no output.mode, so the default."""
    spec = make_spec(source, output, server)
    spec.output = OutputSpec(uri=str(output), rows_per_shard=40)
    return spec


def by_id(uri: Path) -> dict[str, dict]:
    table = embedfleet.read(str(uri)).to_table()
    return {row["id"]: row for row in table.to_pylist()}


def test_a_rerun_embeds_exactly_the_new_and_changed_rows(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    before = corpus(200)
    write_corpus(source, before)
    first = Job(make_spec(source, output, server)).run(progress=False)
    assert first.complete and first.embedded == 200 and first.carried_over == 0
    first_snapshot = store.OutputStore(str(output)).latest()

    after = dict(before)
    ids = sorted(before)
    changed, deleted = ids[0:200:10], ids[5:200:20]  # 10% changed, 5% deleted
    for id_ in changed:
        after[id_] = f"rewritten text of {id_}"
    for id_ in deleted:
        del after[id_]
    new = {f"doc-new-{index}": f"a brand new document {index}" for index in range(10)}  # 5% new
    after.update(new)
    write_corpus(source, after)
    server.requests.clear()

    job = Job(make_spec(source, output, server))
    assert job.plan().base == first_snapshot
    result = job.run(progress=False)

    expected = Counter([after[id_] for id_ in changed] + list(new.values()))
    assert sent_texts(server) == expected  # exactly the changed and new texts, once each
    assert result.complete
    assert (result.embedded, result.carried_over, result.reused, result.deleted) == (30, 170, 0, 10)
    manifest = store.OutputStore(str(output)).snapshot(result.run_id).manifest()
    assert manifest["base"] == first_snapshot and manifest["deleted"] == 10
    assert manifest["vectors"] == 200 and manifest["carried_over"] == 170

    # the snapshot equals a full re-embed of the new corpus, passthrough columns included
    full = make_spec(source, tmp_path / "full", server)
    full.output.mode = "overwrite"
    assert Job(full).run(progress=False).complete
    incremental_rows, full_rows = by_id(output), by_id(tmp_path / "full")
    assert incremental_rows.keys() == full_rows.keys() == after.keys()
    for id_, row in full_rows.items():
        assert incremental_rows[id_]["content_hash"] == row["content_hash"]
        assert incremental_rows[id_]["length"] == row["length"] == len(after[id_])
        np.testing.assert_allclose(incremental_rows[id_]["embedding"], row["embedding"], rtol=1e-6)
    # the previous snapshot is kept, whole (keep_snapshots)
    assert store.OutputStore(str(output)).snapshot(first_snapshot).is_complete()


def test_unchanged_shards_are_copied_and_known_texts_reused(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    documents = corpus(120)
    write_corpus(source, documents)
    assert Job(make_spec(source, output, server)).run(progress=False).complete
    server.requests.clear()

    os.utime(source, (1_000_000_000, 1_000_000_000))  # listed as changed, the same rows
    again = Job(make_spec(source, output, server)).run(progress=False)
    assert again.complete and again.embedded == 0 and again.carried_over == 120
    assert not server.requests  # nothing sent to the provider
    markers = store.OutputStore(str(output)).snapshot(again.run_id).commits().values()
    assert all(marker.copied_from.endswith(".parquet") for marker in markers)

    documents["doc-copy"] = documents["doc-0007"]  # a new id with a text already embedded
    write_corpus(source, documents)
    server.requests.clear()
    reuse = Job(make_spec(source, output, server)).run(progress=False)
    assert reuse.complete and reuse.reused == 1 and reuse.embedded == 0
    assert not server.requests
    rows = by_id(output)
    np.testing.assert_array_equal(rows["doc-copy"]["embedding"], rows["doc-0007"]["embedding"])


def test_a_changed_config_re_embeds_everything_and_plan_says_so(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(source, corpus(60))
    assert Job(make_spec(source, output, server)).run(progress=False).complete
    server.requests.clear()
    job = Job(make_spec(source, output, server, normalize=False))
    plan = job.plan()
    assert plan.base is None and "every row is re-embedded" in plan.note
    result = job.run(progress=False)
    assert result.complete and result.embedded == 60 and result.carried_over == 0
    assert sum(sent_texts(server).values()) == 60


def test_a_failed_incremental_run_leaves_the_previous_snapshot_whole(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    documents = corpus(80)
    write_corpus(source, documents)
    assert Job(make_spec(source, output, server)).run(progress=False).complete
    latest = store.OutputStore(str(output)).latest()
    before = embedfleet.read(str(output)).to_table()

    documents.update({f"doc-extra-{index}": f"extra document {index}" for index in range(5)})
    write_corpus(source, documents)
    server.faults.extend([Fault(500, b'{"error": "down"}')] * 50)  # max_retries = 0
    failed = Job(make_spec(source, output, server)).run(progress=False)
    assert not failed.complete and failed.failed_shards
    assert store.OutputStore(str(output)).latest() == latest
    assert embedfleet.read(str(output)).to_table().equals(before)

    server.faults.clear()
    resumed = Job(make_spec(source, output, server)).run(progress=False)
    assert resumed.complete and len(by_id(output)) == 85


def test_an_overlapping_scheduled_run_is_refused_with_exit_code_3(tmp_path, server, capsys):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(source, corpus(10))
    spec = make_spec(source, output, server)
    spec_file = tmp_path / "job.toml"
    spec_file.write_text(
        "\n".join(
            [
                "[source]",
                f'uri = "{source}"',
                'id_column = "id"',
                "[embedding]",
                'provider = "huggingface_server"',
                "[embedding.config]",
                f'url = "{server.url}/embed"',
                "[fleet]",
                "num_cpus = 0",
                "[output]",
                f'uri = "{output}"',
            ]
        )
        + "\n"
    )
    holder = store.OutputStore(spec.output.uri)
    lease = holder.acquire()  # a nightly run still going
    try:
        assert main(["run", "--quiet", "--incremental", str(spec_file)]) == EXIT_LOCKED
        assert "another run is writing there" in capsys.readouterr().err
    finally:
        holder.release(lease)
    assert main(["run", "--quiet", "--incremental", str(spec_file)]) == 0
    assert pa.compute.count(embedfleet.read(str(output)).to_table()["id"]).as_py() == 10


def test_a_resumed_run_re_embeds_shards_whose_file_changed_since_their_commit(tmp_path, server):
    folder, output = tmp_path / "data", tmp_path / "out"
    folder.mkdir()
    write_corpus(folder / "a.jsonl", {f"a-{index}": f"first file {index}" for index in range(30)})
    (folder / "b.jsonl").write_text("not json at all\n")  # fails its shard: run unfinished
    spec = make_spec(folder, output, server)
    spec.output.mode = "resume"
    spec.source.on_bad_record = "error"
    assert not Job(spec).run(progress=False).complete  # a.jsonl's shards are committed

    edited = {f"a-{index}": f"first file, edited {index}" for index in range(0, 30, 2)}
    write_corpus(folder / "a.jsonl", edited)  # changed (and shorter) since its commit
    write_corpus(folder / "b.jsonl", {"b-0": "second file"})
    result = Job(spec).run(progress=False)
    assert result.complete and result.resumed == 0  # nothing stale was kept
    rows = by_id(output)
    assert {id_: row["content_hash"] for id_, row in rows.items()} == {
        id_: content_hash(text) for id_, text in {**edited, "b-0": "second file"}.items()
    }
    snapshot = store.OutputStore(str(output)).snapshot(result.run_id)
    parts = [path for path in snapshot.fs.ls(snapshot.root) if path.endswith(".parquet")]
    assert len(parts) == len(snapshot.commits())  # no orphan part from the stale commit


def test_rejected_rows_are_not_counted_as_deleted(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    documents = corpus(20)
    write_corpus(source, documents)
    assert Job(make_spec(source, output, server)).run(progress=False).complete
    documents["doc-0003"] = "   "  # still in the source, now empty: rejected
    del documents["doc-0004"]  # gone: deleted
    write_corpus(source, documents)
    result = Job(make_spec(source, output, server)).run(progress=False)
    assert (result.rejected, result.deleted, result.carried_over) == (1, 1, 18)


def test_an_unfinished_snapshot_of_another_config_does_not_block_a_nightly_run(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(source, corpus(40))
    server.faults.extend([Fault(500, b'{"error": "down"}')] * 20)
    assert not Job(make_spec(source, output, server)).run(progress=False).complete
    server.faults.clear()
    job = Job(make_spec(source, output, server, normalize=False))  # the model config changed
    assert "full re-embed" in job.plan().note
    assert job.run(progress=False).complete and len(by_id(output)) == 40


def test_key_collisions_never_carry_a_wrong_vector(monkeypatch):
    from embedfleet.job import incremental

    ids = [f"doc-{index}" for index in range(50)]
    hashes = [content_hash(f"text {index}") for index in range(50)]
    table = pa.table(
        {"id": ids, "content_hash": hashes, "part": ["p.parquet"] * 50, "row": list(range(50))}
    )
    monkeypatch.setattr(incremental, "_id_key", lambda id_: 7)  # every id collides
    id_keys, id_rows = incremental._sorted_keys(ids, incremental._id_key)
    hash_keys, hash_rows = incremental._sorted_keys(hashes, incremental._hash_key)
    base = incremental.BaseIndex("base", table, id_keys, id_rows, hash_keys, hash_rows)
    shuffled = list(range(49, -1, -1))
    matches = incremental.match([ids[i] for i in shuffled], [hashes[i] for i in shuffled], base)
    # carried rows come from their own id; the others still find their text by its hash
    for row, (kind, source) in enumerate(zip(matches.kinds, matches.sources, strict=True)):
        assert kind in (incremental.CARRY, incremental.REUSE) and source == shuffled[row]
    assert matches.count(incremental.CARRY) == 1


def test_a_rerun_of_an_unchanged_source_in_the_default_mode_costs_nothing(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(source, corpus(60))
    first = Job(default_mode_spec(source, output, server)).run(progress=False)
    assert first.complete and first.embedded == 60
    server.requests.clear()

    again = Job(default_mode_spec(source, output, server)).run(progress=False)
    assert again.complete and again.up_to_date and again.run_id == first.run_id
    assert (again.rows_read, again.embedded, again.tokens) == (0, 0, 0)
    assert not server.requests  # nothing sent to the provider
    outputs = store.OutputStore(str(output))
    assert outputs.snapshot_ids() == [first.run_id] and outputs.latest() == first.run_id
    assert outputs.snapshot(first.run_id).manifest()["vectors"] == 60  # still true
    assert ("complete", "yes: up to date") in again.summary_rows(str(output))


def test_plan_exact_counts_what_the_default_rerun_then_embeds(tmp_path, server):
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"
    before = corpus(60)
    write_corpus(source, before)
    assert Job(default_mode_spec(source, output, server)).run(progress=False).complete
    after = dict(before)
    for id_ in ("doc-0001", "doc-0002", "doc-0003"):  # changed
        after[id_] = f"rewritten {id_}"
    del after["doc-0010"], after["doc-0011"]  # deleted
    after["doc-new-1"] = "a brand new document"  # new
    after["doc-new-2"] = before["doc-0020"]  # new, with a text the snapshot has: reused
    after["doc-0030"] = ""  # rejected
    write_corpus(source, after)
    server.requests.clear()

    job = Job(default_mode_spec(source, output, server))
    exact = job.plan(exact=True).exact
    assert exact is not None and not server.requests  # counting embeds nothing
    assert (exact.new, exact.changed, exact.unchanged, exact.deleted) == (2, 3, 54, 2)
    assert (exact.reused, exact.rejected, exact.to_embed) == (1, 1, 4)
    assert exact.rejected_by_kind == {"empty_text": 1}
    result = job.run(progress=False)
    texts = [after[id_] for id_ in ("doc-0001", "doc-0002", "doc-0003", "doc-new-1")]
    assert sent_texts(server) == Counter(texts)
    assert (result.embedded, result.reused, result.carried_over) == (4, 1, 54)
    assert (result.deleted, result.rejected, result.tokens) == (2, 1, exact.tokens)
