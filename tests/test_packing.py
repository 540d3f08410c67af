"""Packed shards: small files packed into shards of about ``rows_per_shard`` rows, with
boundaries that move only where files change, planned from the listing and a bounded
sample. Real files in tmp_path, and the synthetic filesystem for scale; no Ray."""

from __future__ import annotations

import itertools
import json
import math
import random
import tracemalloc

import fsspec
import pytest

from embedfleet.job import packing, sampling
from embedfleet.job.listing import list_source
from embedfleet.job.records import rejects_table
from embedfleet.job.shard_planner import plan_listing
from embedfleet.job.sources import plan, read_shard, shard_id
from embedfleet.job.spec import SourceSpec
from embedfleet.testing import SyntheticFileSystem


def write_small_files(folder, count, rows, start=0, width=3):
    """``count`` JSON Lines files of ``rows`` rows named f00000.jsonl ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(start, start + count):
        lines = [
            json.dumps({"id": f"{index}-{row}", "text": f"row {row} of file {index} " * width})
            for row in range(rows)
        ]
        (folder / f"f{index:05d}.jsonl").write_text("\n".join(lines) + "\n")


def files_of(shards):
    return [[piece.relative_path for piece in shard.pieces] for shard in shards]


# -- the packing rule ---------------------------------------------------------------------------


def random_files(seed, count, weights=(1, 2, 5, 20, 50)):
    rng = random.Random(seed)
    names = sorted(f"p{rng.random():.12f}" for _ in range(count))
    return names, [float(rng.choice(weights)) for _ in names]


def packs_of(names, weights, target):
    ranges = packing.pack(weights, [packing.path_key(name) for name in names], target)
    return {tuple(names[start:end]) for start, end in ranges}, ranges


def test_packs_cover_every_file_once_in_order():
    names, weights = random_files(0, 3000)
    _, ranges = packs_of(names, weights, 500)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(names)
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(ranges))
    assert all(start < end for start, end in ranges)


@pytest.mark.parametrize("seed", range(5))
def test_packs_hold_about_the_target_and_their_number_is_about_total_over_target(seed):
    names, weights = random_files(seed, 20_000)
    _, ranges = packs_of(names, weights, 500)
    sizes = [sum(weights[start:end]) for start, end in ranges]
    assert len(ranges) <= math.ceil(sum(weights) / 500) + 2
    assert max(sizes) <= packing.CAP * 500 + max(weights)
    assert min(sizes[1:-1]) > packing.RADIUS * 500 * 0.9


@pytest.mark.parametrize("edit", ["insert", "remove", "resize"])
def test_one_changed_file_changes_only_the_packs_around_it(edit):
    names, weights = random_files(7, 4000)
    before, _ = packs_of(names, weights, 300)
    rng = random.Random(edit)
    changed = []
    for _ in range(40):
        at = rng.randrange(len(names))
        new_names, new_weights = list(names), list(weights)
        if edit == "insert":
            new_names.insert(at, names[at] + "-new")
            new_weights.insert(at, 20.0)
        elif edit == "remove":
            del new_names[at], new_weights[at]
        else:
            new_weights[at] += 30.0
        after, _ = packs_of(new_names, new_weights, 300)
        changed.append(len(after - before))
    # an edit touches its own pack and sometimes its neighbours, never the packs after it
    # (over 300 edits: one pack changed in 80%, two in 15%, three or four in the rest)
    assert max(changed) <= 4 and sum(changed) / len(changed) <= 2
    assert len(before) > 40


# -- planning real folders ---------------------------------------------------------------------


def test_5000_small_files_plan_into_about_total_rows_over_rows_per_shard_shards(tmp_path):
    write_small_files(tmp_path / "docs", 5000, 20)
    source = SourceSpec(uri=str(tmp_path / "docs"), id_column="id")
    shards = plan(source, 10_000)
    assert len(shards) <= math.ceil(100_000 / 10_000) + 2
    flat = [name for names in files_of(shards) for name in names]
    assert flat == sorted(path.name for path in (tmp_path / "docs").iterdir())
    assert all(shard.unit == "files" for shard in shards)
    assert sum(shard.estimated_rows for shard in shards) == pytest.approx(100_000, rel=0.15)


@pytest.mark.parametrize("edit", ["add", "remove", "change"])
def test_adding_removing_or_changing_one_file_changes_only_its_neighbouring_shards(tmp_path, edit):
    folder = tmp_path / "docs"
    write_small_files(folder, 1500, 5)
    source = SourceSpec(uri=str(folder), id_column="id")
    before = {shard.shard_id: shard for shard in plan(source, 300)}
    if edit == "add":
        write_small_files(folder, 1, 5, start=70_000)
        (folder / "f70000.jsonl").rename(folder / "f00750b.jsonl")
    elif edit == "remove":
        (folder / "f00750.jsonl").unlink()
    else:
        with (folder / "f00750.jsonl").open("a") as handle:
            handle.write(json.dumps({"id": "750-extra", "text": "one more row"}) + "\n")
    after = {shard.shard_id: shard for shard in plan(source, 300)}
    assert len(before) >= 20
    assert len(set(after) - set(before)) <= 2  # its own shard, perhaps a neighbour
    assert len(set(before) - set(after)) <= 2
    for kept in set(after) & set(before):  # every other shard is the same, to the file
        assert after[kept] == before[kept]


@pytest.mark.usefixtures("synthetic")
def test_20000_text_file_documents_plan_to_a_handful_of_shards_reading_none():
    options = {"files": 20_000, "rows_per_file": 3}
    source = SourceSpec(uri="synthetic:///corpus", format="text_file", storage_options=options)
    shards = plan(source, 10_000)  # (a real run over 3,000 pages: test_job_packed.py)
    assert 2 <= len(shards) <= 4
    assert sum(len(shard.pieces) for shard in shards) == 20_000
    assert {piece.unit for shard in shards for piece in shard.pieces} == {"file"}
    assert SyntheticFileSystem.opened == 0  # a text_file document is one row: nothing to sample


def test_large_files_are_split_as_before_and_keep_their_shard_ids(tmp_path):
    write_small_files(tmp_path, 30, 4)
    big = [json.dumps({"id": f"big-{row}", "text": f"big file row {row}"}) for row in range(900)]
    (tmp_path / "f00015a.jsonl").write_text("\n".join(big) + "\n")
    shards = plan(SourceSpec(uri=str(tmp_path), id_column="id"), 100)
    ranges = [shard for shard in shards if shard.relative_path == "f00015a.jsonl"]
    assert len(ranges) >= 8 and all(shard.unit == "bytes" for shard in ranges)
    for shard in ranges:
        assert shard.shard_id == shard_id("f00015a.jsonl", "bytes", shard.start, shard.end)
    packed = [shard for shard in shards if shard.packed]
    assert packed and "f00015a.jsonl" not in {p.relative_path for s in packed for p in s.pieces}


def test_before_packing_plans_one_file_per_shard_with_the_ids_it_always_had(tmp_path):
    write_small_files(tmp_path, 12, 3)
    shards = plan(SourceSpec(uri=str(tmp_path), id_column="id"), 1000, packed=False)
    assert len(shards) == 12
    for shard in shards:
        size = (tmp_path / shard.relative_path).stat().st_size
        assert shard.shard_id == shard_id(shard.relative_path, "bytes", 0, size)


def test_recorded_bytes_per_row_plan_the_same_shards_whatever_the_sample_says(tmp_path):
    write_small_files(tmp_path, 400, 5)
    source = SourceSpec(uri=str(tmp_path), id_column="id")
    listing = list_source(source)
    first = plan_listing(listing, source, 200)
    recorded = first.packing["bytes_per_row"]
    doubled = {kind: value * 2 for kind, value in recorded.items()}
    again = plan_listing(listing, source, 200, recorded=doubled, exactly=True)
    assert again.packing["bytes_per_row"] == doubled  # a resume plans as its snapshot did
    assert len(again.shards) < len(first.shards)
    near = {kind: value * 1.2 for kind, value in recorded.items()}  # a base within sqrt(2)
    assert plan_listing(listing, source, 200, recorded=near).packing["bytes_per_row"] == near
    far = {kind: value * 3 for kind, value in recorded.items()}  # the corpus changed: re-tuned
    assert plan_listing(listing, source, 200, recorded=far).packing["bytes_per_row"] == recorded


# -- reading packed shards --------------------------------------------------------------------


def test_a_packed_shard_reads_its_files_in_order_and_names_each_reject_s_file(tmp_path):
    write_small_files(tmp_path, 6, 3)
    with (tmp_path / "f00003.jsonl").open("a") as handle:
        handle.write('{"id": "bad", "text": \n')
    source = SourceSpec(uri=str(tmp_path), id_column="id")
    (shard,) = plan(source, 1000)
    assert shard.packed and len(shard.pieces) == 6
    batches = list(read_shard(shard, source))
    ids = [id_ for rows in batches for id_ in rows.ids]
    assert ids == [f"{index}-{row}" for index in range(6) for row in range(3)]
    (reject,) = [record for rows in batches for record in rows.rejects]
    assert (reject.file, reject.where.line, reject.kind) == ("f00003.jsonl", 4, "invalid_json")
    table = rejects_table(shard.relative_path, [reject], [p.relative_path for p in shard.pieces])
    assert table.to_pylist()[0]["file"] == "f00003.jsonl"


def test_rejects_of_a_packed_shard_are_in_file_order():
    from embedfleet.job.records import BadRecord, Where

    late = BadRecord("b@0", "empty_text", "empty", Where(line=1, byte_offset=0), "b.jsonl")
    early = BadRecord("a@90", "empty_text", "empty", Where(line=9, byte_offset=90), "a.jsonl")
    table = rejects_table("a.jsonl", [late, early], ["a.jsonl", "b.jsonl"])
    assert table["file"].to_pylist() == ["a.jsonl", "b.jsonl"]


# -- planning at scale: a synthetic listing -----------------------------------------------------


@pytest.fixture
def synthetic():
    fsspec.register_implementation("synthetic", SyntheticFileSystem, clobber=True)
    SyntheticFileSystem.opened = 0
    yield
    SyntheticFileSystem.opened = 0


@pytest.mark.usefixtures("synthetic")
def test_planning_reads_a_bounded_sample_and_holds_under_1_kb_per_file():
    files = 20_000
    source = SourceSpec(uri="synthetic:///corpus", storage_options={"files": files})
    tracemalloc.start()
    try:
        planned = plan_listing(list_source(source), source, 10_000)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert SyntheticFileSystem.opened == sampling.SAMPLE_FILES  # the sample, nothing else
    assert sum(len(shard.pieces) for shard in planned.shards) == files
    assert len(planned.shards) <= math.ceil(files * 20 / 10_000) + 2
    assert peak / files < 1024, f"{peak / files:.0f} bytes per file at the peak"
    assert held / files < 1024
