"""Bad records and bad files in a real job: a local Ray fleet, the CLI as users run it.

Every source record is accounted for (read = embedded + carried over + reused + resumed +
rejected) in the summary, the report and the manifest; a file that cannot be read fails
its own shard, and the advice says what is true.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedfleet
from embedfleet.cli import EXIT_FAILED, EXIT_OK, main
from embedfleet.job import store
from tests.fakes import tei
from tests.fakes.server import FakeServer

pytestmark = pytest.mark.usefixtures("local_ray")

# one line per kind of bad JSON Lines record, between good ones
BAD_LINES = {
    "invalid_json": b'{"id": "j1", "text": "unterminated}',
    "not_an_object": b'"just a string"',
    "invalid_utf8": b'{"id": "j3", "text": "caf\xe9"}',
    "missing_id": b'{"text": "a text without its id"}',
    "invalid_id": b'{"id": [1], "text": "a list for an id"}',
    "missing_text": b'{"id": "j6"}',
    "null_text": b'{"id": "j7", "text": null}',
    "empty_text": b'{"id": "j8", "text": ""}',
    "blank_text": b'{"id": "j9", "text": "   "}',
    "not_a_string": b'{"id": "j10", "text": {"nested": true}}',
    "refused_by_provider": b'{"id": "j11", "text": "POISON"}',  # the TEI fake answers 400
}
EVERY_KIND = {*BAD_LINES, "wrong_field_count"}  # records.REJECT_KINDS, as documented


@pytest.fixture
def server():
    server = FakeServer(tei.answer)
    yield server
    server.stop()


def write_spec(tmp_path: Path, source: Path, output: Path, provider: dict) -> str:
    lines = [
        "[source]",
        f'uri = "{source}"',
        'id_column = "id"',
        "[embedding]",
        f'provider = "{provider["provider"]}"',
        "[embedding.config]",
        *(f"{key} = {json.dumps(value)}" for key, value in provider["config"].items()),
        "[fleet]",
        "num_cpus = 0",
        "[output]",
        f'uri = "{output}"',
        "rows_per_shard = 40",
    ]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_every_source_record_is_accounted_for_with_every_kind_of_bad_record(
    tmp_path, server, capsys
):
    folder, output = tmp_path / "data", tmp_path / "out"
    folder.mkdir()
    good = [json.dumps({"id": f"g{i}", "text": f"good document {i}"}).encode() for i in range(12)]
    lines = [line for pair in zip(good, BAD_LINES.values(), strict=False) for line in pair]
    (folder / "a.jsonl").write_bytes(b"\n".join(lines + good[len(BAD_LINES) :]) + b"\n")
    (folder / "b.csv").write_bytes(b"id,text\nc1,a good row\nc2,one,field too many\nc3,fine\n")
    provider = {"provider": "huggingface_server", "config": {"url": f"{server.url}/embed"}}
    spec = write_spec(tmp_path, folder, output, provider)

    report = tmp_path / "report.json"
    assert main(["run", "--report", str(report), spec]) == EXIT_OK
    summary = json.loads(report.read_text())
    expected_kinds = {kind: 1 for kind in BAD_LINES} | {"wrong_field_count": 1}
    assert set(expected_kinds) == EVERY_KIND
    assert summary["complete"] and summary["rows_read"] == 12 + 11 + 3
    assert (summary["embedded"], summary["rejected"]) == (12 + 2, 12)
    outcomes = ("embedded", "carried_over", "reused", "resumed", "rejected")
    assert summary["rows_read"] == sum(summary[name] for name in outcomes)
    assert summary["rejected_by_kind"] == expected_kinds
    printed = capsys.readouterr().out
    assert "26 = 14 embedded + 0 carried over + 0 reused + 0 resumed + 12 rejected" in printed

    latest = store.OutputStore(str(output)).latest()
    manifest = store.OutputStore(str(output)).snapshot(latest).manifest()
    assert manifest["rows"] == manifest["vectors"] + manifest["rejected"] == 26
    assert manifest["rejected_by_kind"] == expected_kinds
    rejects = pa.concat_tables(
        pq.read_table(path) for path in (output / "snapshots" / latest / "_rejects").iterdir()
    )
    by_kind = {row["kind"]: row for row in rejects.to_pylist()}
    assert set(by_kind) == EVERY_KIND and rejects.num_rows == 12
    assert by_kind["wrong_field_count"] | {"reason": ""} == {
        "id": "b.csv#1",
        "doc_id": "b.csv#1",
        "kind": "wrong_field_count",
        "reason": "",
        "file": "b.csv",
        "line": 3,
        "byte_offset": None,
        "line_in_shard": None,
        "row": 1,
    }
    lines_in_file = (folder / "a.jsonl").read_bytes().split(b"\n")
    for kind, line in BAD_LINES.items():  # each reject points at its own line of the file
        assert by_kind[kind]["file"] == "a.jsonl"
        assert lines_in_file[by_kind[kind]["line"] - 1] == line
    ids = set(embedfleet.read(str(output)).to_table()["id"].to_pylist())
    assert ids == {f"g{i}" for i in range(12)} | {"c1", "c3"}


def test_a_file_that_cannot_be_read_fails_its_shard_and_the_advice_is_to_fix_or_remove_it(
    tmp_path, capsys
):
    folder, output = tmp_path / "data", tmp_path / "out"
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"row {i}"}) + "\n" for i in range(5))
    )
    (folder / "b.parquet").write_bytes(b"PAR1 not a parquet file at all PAR1")
    provider = {"provider": "hash", "config": {"dimension": 8}}
    spec = write_spec(tmp_path, folder, output, provider)

    assert main(["run", "--quiet", spec]) == EXIT_FAILED
    error = capsys.readouterr().err
    assert "1 shard of b.parquet failed: fix or remove the file, then re-run" in error
    assert "retry only the failed shards" not in error
    assert not (output / "_latest").exists()

    (folder / "b.parquet").unlink()  # what the advice said
    report = tmp_path / "report.json"
    assert main(["run", "--quiet", "--report", str(report), spec]) == EXIT_OK
    summary = json.loads(report.read_text())
    assert summary["complete"] and summary["resumed"] == 5 and summary["embedded"] == 0
