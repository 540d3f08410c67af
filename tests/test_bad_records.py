"""One bad record is one reject: readers on real files, no Ray.

Each kind of record-level problem lands in the shard's rejects with a kind that tells it
apart and where it is in its file; its neighbours are read. ``on_bad_record = "error"``
fails the shard naming the file and the line instead.
"""

from __future__ import annotations

import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedfleet.errors import BadRecordError, ConfigError, SourceReadError
from embedfleet.job import JobSpec
from embedfleet.job.records import REJECT_KINDS, REJECTS_SCHEMA, BadRecord, Where, rejects_table
from embedfleet.job.result import JobResult, failure_kind
from embedfleet.job.sources import plan, read_shard
from embedfleet.job.spec import SourceSpec


def read(source: SourceSpec, rows_per_shard: int = 10_000) -> tuple[list[str], list[BadRecord]]:
    """Every row id and every reject of every shard, in plan order."""
    ids, rejects = [], []
    for shard in plan(source, rows_per_shard):
        for rows in read_shard(shard, source):
            ids += rows.ids
            rejects += rows.rejects
    return ids, rejects


def jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


GOOD = b'{"id": "a", "text": "first"}'
LAST = b'{"id": "z", "text": "last"}'


@pytest.mark.parametrize(
    ("line", "kind", "reason"),
    [
        (b'{"id": "b", "text": "unterminated}', "invalid_json", "invalid JSON at column 21"),
        (b"[1, 2]", "not_an_object", "an array, not a JSON object"),
        (b'{"id": "b", "text": "caf\xe9"}', "invalid_utf8", "not valid UTF-8: byte 25"),
        (b'{"id": "b"}', "missing_text", "text field 'text' is missing"),
        (b'{"id": "b", "text": null}', "null_text", "text field 'text' is null"),
        (b'{"id": "b", "text": ""}', "empty_text", "text field 'text' is empty"),
        (b'{"id": "b", "text": " \\t "}', "blank_text", "text field 'text' is whitespace only"),
        (b'{"id": "b", "text": 42}', "not_a_string", "text field 'text' is a number"),
        (b'{"id": "b", "text": ["x"]}', "not_a_string", "text field 'text' is a list"),
        (b'{"text": "no id"}', "missing_id", "id field 'id' is missing"),
        (b'{"id": 1.5, "text": "x"}', "invalid_id", "id field 'id' is a number (1.5)"),
    ],
)
def test_a_bad_jsonl_line_is_rejected_with_its_kind_and_line_and_its_neighbours_are_read(
    tmp_path, line, kind, reason
):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(GOOD, line, LAST))
    ids, (rejected,) = read(SourceSpec(uri=str(path), id_column="id"))
    assert ids == ["a", "z"]
    assert (rejected.kind, rejected.where.line, rejected.where.byte_offset) == (kind, 2, 29)
    assert reason in rejected.reason


def test_a_rejected_records_id_is_its_own_when_readable_else_derived_from_its_place(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(GOOD, b'{"id": "b", "text": null}', b"not json", LAST))
    ids, rejects = read(SourceSpec(uri=str(path), id_column="id"))
    assert ids == ["a", "z"]  # nothing else in the rows: a bad record never takes a row's place
    assert [record.id for record in rejects] == ["b", "d.jsonl@55"]


def test_csv_rows_with_the_wrong_field_count_or_invalid_utf8_are_rejected_alone(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'id,text\na,"two\nlines"\nb,x,extra\nc\nd,caf\xe9\ne,fine\n')
    ids, rejects = read(SourceSpec(uri=str(path), id_column="id"))
    assert ids == ["a", "e"]
    assert [(r.kind, r.where.line, r.where.row) for r in rejects] == [
        ("wrong_field_count", 4, 1),
        ("wrong_field_count", 5, 2),
        ("invalid_utf8", 6, 3),
    ]
    assert [r.id for r in rejects] == ["d.csv#1", "d.csv#2", "d.csv#3"]
    assert rejects[0].reason == "the row has 3 fields, the header has 2"


def test_text_lines_and_text_files_that_are_not_utf8_are_rejected(tmp_path):
    (tmp_path / "lines.txt").write_bytes(b"fine\n\xff\xfe bad\n\nlast\n")
    ids, rejects = read(SourceSpec(uri=str(tmp_path / "lines.txt")))
    assert ids == ["lines.txt@0", "lines.txt@13"]
    assert [(r.kind, r.where.line) for r in rejects] == [("invalid_utf8", 2), ("empty_text", 3)]
    (tmp_path / "doc.md").write_bytes(b"caf\xe9")
    ids, (rejected,) = read(SourceSpec(uri=str(tmp_path / "doc.md"), format="text_file"))
    assert ids == [] and (rejected.id, rejected.kind) == ("doc.md", "invalid_utf8")


def test_parquet_rows_with_null_or_blank_text_are_rejected_with_their_row(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["ok", None, "  ", "fine"]}), path, row_group_size=2)
    ids, rejects = read(SourceSpec(uri=str(path)), rows_per_shard=2)
    assert ids == ["d.parquet#0", "d.parquet#3"]
    assert [(r.id, r.kind, r.where.row) for r in rejects] == [
        ("d.parquet#1", "null_text", 1),
        ("d.parquet#2", "blank_text", 2),
    ]


def test_a_shard_starting_mid_file_locates_a_bad_line_by_byte_offset_and_line_in_shard(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"document {i}"}).encode() for i in range(40)]
    lines[27] = b'{"text": broken'
    path.write_bytes(jsonl(*lines))
    source = SourceSpec(uri=str(path))
    shards = plan(source, 10)
    assert len(shards) > 1
    _, (rejected,) = read(source, rows_per_shard=10)
    where = rejected.where
    assert where.line is None and where.byte_offset and where.line_in_shard
    assert path.read_bytes()[where.byte_offset :].split(b"\n")[0] == b'{"text": broken'
    (shard,) = [s for s in shards if s.start <= where.byte_offset < s.end]
    starts = [sum(len(line) + 1 for line in lines[:index]) for index in range(len(lines))]
    owned = [offset for offset in starts if shard.start <= offset < shard.end]  # its lines
    assert owned[where.line_in_shard - 1] == where.byte_offset
    assert rejected.id == f"d.jsonl@{where.byte_offset}"


def test_a_compressed_file_locates_a_bad_line_by_its_line_number(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(GOOD, b"{broken", LAST)))
    ids, (rejected,) = read(SourceSpec(uri=str(path), id_column="id"))
    assert ids == ["a", "z"]
    assert (rejected.id, rejected.where) == ("d.jsonl.gz#1", Where(line=2))


def test_on_bad_record_error_fails_naming_the_file_and_its_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(GOOD, GOOD.replace(b'"a"', b'"b"'), b'{"text": "x", broken}', LAST))
    source = SourceSpec(uri=str(path), on_bad_record="error")
    (shard,) = plan(source, 100)
    with pytest.raises(BadRecordError, match=r"d\.jsonl line 3: invalid JSON at column 15") as info:
        list(read_shard(shard, source))
    assert "line 1 column" not in str(info.value)
    assert isinstance(info.value, SourceReadError)


def test_a_first_record_without_the_text_field_is_a_reject_not_a_failed_plan(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(b'{"id": "a", "body": "misplaced"}', LAST))
    ids, (rejected,) = read(SourceSpec(uri=str(path), id_column="id"))
    assert ids == ["z"] and rejected.kind == "missing_text"


def test_on_empty_is_read_as_the_old_name_of_on_bad_record(tmp_path, caplog):
    spec = {"source": {"uri": "d.jsonl", "on_empty": "error"}, "output": {"uri": "out"}}
    with caplog.at_level(logging.WARNING):
        loaded = JobSpec.from_dict(spec)
    assert loaded.source.bad_record_policy == "error"
    assert "write source.on_bad_record = 'error' instead" in caplog.text
    spec["source"]["on_bad_record"] = "reject"
    with pytest.raises(ConfigError, match="on_empty is the old name of on_bad_record"):
        JobSpec.from_dict(spec)


def test_the_rejects_file_has_one_column_per_documented_field():
    record = BadRecord("d.jsonl@7", "invalid_json", "invalid JSON", Where(line=2, byte_offset=7))
    table = rejects_table("sub/d.jsonl", [record])
    assert table.schema == REJECTS_SCHEMA
    assert table.to_pylist() == [
        {
            "id": "d.jsonl@7",
            "doc_id": "d.jsonl@7",
            "kind": "invalid_json",
            "reason": "invalid JSON",
            "file": "sub/d.jsonl",
            "line": 2,
            "byte_offset": 7,
            "line_in_shard": None,
            "row": None,
        }
    ]
    assert len(set(REJECT_KINDS)) == len(REJECT_KINDS) == 13


@pytest.mark.parametrize(
    ("error", "kind", "advice"),
    [
        (SourceReadError("cannot open Parquet file d.parquet"), "file", "fix or remove the file"),
        (BadRecordError("d.jsonl line 3: invalid JSON"), "record", "on_bad_record"),
        (RuntimeError("replica lost"), "retry", "retry only the failed shards"),
    ],
)
def test_the_advice_for_a_failed_shard_says_what_is_true_for_its_kind(error, kind, advice):
    assert failure_kind(error) == kind
    result = JobResult("r", "snapshots/r", complete=False)
    result.count_failed("s1", "data/d.parquet", str(error), failure_kind(error))
    (line,) = result.advice()
    assert line.startswith("1 shard of data/d.parquet failed: ") and advice in line
    if kind != "retry":
        assert "retry" not in line
