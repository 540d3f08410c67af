"""Job sources: listing, deterministic shard planning and streaming, on real files.

Local files live in tmp_path; memory:// tests use fsspec's real in-memory filesystem under
a unique root that is removed afterwards.
"""

from __future__ import annotations

import csv
import gzip
import json
import uuid

import fsspec
import fsspec.compression
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from embedfleet.errors import ConfigError, MissingDependencyError, SourceReadError
from embedfleet.job import formats
from embedfleet.job.sources import plan, read_shard, shard_id
from embedfleet.job.spec import SourceSpec

# -- helpers ---------------------------------------------------------------------------------


def write_jsonl(path, records, *, newline="\n", trailing=True):
    body = newline.join(json.dumps(record, ensure_ascii=False) for record in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((body + (newline if trailing else "")).encode())


def read_all(source, rows_per_shard=10_000, batch_rows=2048):
    """Every row of every shard, in plan order: (ids, texts, columns)."""
    ids, texts, columns = [], [], {name: [] for name in source.columns}
    for shard in plan(source, rows_per_shard):
        for rows in read_shard(shard, source, batch_rows):
            assert len(rows.ids) == len(rows.texts) <= batch_rows
            ids += rows.ids
            texts += rows.texts
            for name in source.columns:
                columns[name] += rows.columns[name]
    return ids, texts, columns


def varied_texts(count):
    """Texts of varied length with multi-byte UTF-8 (2, 3 and 4 bytes per character)."""
    pieces = ["a", "é", "漢", "🙂", "word ", "ß"]
    return [f"{i}:" + "".join(pieces[(i * j) % 6] for j in range(i % 97)) for i in range(count)]


@pytest.fixture
def memory_root():
    root = f"memory://embedfleet-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


# -- every format reads back -------------------------------------------------------------------


def test_jsonl_reads_every_row_in_order_with_byte_offset_ids_and_passthrough(tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [{"text": "alpha", "topic": 1}, {"text": "béta", "topic": 2}])
    ids, texts, columns = read_all(SourceSpec(uri=str(path), columns=["topic"]))
    assert texts == ["alpha", "béta"]
    first_line = len(json.dumps({"text": "alpha", "topic": 1}).encode()) + 1
    assert ids == ["docs.jsonl@0", f"docs.jsonl@{first_line}"]
    assert columns == {"topic": [1, 2]}


def test_id_column_values_become_string_ids(tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [{"id": 7, "text": "a"}, {"id": "x-8", "text": "b"}])
    ids, _, _ = read_all(SourceSpec(uri=str(path), id_column="id"))
    assert ids == ["7", "x-8"]


def test_parquet_reads_every_row_with_row_index_ids_and_passthrough(tmp_path):
    path = tmp_path / "docs.parquet"
    table = pa.table({"text": [f"t{i}" for i in range(25)], "n": list(range(25)), "big": [0] * 25})
    pq.write_table(table, path, row_group_size=10)
    ids, texts, columns = read_all(SourceSpec(uri=str(path), columns=["n"]), rows_per_shard=10)
    assert ids == [f"docs.parquet#{i}" for i in range(25)]
    assert texts == [f"t{i}" for i in range(25)]
    assert columns == {"n": list(range(25))}


def test_parquet_reads_only_the_needed_columns(tmp_path, monkeypatch):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a"], "n": [1], "unused": [2]}), path)
    asked = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs["columns"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    read_all(SourceSpec(uri=str(path), columns=["n"]))
    assert asked == [["text", "n"]]


def test_csv_reads_quoted_newlines_with_record_index_ids(tmp_path):
    path = tmp_path / "docs.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerows([["id", "text", "lang"], ["a", "two\nlines", "en"], ["b", "ça", "fr"]])
    source = SourceSpec(uri=str(path), columns=["lang"])
    (shard,) = plan(source, 1)
    assert (shard.unit, shard.start, shard.end) == ("file", 0, 1)
    ids, texts, columns = read_all(source)
    assert ids == ["docs.csv#0", "docs.csv#1"]
    assert texts == ["two\nlines", "ça"]
    assert columns == {"lang": ["en", "fr"]}


def test_tsv_is_read_tab_separated(tmp_path):
    path = tmp_path / "docs.tsv"
    path.write_text("key\ttext\nk1\thello, world\n", encoding="utf-8")
    ids, texts, _ = read_all(SourceSpec(uri=str(path), id_column="key"))
    assert (ids, texts) == (["k1"], ["hello, world"])


def test_text_reads_one_document_per_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first\nsecond line\n\nlast", encoding="utf-8")
    ids, texts, _ = read_all(SourceSpec(uri=str(path)))
    assert texts == ["first", "second line", "last"]  # the empty line is a reject
    assert ids == ["notes.txt@0", "notes.txt@6", "notes.txt@19"]


def test_text_file_reads_one_document_per_file(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nbody\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("other", encoding="utf-8")
    source = SourceSpec(uri=str(tmp_path), format="text_file")
    (shard,) = plan(source, 10)  # two small documents: one packed shard of two whole files
    assert [(piece.relative_path, piece.unit) for piece in shard.pieces] == [
        ("a.md", "file"),
        ("sub/b.txt", "file"),
    ]
    ids, texts, _ = read_all(source)
    assert ids == ["a.md", "sub/b.txt"]
    assert texts == ["# Title\n\nbody\n", "other"]


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".zstd"])
@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_compressed_line_files_read_whole_with_line_index_ids(tmp_path, suffix, fmt):
    texts = varied_texts(120)
    lines = (
        [json.dumps({"text": t}, ensure_ascii=False) for t in texts] if fmt == "jsonl" else texts
    )
    raw = ("\n".join(lines) + "\n").encode()
    data = gzip.compress(raw) if suffix == ".gz" else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / f"docs.{fmt}{suffix}"
    path.write_bytes(data)
    source = SourceSpec(uri=str(path))
    (shard,) = plan(source, 10)
    assert shard.unit == "file"
    assert shard.estimated_rows == 120  # the whole stream fits the head sample
    ids, got, _ = read_all(source, batch_rows=64)
    assert got == texts
    assert ids == [f"docs.{fmt}{suffix}#{i}" for i in range(120)]


def test_directory_reads_all_files_below_it_sorted_skipping_hidden_names(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b"}])
    write_jsonl(tmp_path / "a" / "z.jsonl", [{"text": "a/z"}])
    write_jsonl(tmp_path / "_tmp" / "x.jsonl", [{"text": "hidden dir"}])
    write_jsonl(tmp_path / ".part.jsonl", [{"text": "hidden file"}])
    (tmp_path / "_SUCCESS").write_text("")
    ids, texts, _ = read_all(SourceSpec(uri=str(tmp_path)))
    assert texts == ["a/z", "b"]
    assert ids == ["a/z.jsonl@0", "b.jsonl@0"]


def test_glob_matches_recursively_relative_to_its_fixed_part(tmp_path):
    write_jsonl(tmp_path / "data" / "p1" / "x.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "data" / "p2" / "deep" / "y.jsonl", [{"text": "y"}])
    (tmp_path / "data" / "p1" / "skip.csv").write_text("text\nno\n")
    source = SourceSpec(uri=str(tmp_path / "data" / "**" / "*.jsonl"))
    files = [piece.relative_path for shard in plan(source, 10) for piece in shard.pieces]
    assert files == ["p1/x.jsonl", "p2/deep/y.jsonl"]
    assert read_all(source)[1] == ["x", "y"]


def test_glob_that_names_underscore_files_matches_them(tmp_path):
    write_jsonl(tmp_path / "_part-0.jsonl", [{"text": "p0"}])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "no"}])
    assert read_all(SourceSpec(uri=str(tmp_path / "_part-*.jsonl")))[1] == ["p0"]


def test_memory_urls_are_planned_and_read(memory_root):
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_root}/in/a.txt", b"one\ntwo\n")
    fs.pipe(f"{memory_root}/in/b.jsonl", b'{"text": "three"}\n')
    source = SourceSpec(uri=f"{memory_root}/in")
    shards = plan(source, 10)
    assert all(shard.uri.startswith("memory://") for shard in shards)
    ids, texts, _ = read_all(source)
    assert texts == ["one", "two", "three"]
    assert ids == ["a.txt@0", "a.txt@4", "b.jsonl@0"]


# -- byte ranges -------------------------------------------------------------------------------


def test_byte_range_shards_cover_every_line_exactly_once(tmp_path):
    texts = varied_texts(3000)
    path = tmp_path / "many.jsonl"
    write_jsonl(path, [{"text": t} for t in texts])
    source = SourceSpec(uri=str(path))
    shards = plan(source, 37)
    assert len(shards) > 50
    assert [s.start for s in shards[1:]] == [s.end for s in shards[:-1]]
    ids, got, _ = read_all(source, rows_per_shard=37, batch_rows=16)
    assert got == texts
    assert len(set(ids)) == len(ids)
    data = path.read_bytes()
    assert all(data[int(i.split("@")[1]) - 1 : int(i.split("@")[1])] in (b"", b"\n") for i in ids)


def test_byte_ranges_keep_the_last_line_without_a_trailing_newline(tmp_path):
    texts = varied_texts(500)
    path = tmp_path / "open.jsonl"
    write_jsonl(path, [{"text": t} for t in texts], trailing=False)
    _, got, _ = read_all(SourceSpec(uri=str(path)), rows_per_shard=7)
    assert got == texts


@pytest.mark.parametrize("name", ["crlf.jsonl", "crlf.txt"])
def test_crlf_lines_are_read_without_the_carriage_return(tmp_path, name):
    texts = varied_texts(400)
    path = tmp_path / name
    if name.endswith(".jsonl"):
        write_jsonl(path, [{"text": t} for t in texts], newline="\r\n")
    else:
        path.write_bytes(("\r\n".join(texts) + "\r\n").encode())
    _, got, _ = read_all(SourceSpec(uri=str(path)), rows_per_shard=9)
    assert got == texts


def test_reading_one_byte_range_reads_about_that_range_not_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_bytes(b"".join(b"line %07d of some text\n" % i for i in range(200_000)))
    source = SourceSpec(uri=str(path))
    middle = plan(source, 1000)[100]
    read = []
    original = formats.read_block

    def counting(handle, size, uri):
        block = original(handle, size, uri)
        read.append(len(block))
        return block

    monkeypatch.setattr(formats, "read_block", counting)
    rows = sum(len(batch.ids) for batch in read_shard(middle, source))
    assert rows == 1000
    assert sum(read) <= 2 * formats.READ_BLOCK < path.stat().st_size


# -- stable shard ids --------------------------------------------------------------------------


def test_shard_ids_are_stable_across_plans(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in varied_texts(300)])
    pq.write_table(pa.table({"text": ["x"] * 300}), tmp_path / "b.parquet", row_group_size=50)
    source = SourceSpec(uri=str(tmp_path))
    assert plan(source, 40) == plan(source, 40)
    shard = plan(source, 40)[0]
    assert shard.shard_id == shard_id("a.jsonl", "bytes", shard.start, shard.end)


@pytest.mark.parametrize("new_name", ["0-first.jsonl", "z-last.jsonl"])
def test_adding_a_file_keeps_the_other_files_shards(tmp_path, new_name):
    write_jsonl(tmp_path / "m.jsonl", [{"text": t} for t in varied_texts(300)])
    pq.write_table(pa.table({"text": ["x"] * 300}), tmp_path / "n.parquet", row_group_size=50)
    source = SourceSpec(uri=str(tmp_path))
    before = plan(source, 40)
    write_jsonl(tmp_path / new_name, [{"text": t * 3} for t in varied_texts(200)])
    after = plan(source, 40)
    assert [s for s in after if s.relative_path != new_name] == before
    assert any(s.relative_path == new_name for s in after)


# -- Parquet planning --------------------------------------------------------------------------


def test_parquet_shards_are_runs_of_whole_row_groups(tmp_path):
    path = tmp_path / "rg.parquet"
    pq.write_table(pa.table({"text": [str(i) for i in range(1000)]}), path, row_group_size=100)
    shards = plan(SourceSpec(uri=str(path)), 250)
    assert [(s.unit, s.start, s.end) for s in shards] == [
        ("rowgroups", 0, 2),
        ("rowgroups", 2, 4),
        ("rowgroups", 4, 6),
        ("rowgroups", 6, 8),
        ("rowgroups", 8, 10),
    ]
    assert [s.first_row for s in shards] == [0, 200, 400, 600, 800]
    assert [s.estimated_rows for s in shards] == [200] * 5


def _forbid_parquet_data_reads(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a data page was read while planning")

    for name in ("iter_batches", "read", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, name, forbidden)
    monkeypatch.setattr(pq, "read_table", forbidden)


def test_parquet_planning_reads_only_the_footer(tmp_path, monkeypatch):
    path = tmp_path / "rg.parquet"
    pq.write_table(pa.table({"text": [str(i) for i in range(1000)]}), path, row_group_size=100)
    _forbid_parquet_data_reads(monkeypatch)
    assert len(plan(SourceSpec(uri=str(path)), 250)) == 5


# -- failures ----------------------------------------------------------------------------------


def test_missing_parquet_text_column_fails_plan_listing_the_columns_found(tmp_path, monkeypatch):
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), tmp_path / "d.parquet")
    _forbid_parquet_data_reads(monkeypatch)
    with pytest.raises(ConfigError, match=r"'text' not found; columns found: 'body', 'n'"):
        plan(SourceSpec(uri=str(tmp_path / "d.parquet")), 10)


@pytest.mark.parametrize(
    ("name", "content"),
    [("d.jsonl", '{"body": "a", "n": 1}\n'), ("d.csv", "body,n\na,1\n")],
)
def test_missing_column_in_first_record_fails_plan_listing_the_columns_found(
    tmp_path, name, content
):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=r"'lang' not found; columns found: 'body', 'n'"):
        plan(SourceSpec(uri=str(tmp_path / name), text_column="body", columns=["lang"]), 10)


def test_text_format_refuses_id_and_passthrough_columns(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ConfigError, match="have no columns"):
        plan(SourceSpec(uri=str(tmp_path / "a.txt"), id_column="id"), 10)


def test_later_jsonl_record_without_the_text_key_is_rejected_not_read_as_none(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"text": "a", "k": 1}, {"other": "b"}])
    source = SourceSpec(uri=str(path), columns=["k"])
    _, texts, columns = read_all(source)
    assert texts == ["a"] and columns == {"k": [1]}
    (shard,) = plan(source, 100)
    (rejected,) = [record for rows in read_shard(shard, source) for record in rows.rejects]
    assert (rejected.kind, rejected.where.line) == ("missing_text", 2)


def test_duplicate_ids_in_a_shard_are_named_with_the_file(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"id": i % 3, "text": "t"} for i in range(6)])
    source = SourceSpec(uri=str(path), id_column="id")
    (shard,) = plan(source, 100)
    with pytest.raises(ConfigError, match=r"duplicate ids in .*d\.jsonl.*: '0', '1', '2'$"):
        list(read_shard(shard, source))


def test_duplicate_ids_in_different_batches_of_a_shard_are_caught(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"id": name, "text": "t"} for name in ["a", "b", "c", "a"]])
    source = SourceSpec(uri=str(path), id_column="id")
    (shard,) = plan(source, 100)
    with pytest.raises(ConfigError, match=r"duplicate ids .*: 'a'$"):
        list(read_shard(shard, source, batch_rows=2))


def test_corrupt_parquet_is_planned_and_fails_only_when_read(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    pq.write_table(pa.table({"text": ["ok"]}), tmp_path / "good.parquet")
    source = SourceSpec(uri=str(tmp_path))
    bad, good = plan(source, 10)
    assert (bad.unit, bad.start, bad.end, bad.estimated_rows) == ("file", 0, 1, 0)
    assert [rows.texts for rows in read_shard(good, source)] == [["ok"]]
    with pytest.raises(SourceReadError, match=r"cannot open Parquet file .*bad\.parquet"):
        list(read_shard(bad, source))


def test_corrupt_gzip_fails_when_read_naming_the_file(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-40])
    source = SourceSpec(uri=str(path))
    (shard,) = plan(source, 100)
    with pytest.raises(SourceReadError, match=r"cannot read .*d\.jsonl\.gz"):
        list(read_shard(shard, source))


def test_corrupt_gzip_csv_fails_when_read_naming_the_file(tmp_path):
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(b"text\n" + b"some row\n" * 1000)[:-40])
    source = SourceSpec(uri=str(path))
    (shard,) = plan(source, 100)
    with pytest.raises(SourceReadError, match=r"cannot read .*d\.csv\.gz"):
        list(read_shard(shard, source))


def test_unknown_extension_asks_for_source_format(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"data\.bin.*set source\.format"):
        plan(SourceSpec(uri=str(tmp_path)), 10)


def test_no_matching_files_names_the_uri(tmp_path):
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(ConfigError, match="no files matched"):
        plan(SourceSpec(uri=pattern), 10)
    with pytest.raises(ConfigError, match="no files matched"):
        plan(SourceSpec(uri=str(tmp_path / "missing.jsonl")), 10)


def test_zstd_without_a_codec_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"{}\n"))
    monkeypatch.delitem(fsspec.compression.compr, "zstd")
    with pytest.raises(MissingDependencyError, match="pip install zstandard"):
        plan(SourceSpec(uri=str(tmp_path)), 10)


def test_empty_files_give_no_shards(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    write_jsonl(tmp_path / "full.jsonl", [{"text": "a"}])
    assert [s.relative_path for s in plan(SourceSpec(uri=str(tmp_path)), 10)] == ["full.jsonl"]
