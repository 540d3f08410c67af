"""Jobs with ``[chunking]``, ``[source] template`` and ``[output] keep_text`` end to end on a
real local Ray: one row per chunk, documents and chunks counted side by side, and
incremental runs that send a real HTTP provider (a TEI fake on 127.0.0.1 that records
every text) exactly the chunks whose text changed."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import embedfleet
from embedfleet.embedding_functions import HashEmbeddingFunction
from embedfleet.job import Job, JobSpec, store
from embedfleet.output_format import content_hash
from tests.fakes import tei
from tests.fakes.server import FakeServer
from tests.long_texts import shipped_documents

pytestmark = pytest.mark.usefixtures("local_ray")

FLEET = {"replicas": 1, "num_cpus": 0}


@pytest.fixture
def server():
    server = FakeServer(tei.answer)
    yield server
    server.stop()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rows_by_id(uri: Path) -> dict[str, dict]:
    return {row["id"]: row for row in embedfleet.read(str(uri)).to_table().to_pylist()}


def test_a_chunked_templated_job_writes_one_row_per_chunk(tmp_path):
    bodies = shipped_documents()[:3]
    rows = [
        {"id": f"doc-{i}", "title": f"Document {i}", "body": body, "n": i}
        for i, body in enumerate(bodies)
    ]
    rows += [
        {"id": "blank", "title": " ", "body": "\n", "n": 7},
        {"id": "untitled", "body": "a body without a title", "n": 8},
    ]
    source = write_jsonl(tmp_path / "docs.jsonl", rows)
    spec = JobSpec.from_dict(
        {
            "source": {
                "uri": str(source),
                "id_column": "id",
                "template": "{title}\n\n{body}",
                "columns": ["n"],
            },
            "embedding": {"provider": "hash", "config": {"dimension": 8}},
            "fleet": FLEET,
            "output": {"uri": str(tmp_path / "out"), "keep_text": True},
            "chunking": {"max_tokens": 60, "overlap": 8},
        }
    )
    rendered = {row["id"]: f"{row['title']}\n\n{row['body']}" for row in rows[:3]}
    expected = embedfleet.chunk(
        list(rendered.values()), HashEmbeddingFunction(dimension=8), max_tokens=60, overlap=8
    )
    chunk_count = sum(map(len, expected))
    job = Job(spec)
    plan = job.plan()
    assert (plan.estimated_rows, plan.estimated_chunks) == (5, chunk_count)

    result = job.run(progress=False)
    assert result.complete and result.rows_read == 5
    assert (result.embedded, result.rejected, result.chunks_embedded) == (3, 2, chunk_count)
    # the identity the accounting keeps, in documents: read = embedded + carried + reused + rejected
    assert result.rows_read == result.embedded + result.carried_over + result.reused + 2

    table = embedfleet.read(str(tmp_path / "out")).to_table()
    assert table.column_names == [
        "id",
        "embedding",
        "content_hash",
        "doc_id",
        "chunk_index",
        "chunk_start",
        "chunk_end",
        "text",
        "n",
    ]
    got = table.to_pylist()
    assert len(got) == chunk_count
    for (doc_id, text), chunks in zip(rendered.items(), expected, strict=True):
        mine = sorted(
            (row for row in got if row["doc_id"] == doc_id), key=lambda r: r["chunk_index"]
        )
        assert [row["id"] for row in mine] == [chunk.chunk_id(doc_id) for chunk in chunks]
        for row, chunk in zip(mine, chunks, strict=True):
            assert row["text"] == text[row["chunk_start"] : row["chunk_end"]] == chunk.text
            assert row["content_hash"] == content_hash(chunk.text)
            assert row["n"] == int(doc_id[-1])

    snapshot = store.OutputStore(str(tmp_path / "out")).snapshot(result.run_id)
    [rejects_file] = snapshot.fs.glob(snapshot.path("_rejects", "*.parquet"))
    rejects = {row["id"]: row for row in pq.read_table(rejects_file).to_pylist()}
    assert rejects["blank"]["reason"] == "the template renders whitespace only"
    assert rejects["untitled"]["reason"] == "template field 'title' is missing"
    assert rejects["untitled"]["doc_id"] == "untitled"
    manifest = snapshot.manifest()
    assert manifest["embedded"] == 3 and manifest["vectors"] == chunk_count
    assert manifest["chunks"]["rows"] == manifest["chunks"]["embedded"] == chunk_count


def test_keep_text_without_chunking_stores_each_rows_text(tmp_path):
    rows = [{"id": f"r{i}", "text": f"row number {i}"} for i in range(5)]
    spec = JobSpec.from_dict(
        {
            "source": {"uri": str(write_jsonl(tmp_path / "rows.jsonl", rows)), "id_column": "id"},
            "embedding": {"provider": "hash", "config": {"dimension": 8}},
            "fleet": FLEET,
            "output": {"uri": str(tmp_path / "out"), "keep_text": True},
        }
    )
    assert Job(spec).run(progress=False).complete
    got = rows_by_id(tmp_path / "out")
    assert {id_: row["text"] for id_, row in got.items()} == {r["id"]: r["text"] for r in rows}
    assert "chunk_index" not in next(iter(got.values()))


def sent_texts(server: FakeServer) -> Counter[str]:
    return Counter(text for request in server.requests for text in request.body["inputs"])


def test_an_incremental_run_sends_exactly_the_changed_chunks(tmp_path, server):
    documents = {f"doc-{i}": text for i, text in enumerate(shipped_documents()[:6])}
    source, output = tmp_path / "docs.jsonl", tmp_path / "out"

    def run(docs: dict[str, str]) -> embedfleet.JobResult:
        write_jsonl(source, [{"id": id_, "text": text} for id_, text in docs.items()])
        spec = JobSpec.from_dict(
            {
                "source": {"uri": str(source), "id_column": "id"},
                "embedding": {
                    "provider": "huggingface_server",
                    "config": {"url": f"{server.url}/embed", "max_retries": 0},
                },
                "fleet": FLEET,
                "output": {"uri": str(output), "mode": "incremental", "keep_text": True},
                "chunking": {"max_tokens": 120},  # TEI declares no limit: the spec sets one
            }
        )
        server.requests.clear()
        result = Job(spec).run(progress=False)
        assert result.complete
        return result

    def new_chunks(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
        known = {(row["id"], row["content_hash"]) for row in before.values()}
        return [r["text"] for r in after.values() if (r["id"], r["content_hash"]) not in known]

    first = run(documents)
    chunks = rows_by_id(output)
    assert sent_texts(server) == Counter(row["text"] for row in chunks.values())
    assert first.chunks_embedded == len(chunks) > 60 and first.embedded == 6

    # (a) the last paragraph of one document edited
    edited = dict(documents)
    edited["doc-1"] = documents["doc-1"].rstrip() + " A sentence added at the very end."
    second = run(edited)
    after_edit = rows_by_id(output)
    changed = new_chunks(chunks, after_edit)
    assert sent_texts(server) == Counter(changed) and 1 <= len(changed) <= 2
    assert (second.embedded, second.carried_over, second.chunks_embedded) == (1, 5, len(changed))
    assert second.chunks_carried == len(after_edit) - len(changed)
    assert len(set(chunks) - set(after_edit)) <= 1  # chunk ids survive the edit

    # (b) a paragraph inserted in the middle of another document, and one document deleted
    paragraphs = edited["doc-3"].split("\n\n")
    middle = len(paragraphs) // 2
    inserted = "A new paragraph in the middle. It talks about the weather on the coast."
    edited["doc-3"] = "\n\n".join([*paragraphs[:middle], inserted, *paragraphs[middle:]])
    gone = [id_ for id_, row in after_edit.items() if row["doc_id"] == "doc-5"]
    del edited["doc-5"]
    third = run(edited)
    after_insert = rows_by_id(output)
    changed = new_chunks(after_edit, after_insert)
    assert sent_texts(server) == Counter(changed) and 1 <= len(changed) <= 4
    assert not [row for row in after_insert.values() if row["doc_id"] == "doc-5"]
    replaced = set(after_edit) - set(after_insert) - set(gone)
    assert len(replaced) <= 3  # ids of doc-3's untouched chunks survive the insertion
    assert (third.embedded, third.deleted) == (1, 1)
    assert third.chunks_deleted == len(gone) + len(replaced)
    for row in after_insert.values():
        assert row["text"] == edited[row["doc_id"]][row["chunk_start"] : row["chunk_end"]]


def test_a_chunking_change_re_embeds_everything_and_the_plan_says_why(tmp_path):
    rows = [{"id": f"d{i}", "text": text} for i, text in enumerate(shipped_documents()[:2])]
    data = {
        "source": {"uri": str(write_jsonl(tmp_path / "d.jsonl", rows)), "id_column": "id"},
        "embedding": {"provider": "hash", "config": {"dimension": 8}},
        "fleet": FLEET,
        "output": {"uri": str(tmp_path / "out"), "mode": "incremental"},
        "chunking": {"max_tokens": 80},
    }
    assert Job(JobSpec.from_dict(data)).run(progress=False).complete
    source = tmp_path / "d.jsonl"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    again = Job(JobSpec.from_dict(data)).run(progress=False)  # same settings, same text
    assert again.complete and again.embedded == again.chunks_embedded == 0
    manifest = store.OutputStore(str(tmp_path / "out")).snapshot(again.run_id).manifest()
    assert all(shard.get("copied_from") for shard in manifest["shards"])  # parts copied whole
    assert manifest["chunks"]["carried"] == manifest["vectors"] > 0
    data["chunking"] = {"max_tokens": 60, "overlap": 10}
    job = Job(JobSpec.from_dict(data))
    plan = job.plan()
    assert plan.base is None and "full re-embed" in plan.note
    assert '"max_tokens": 80' in plan.note and '"overlap": 10' in plan.note
    result = job.run(progress=False)
    assert result.complete and result.chunks_carried == result.carried_over == 0
    assert result.chunks_embedded > 0 and result.embedded == 2


def test_the_long_documents_example_plans_documents_chunks_and_tokens(repo_root, capsys):
    from embedfleet.cli import EXIT_OK, main

    plan = Job.from_toml(repo_root / "jobs/long_documents.toml").plan()
    assert plan.estimated_rows == 16 and plan.estimated_chunks > 16 * 5
    assert plan.estimated_tokens > plan.estimated_chunks * 100  # chunks of ~200 tokens
    assert main(["plan", str(repo_root / "jobs/long_documents.toml")]) == EXIT_OK
    assert "estimated chunks" in capsys.readouterr().out
