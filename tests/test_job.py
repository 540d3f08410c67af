"""Jobs end to end on a real local Ray: snapshots, rejects, corrupt files, locks,
resume after SIGKILL, signals, S3 through moto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedfleet
from embedfleet.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, main
from embedfleet.embedding_functions import DefaultEmbeddingFunction
from embedfleet.errors import ConfigError, LockedError
from embedfleet.job import Job, JobSpec, store
from embedfleet.testing import HashEmbeddingFunction

pytestmark = pytest.mark.usefixtures("local_ray")

HASH = {"provider": "hash", "config": {"dimension": 8}}
FAST_FLEET = {"replicas": 1, "num_cpus": 0}


def make_spec(source: dict, output_uri: str, **sections) -> JobSpec:
    data = {
        "source": source,
        "embedding": sections.pop("embedding", HASH),
        "fleet": sections.pop("fleet", FAST_FLEET),
        "output": {"uri": output_uri, "rows_per_shard": 50, **sections.pop("output", {})},
    }
    return JobSpec.from_dict(data)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(count: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"r{index}", "text": f"document number {index}"}
        for index in range(start, start + count)
    ]


def vectors_by_id(table: pa.Table) -> dict[str, np.ndarray]:
    embeddings = table["embedding"].to_pylist()
    return {
        id_: np.asarray(vector)
        for id_, vector in zip(table["id"].to_pylist(), embeddings, strict=True)
    }


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll a condition that another process makes true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.real_model
def test_quickstart_job_matches_in_process_and_reads_back_everywhere(repo_root, tmp_path):
    spec = JobSpec.from_toml(repo_root / "jobs/quickstart.toml")
    spec.output.uri = str(tmp_path / "out")
    spec.embedding.config["precision"] = "fp32"
    result = Job(spec).run(progress=False)
    assert result.complete and result.embedded == 240 and result.rejected == 0
    # the replicas' token counts reach the driver: every token the model ran, exactly once
    texts = [json.loads(line)["text"] for line in (repo_root / "data/sample/docs.jsonl").open()]
    assert result.model_tokens == sum(DefaultEmbeddingFunction().token_lengths(texts))
    assert result.padded_tokens >= result.model_tokens
    # the time splits into start-up, embedding and finish; steady throughput is the middle
    embedding = result.seconds - result.startup_seconds - result.finish_seconds
    assert result.startup_seconds > 0 and result.finish_seconds > 0 and embedding > 0
    assert result.steady_rows_per_second == pytest.approx(240 / embedding)

    table = embedfleet.read(spec.output.uri).to_table()
    with open(repo_root / "data/sample/docs.jsonl", encoding="utf-8") as handle:
        sample = [json.loads(line) for line in handle]
    assert sorted(table["id"].to_pylist()) == sorted(row["id"] for row in sample)
    assert dict(zip(table["id"].to_pylist(), table["topic"].to_pylist(), strict=True)) == {
        row["id"]: row["topic"] for row in sample
    }
    expected = embedfleet.embedding_functions.DefaultEmbeddingFunction(precision="fp32")(
        [row["text"] for row in sample]
    )
    got = vectors_by_id(table)
    for row, vector in zip(sample, expected, strict=True):
        np.testing.assert_allclose(got[row["id"]], vector, atol=1e-5)

    metadata = json.loads(table.schema.metadata[b"embedfleet"])
    assert metadata["provider"] == "default" and metadata["precision"] == "fp32"
    assert metadata["dimension"] == 384 and metadata["job_fingerprint"]

    import duckdb

    snapshot = Path(spec.output.uri) / (Path(spec.output.uri) / "_latest").read_text()
    ((count, dimension),) = duckdb.sql(
        f"select count(*), max(len(embedding)) from read_parquet('{snapshot}/*.parquet')"
    ).fetchall()
    assert (count, dimension) == (240, 384)


def test_every_row_is_embedded_or_rejected_with_a_reason(tmp_path):
    data = [
        *rows(5),
        {"id": "null", "text": None},
        {"id": "empty", "text": ""},
        {"id": "blank", "text": "   "},
        {"id": "missing"},
    ]
    source = write_jsonl(tmp_path / "data.jsonl", data)
    spec = make_spec({"uri": str(source), "id_column": "id"}, str(tmp_path / "out"))
    result = Job(spec).run(progress=False)
    assert (result.rows_read, result.embedded, result.rejected) == (9, 5, 4)
    assert [sorted(replica) for replica in result.placement] == [
        sorted(["node_id", "pid", "gpu_ids", "cuda_visible_devices", "torch_threads"])
    ]
    snapshot = Path(spec.output.uri) / (Path(spec.output.uri) / "_latest").read_text()
    rejects = pa.concat_tables(pq.read_table(path) for path in (snapshot / "_rejects").iterdir())
    kinds = dict(zip(rejects["id"].to_pylist(), rejects["kind"].to_pylist(), strict=True))
    assert kinds == {
        "null": "null_text",
        "empty": "empty_text",
        "blank": "blank_text",
        "missing": "missing_text",
    }
    assert rejects["line"].to_pylist() == [6, 7, 8, 9] and set(rejects["file"].to_pylist()) == {
        "data.jsonl"
    }
    assert sorted(embedfleet.read(spec.output.uri).to_table()["id"].to_pylist()) == [
        f"r{index}" for index in range(5)
    ]


def test_on_bad_record_error_fails_the_shard_naming_the_file_and_line(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", [*rows(3), {"id": "bad", "text": ""}])
    spec = make_spec(
        {"uri": str(source), "id_column": "id", "on_bad_record": "error"}, str(tmp_path / "o")
    )
    result = Job(spec).run(progress=False)
    assert not result.complete and list(result.failure_kinds.values()) == ["record"]
    (error,) = result.failed_shards.values()
    assert "data.jsonl line 4: text field 'text' is empty" in error


def test_missing_text_column_fails_before_any_work(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", [{"id": "1", "body": "x"}])
    spec = make_spec({"uri": str(source), "text_column": "text"}, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"'text'.*(body|columns)"):
        Job(spec).run(progress=False)
    assert not (tmp_path / "out" / "snapshots").exists()
    assert not (tmp_path / "out" / "_lock").exists()


def write_parquet_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"part{index}.parquet"
        pq.write_table(pa.Table.from_pylist(rows(40, start=index * 40)), path)
        paths.append(path)
    return paths


def test_corrupt_file_fails_only_its_shard_and_a_rerun_retries_only_that(tmp_path):
    paths = write_parquet_files(tmp_path / "data", 3)
    good = paths[1].read_bytes()
    paths[1].write_bytes(b"this is not parquet at all")
    spec = make_spec({"uri": str(tmp_path / "data"), "id_column": "id"}, str(tmp_path / "out"))
    first = Job(spec).run(progress=False)
    assert not first.complete and first.embedded == 80
    (error,) = first.failed_shards.values()
    assert "part1.parquet" in error
    assert not (tmp_path / "out" / "_latest").exists()
    assert (
        main(["run", "--quiet", "--output", str(tmp_path / "out2"), *_spec_file(tmp_path, spec)])
        == EXIT_FAILED
    )

    paths[1].write_bytes(good)
    second = Job(spec).run(progress=False)
    assert second.complete and second.run_id == first.run_id
    assert second.shards_skipped == 2 and second.embedded == 40 and second.resumed == 80
    assert embedfleet.read(spec.output.uri).count_rows() == 120


def test_a_resume_counts_shards_committed_before_markers_held_carried_and_reused(tmp_path):
    paths = write_parquet_files(tmp_path / "data", 3)
    good = paths[1].read_bytes()
    paths[1].write_bytes(b"this is not parquet at all")
    spec = make_spec({"uri": str(tmp_path / "data"), "id_column": "id"}, str(tmp_path / "out"))
    assert not Job(spec).run(progress=False).complete
    for path in (tmp_path / "out").glob("snapshots/*/_commits/*.json"):
        marker = json.loads(path.read_text())
        for newer in ("carried", "reused", "model_tokens", "padded_tokens"):
            del marker[newer]
        path.write_text(json.dumps(marker))

    paths[1].write_bytes(good)
    second = Job(spec).run(progress=False)
    assert second.complete and second.shards_skipped == 2 and second.resumed == 80
    snapshot = store.OutputStore(spec.output.uri).snapshot(second.run_id)
    assert snapshot.manifest()["vectors"] == 120


def _spec_file(tmp_path: Path, spec: JobSpec, name: str = "job.toml") -> list[str]:
    """``spec`` written as TOML, for the CLI (JSON scalars are valid TOML values)."""
    data = spec.to_dict()
    sections = {
        "source": {"uri": data["source"]["uri"], "id_column": data["source"]["id_column"]},
        "embedding": {"provider": data["embedding"]["provider"]},
        "embedding.config": data["embedding"]["config"],
        "fleet": data["fleet"],
        "output": {
            "uri": data["output"]["uri"],
            "rows_per_shard": data["output"]["rows_per_shard"],
        },
    }
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [
            f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None
        ]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return [str(path)]


def test_a_changed_config_starts_a_new_snapshot_and_overwrite_starts_afresh(tmp_path):
    paths = write_parquet_files(tmp_path / "data", 2)
    paths[0].write_bytes(b"corrupt")
    spec = make_spec({"uri": str(tmp_path / "data"), "id_column": "id"}, str(tmp_path / "out"))
    assert not Job(spec).run(progress=False).complete
    spec.embedding.config = {"dimension": 16}
    plan = Job(spec).plan()  # never resumed into: that would mix vectors
    assert plan.snapshot is None and "made with other settings" in plan.note
    spec.output.mode = "overwrite"
    spec.source.uri = str(paths[1])
    result = Job(spec).run(progress=False)
    assert result.complete and result.shards_skipped == 0
    table = embedfleet.read(spec.output.uri).to_table()
    assert table.schema.field("embedding").type.list_size == 16


def test_duplicate_ids_across_files_are_an_error_naming_them(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows(3))
    write_jsonl(folder / "b.jsonl", rows(2, start=2))
    spec = make_spec({"uri": str(folder), "id_column": "id"}, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"duplicate values across files: \['r2'\]"):
        Job(spec).run(progress=False)
    assert not (tmp_path / "out" / "_latest").exists()


def test_a_second_concurrent_run_is_refused(tmp_path, capsys):
    source = write_jsonl(tmp_path / "data.jsonl", rows(3))
    spec = make_spec({"uri": str(source), "id_column": "id"}, str(tmp_path / "out"))
    holder = store.OutputStore(spec.output.uri)
    lease = holder.acquire()
    with pytest.raises(LockedError, match="another run is writing there"):
        Job(spec).run(progress=False)
    assert main(["run", "--quiet", *_spec_file(tmp_path, spec)]) == EXIT_LOCKED
    assert "locked" in capsys.readouterr().err
    holder.release(lease)
    assert Job(spec).run(progress=False).complete


FAKE_SECRET = "sk-fake-not-a-real-key-0000"


def test_storage_credentials_never_reach_the_output(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", rows(3))
    spec = make_spec(
        {"uri": str(source), "id_column": "id", "storage_options": {"token": FAKE_SECRET}},
        str(tmp_path / "out"),
    )
    assert Job(spec).run(progress=False).complete
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert files and not [path for path in files if FAKE_SECRET.encode() in path.read_bytes()]
    (run_file,) = (tmp_path / "out").glob("snapshots/*/_run.json")
    recorded = json.loads(run_file.read_text())["spec"]["source"]["storage_options"]
    assert recorded == {"token": "<redacted>"}


def run_cli_job(tmp_path: Path, output: Path, delay: float) -> subprocess.Popen:
    spec = make_spec(
        {"uri": str(tmp_path / "data.jsonl"), "id_column": "id"},
        str(output),
        embedding={
            "provider": "hash",
            "config": {"dimension": 8, "delay_seconds": delay, "batch_size": 10},
        },
        fleet={"replicas": 1, "num_cpus": 0, "batch_size": 10},
        output={"rows_per_shard": 20},
    )
    (spec_file,) = _spec_file(tmp_path, spec, "slow.toml")
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "embedfleet.cli", "run", "--quiet", spec_file],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def committed(output: Path) -> int:
    return len(list(output.glob("snapshots/*/_commits/*.json")))


def test_resume_after_sigkill_gives_the_same_snapshot_as_an_uninterrupted_run(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", rows(400))
    output = tmp_path / "killed"
    process = run_cli_job(tmp_path, output, delay=0.2)
    wait_for(lambda: committed(output) >= 2, 120, "two committed shards")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (output / "_latest").exists()
    before = committed(output)

    resumed = run_cli_job(tmp_path, output, delay=0.2)
    assert resumed.wait(timeout=300) == EXIT_OK, resumed.stderr.read()
    markers = [json.loads(path.read_text()) for path in output.glob("snapshots/*/_commits/*.json")]
    assert len(markers) == 20 and before < 20
    assert len(list(output.glob("snapshots/*"))) == 1  # the same snapshot was continued

    table = embedfleet.read(str(output)).to_table()
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(f"r{index}" for index in range(400)) and len(set(ids)) == 400
    reference = HashEmbeddingFunction(dimension=8)([f"document number {i}" for i in range(400)])
    got = vectors_by_id(table)
    for index, vector in enumerate(reference):
        np.testing.assert_allclose(got[f"r{index}"], vector, atol=1e-6)


def test_sigterm_stops_cleanly_releasing_the_lock_and_stays_resumable(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", rows(400))
    output = tmp_path / "stopped"
    process = run_cli_job(tmp_path, output, delay=0.2)
    wait_for(lambda: committed(output) >= 1, 120, "a committed shard")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED
    assert not (output / "_lock").exists()
    assert not (output / "_latest").exists()
    resumed = run_cli_job(tmp_path, output, delay=0.2)
    assert resumed.wait(timeout=300) == EXIT_OK
    assert embedfleet.read(str(output)).count_rows() == 400


def test_plan_and_status_commands(tmp_path, capsys):
    source = write_jsonl(tmp_path / "data.jsonl", rows(120))
    spec = make_spec({"uri": str(source), "id_column": "id"}, str(tmp_path / "out"))
    arguments = _spec_file(tmp_path, spec)
    assert main(["plan", "--json", *arguments]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["shards"] >= 2 and plan["committed_shards"] == 0
    assert not (tmp_path / "out").exists()  # planning embeds and writes nothing
    assert (
        main(["run", "--quiet", "--report", str(tmp_path / "report.json"), *arguments]) == EXIT_OK
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] and report["embedded"] == 120
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out")]) == EXIT_OK
    status = capsys.readouterr().out
    assert report["run_id"] in status and "latest" in status and "lock: free" in status


def test_status_counts_carried_rows_as_vectors(tmp_path, capsys):
    source = write_jsonl(tmp_path / "data.jsonl", rows(120))
    spec = make_spec(
        {"uri": str(source), "id_column": "id"},
        str(tmp_path / "out"),
        output={"mode": "incremental"},
    )
    first = Job(spec).run(progress=False)
    write_jsonl(source, [*rows(119), {"id": "r119", "text": "an edited document"}])
    second = Job(spec).run(progress=False)
    assert (second.embedded, second.carried_over) == (1, 119)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out")]) == EXIT_OK
    snapshots = capsys.readouterr().out.splitlines()[3:]
    assert [line.split() for line in snapshots] == [
        [first.run_id, "complete", f"{first.shards}/{first.shards}", "120", "0"],
        [second.run_id, "latest", f"{second.shards}/{second.shards}", "120", "0"],
    ]


def test_the_driver_loads_no_model_the_metadata_comes_from_a_replica(tmp_path):
    """Where the model runs decides its device, precision and quality guards: the job
    records them as a replica resolved them, and the driver (perhaps a small head node
    without the replicas' GPUs) never loads the model, not even to describe it."""
    from embedfleet.embedding_functions.local import models as local_models
    from tests.tiny_models import build_tiny_sentence_transformer

    model_dir = build_tiny_sentence_transformer(tmp_path / "model", seed=11)
    config = {"model_name": str(model_dir), "backend": "onnx", "precision": "auto"}
    spec = make_spec(
        {"uri": str(write_jsonl(tmp_path / "docs.jsonl", rows(60)))},
        str(tmp_path / "out"),
        embedding={"provider": "sentence_transformer", "config": config},
        fleet={"replicas": 1, "num_cpus": 1},
    )
    loaded = local_models.cached_model_count()
    result = Job(spec).run(progress=False)
    assert result.complete and result.embedded == 60
    assert local_models.cached_model_count() == loaded

    table = embedfleet.read(spec.output.uri).to_table()
    metadata = json.loads(table.schema.metadata[b"embedfleet"])
    assert metadata["backend"] == "onnx" and metadata["int8_min_cosine"] is not None
    snapshot = store.OutputStore(spec.output.uri).snapshot(result.run_id)
    assert snapshot.manifest()["embedding"] == metadata  # start, parts and finish agree
